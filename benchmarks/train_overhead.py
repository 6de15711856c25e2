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


def bare_epoch(model, opt, loader, runtime: Runtime, extras: tuple[str, ...] = ()) -> float:
    """The loop a hand-written script would have; returns images/s over one epoch.

    ``extras`` adds one of visionpipe's per-step additions at a time (diagnostics): ``accumulate``
    (running loss kept on the device), ``scheduler`` (a per-step LR scheduler), ``tqdm`` (a disabled bar).
    """
    model.train()
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    done = 0
    loss_sum = torch.zeros((), device=runtime.device)
    seen = torch.zeros((), device=runtime.device)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, 1.0, 0) if "scheduler" in extras else None
    if "tqdm" in extras:
        from tqdm.auto import tqdm

        loader = tqdm(loader, disable=True)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for x, y, _ in loader:
        x = x.to(runtime.device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if "accumulate" in extras:
            loss_sum += loss.detach().float() * x.shape[0]
            seen += x.shape[0]
        if sched is not None:
            sched.step()
        done += x.shape[0]
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
    ap.add_argument("--data", choices=["device", "loader"], default="device")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bare-first", action="store_true", help="time the bare loop first in each pair")
    ap.add_argument("--ablate", nargs="*", default=[], choices=["accumulate", "scheduler", "tqdm"],
                    help="also time the bare loop with one of visionpipe's per-step additions")
    ap.add_argument("--swap-loaders", action="store_true", help="feed each loop the other's DataLoader")
    args = ap.parse_args()

    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, image_size=args.image_size, device=args.device, amp=args.amp,
                      progress_bar=False, scheduler="none", compile=args.compile, log_every_n_steps=10**9, deterministic=False)
    device = torch.device(args.device)
    dtype = None if device.type == "cpu" and args.amp == "auto" else (torch.bfloat16 if args.amp in ("auto", "bf16") else None)
    runtime = Runtime(device, dtype, device.type == "cuda", args.workers, device.type == "cuda")
    n = args.batch_size * args.steps
    data = SyntheticSamples("classification", n, args.image_size, 10)
    task = ClassificationTask({"classes": [str(i) for i in range(10)], "model": {"name": args.model}})
    torch.backends.cudnn.benchmark = True

    # The same batches feed both loops. With --data device they are pre-built on the device, so the
    # figure is the loop's own cost (the data path has benchmarks/data_path.py); with --data loader
    # both read through identical persistent DataLoaders. Each loop gets a warm-up epoch (workers,
    # cuDNN autotuning, compilation), then the two are timed alternately and the best of --repeats kept.
    torch.manual_seed(0)
    trainer = Trainer(task, build_classifier({"name": args.model}, 10), cfg, runtime)
    model = torch.compile(trainer.model) if args.compile else trainer.model
    opt = build_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, 1.0, 0)

    torch.manual_seed(0)
    bare_model = build_classifier({"name": args.model}, 10).to(device)
    if runtime.channels_last:
        bare_model = bare_model.to(memory_format=torch.channels_last)
    bare_model = torch.compile(bare_model) if args.compile else bare_model
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=cfg.lr)

    if args.data == "device":
        distinct = [task.to_device(task.collate([data[i * args.batch_size + j] for j in range(args.batch_size)]), runtime)
                    for i in range(min(8, args.steps))]
        loader = bare_loader = [distinct[i % len(distinct)] for i in range(args.steps)]
        sampler = bare_sampler = None
    else:
        loader, _, sampler = trainer.loaders(data, data)
        bare_sampler = EpochSampler(len(data), True, 0)
        extra = {"persistent_workers": True, "prefetch_factor": 4} if args.workers else {}
        bare_loader = DataLoader(data, batch_size=args.batch_size, sampler=bare_sampler, collate_fn=task.collate,
                                 num_workers=args.workers, pin_memory=runtime.pin_memory, drop_last=True, **extra)

    if args.swap_loaders:  # diagnostic: which of loop and loader makes a difference
        loader, bare_loader = bare_loader, loader
    trainer._train_epoch(model, loader, opt, sched, None, 0)
    bare_epoch(bare_model, bare_opt, bare_loader, runtime)
    project_runs, bare_runs = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with GpuSampler() as gpu:
        for epoch in range(1, args.repeats + 1):
            for s in (sampler, bare_sampler):
                if s is not None:
                    s.set_epoch(epoch)
            if args.bare_first:
                bare_runs.append(bare_epoch(bare_model, bare_opt, bare_loader, runtime))
            project_runs.append(trainer._train_epoch(model, loader, opt, sched, None, epoch)["images_per_s"])
            if not args.bare_first:
                bare_runs.append(bare_epoch(bare_model, bare_opt, bare_loader, runtime))
    project, bare = max(project_runs), max(bare_runs)
    ablation = {}
    for extra in args.ablate:
        bare_epoch(bare_model, bare_opt, bare_loader, runtime, (extra,))
        ablation[extra] = round(max(bare_epoch(bare_model, bare_opt, bare_loader, runtime, (extra,)) for _ in range(2)), 1)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    emit({"benchmark": "train_overhead", "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
          "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "amp": runtime.amp_name,
          "channels_last": runtime.channels_last, "compile": args.compile, "data": args.data,
          "visionpipe_runs": [round(v, 1) for v in project_runs], "bare_runs": [round(v, 1) for v in bare_runs],
          "visionpipe_images_per_s": round(project, 1), "bare_images_per_s": round(bare, 1), "ratio": round(project / bare, 3), "bare_with": ablation,
          "gpu_util_pct": gpu.mean, "peak_mem_gib": round(peak, 2) if peak else None})


if __name__ == "__main__":
    main()
