"""Training throughput of each task's model through visionpipe's loop (synthetic tensors, so the
figure is the model + loop, not decoding). Prints one JSON line per task.

    python benchmarks/task_throughput.py --device cuda --tasks classification detection segmentation
"""

from __future__ import annotations

import argparse

import torch

from _common import GpuSampler, SyntheticSamples, emit
from visionpipe.config import TrainConfig
from visionpipe.engine.runtime import Runtime
from visionpipe.engine.trainer import Trainer, build_optimizer
from visionpipe.tasks import get_task

DEFAULTS = {
    "classification": ({"name": "resnet50"}, 224, 128),
    "detection": ({"name": "fcos", "backbone": "resnet50", "kwargs": {"fpn_channels": 256}}, 512, 16),
    "segmentation": ({"name": "Unet", "backbone": "resnet34"}, 512, 16),
}


def run(task_name: str, device: torch.device, steps: int, amp: str, channels_last: bool, scale: float) -> None:
    model_cfg, size, batch = DEFAULTS[task_name]
    size = int(size * scale) // 32 * 32
    classes = [str(i) for i in range(10)]
    spec = {"task": task_name, "classes": classes if task_name != "segmentation" else ["bg", *classes], "model": model_cfg,
            "image_size": size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "ignore_index": 255,
            "losses": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}],
            "evaluation": {"score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 100}}
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp) if device.type == "cuda" else None
    runtime = Runtime(device, dtype, channels_last, 4 if device.type == "cuda" else 0, device.type == "cuda")
    cfg = TrainConfig(epochs=1, batch_size=batch, image_size=size, progress_bar=False, scheduler="none", log_every_n_steps=10**9,
                      deterministic=False, device=str(device.type))
    task = get_task(spec)
    torch.manual_seed(0)
    trainer = Trainer(task, task.build_model(), cfg, runtime)
    opt = build_optimizer(trainer.model, cfg)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, 1.0, 0)
    n_classes = len(spec["classes"])
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    data = SyntheticSamples(task_name, batch * steps, size, n_classes)
    loader, _, sampler = trainer.loaders(data, data)
    trainer._train_epoch(trainer.model, loader, opt, sched, scaler, 0)  # warm-up: workers, cuDNN autotuning
    sampler.set_epoch(1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with GpuSampler() as gpu:
        figures = trainer._train_epoch(trainer.model, loader, opt, sched, scaler, 1)
    emit({"benchmark": "task_throughput", "task": task_name, "model": model_cfg, "image_size": size, "batch_size": batch,
          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "amp": runtime.amp_name,
          "channels_last": channels_last, "images_per_s": round(figures["images_per_s"], 1),
          "gpu_util_pct": gpu.mean,
          "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"])
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--scale", type=float, default=1.0, help="image size multiplier (e.g. 0.25 for a quick CPU run)")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    for task in args.tasks:
        run(task, torch.device(args.device), args.steps, args.amp, not args.no_channels_last and args.device != "cpu", args.scale)


if __name__ == "__main__":
    main()
