"""Pipeline overhead: images/s of visionpipe's training loop vs a bare PyTorch loop, same model,
batch, data and precision, in one process. Goal: ratio >= 0.95.

    python benchmarks/train_overhead.py --model resnet50 --image-size 224 --batch-size 128 --device cuda
    python benchmarks/train_overhead.py --model resnet10t --image-size 64 --batch-size 32 --steps 20   # CPU
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from _common import GpuSampler, SyntheticSamples, emit
from visionpipe.config import TrainConfig
from visionpipe.data.datasets import EpochSampler
from visionpipe.engine.runtime import Runtime
from visionpipe.engine.trainer import Trainer, build_optimizer
from visionpipe.tasks.classification import ClassificationTask, build_classifier


def bare_loop(model, loader, runtime: Runtime, steps: int, lr: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    done, start = 0, None
    for step, (x, y, _) in enumerate(loader):
        if step == 3:  # warm-up excluded
            if runtime.device.type == "cuda":
                torch.cuda.synchronize()
            start, done = time.perf_counter(), 0
        x = x.to(runtime.device, non_blocking=True).contiguous(memory_format=torch.channels_last if runtime.channels_last else torch.contiguous_format)
        y = y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += x.shape[0]
        if step + 1 >= steps + 3:
            break
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="auto")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, image_size=args.image_size, device=args.device, amp=args.amp,
                      progress_bar=False, scheduler="none", compile=args.compile, log_every_n_steps=10**9, deterministic=False)
    device = torch.device(args.device)
    dtype = None if device.type == "cpu" and args.amp == "auto" else (torch.bfloat16 if args.amp in ("auto", "bf16") else None)
    runtime = Runtime(device, dtype, device.type == "cuda", args.workers, device.type == "cuda")
    n = args.batch_size * (args.steps + 3)
    data = SyntheticSamples("classification", n, args.image_size, 10)
    task = ClassificationTask({"classes": [str(i) for i in range(10)], "model": {"name": args.model}})
    torch.backends.cudnn.benchmark = True

    # visionpipe's loop: Trainer._train_epoch, the code `kedro run` trains with
    torch.manual_seed(0)
    trainer = Trainer(task, build_classifier({"name": args.model}, 10), cfg, runtime)
    loader, _, sampler = trainer.loaders(data, data)
    model = torch.compile(trainer.model) if args.compile else trainer.model
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, 1.0, 0)
    warm = SyntheticSamples("classification", args.batch_size * 3, args.image_size, 10)
    trainer._train_epoch(model, trainer.loaders(warm, warm)[0], opt, sched, None, 0)
    with GpuSampler() as gpu:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        project = trainer._train_epoch(model, loader, opt, sched, None, 0)["images_per_s"]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    torch.manual_seed(0)
    bare_model = build_classifier({"name": args.model}, 10).to(device)
    if runtime.channels_last:
        bare_model = bare_model.to(memory_format=torch.channels_last)
    bare_model = torch.compile(bare_model) if args.compile else bare_model
    bare_loader = DataLoader(data, batch_size=args.batch_size, sampler=EpochSampler(len(data), True, 0), collate_fn=task.collate,
                             num_workers=args.workers, pin_memory=runtime.pin_memory, drop_last=True)
    bare = bare_loop(bare_model, bare_loader, runtime, args.steps, cfg.lr)
    emit({"benchmark": "train_overhead", "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "amp": runtime.amp_name,
          "channels_last": runtime.channels_last, "compile": args.compile,
          "visionpipe_images_per_s": round(project, 1), "bare_images_per_s": round(bare, 1), "ratio": round(project / bare, 3),
          "gpu_util_pct": gpu.mean, "peak_mem_gib": round(peak, 2) if peak else None})


if __name__ == "__main__":
    main()
