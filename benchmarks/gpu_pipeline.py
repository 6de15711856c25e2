"""The real training path on a GPU: built-in data decoded and augmented by DataLoader workers,
AMP and channels_last chosen by `auto`, for each task; prints one JSON line per task.
Runs without Kedro/MLflow (the stage functions in visionpipe.stages), so it needs only the model stack.

    python benchmarks/gpu_pipeline.py --epochs 3
    torchrun --nproc_per_node=2 benchmarks/gpu_pipeline.py --tasks classification   # DDP
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _common import GpuSampler, emit, merge
from visionpipe import stages
from visionpipe.tasks import parse_task_config
from visionpipe.engine import distributed

PROJECT = Path(__file__).resolve().parents[1]


def params(task: str, epochs: int, scale: int, override: dict | None = None) -> dict:
    block = yaml.safe_load((PROJECT / "conf/base" / f"parameters_{task}.yml").read_text())[task]
    block = merge(copy.deepcopy(block), override or {})
    block["train"].update(epochs=epochs, progress_bar=False)
    block["data"]["builtin"].update(train_images=block["data"]["builtin"]["train_images"] * scale,
                                    val_images=block["data"]["builtin"]["val_images"] * scale)
    return block


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["classification", "detection", "segmentation"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--scale", type=int, default=8, help="built-in dataset size multiplier")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--yaml", default="", help="YAML merged into each task's block, e.g. '{model: {name: fcos}}'")
    args = ap.parse_args()
    distributed.init_from_env()
    work = Path(args.workdir or os.environ.get("OUT") or tempfile.mkdtemp()) / "gpu_pipeline"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    for task in args.tasks:
        cfg = parse_task_config(task, params(task, args.epochs, args.scale, yaml.safe_load(args.yaml) or {}))
        start = time.perf_counter()
        raw = stages.ingest(task, cfg)
        index = stages.enforce_policy(task, raw, stages.validate(task, raw, cfg), cfg)
        aug = stages.augmentation(task, cfg)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        with GpuSampler() as gpu:
            bundle, history = stages.train(task, index, aug, cfg, callbacks=[])
            metrics, _, _ = stages.evaluate(task, index, aug, bundle, cfg)
        if distributed.is_main_process():
            emit({"benchmark": "gpu_pipeline", "task": task, "model": bundle["spec"]["model"]["name"], "world_size": distributed.world_size(),
                  "device": bundle["spec"]["runtime"]["device"], "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "amp": bundle["spec"]["runtime"]["amp"], "channels_last": bundle["spec"]["runtime"]["channels_last"],
                  "train_images": len(index["train"]), "epochs": args.epochs,
                  "images_per_s_last_epoch": round(history[-1]["images_per_s"], 1), "train_loss": [round(h["train_loss"], 4) for h in history],
                  "metric": {k: round(v, 4) for k, v in metrics.items() if k in ("top1", "top5", "map", "map_50", "miou", "pixel_accuracy")},
                  "gpu_util_pct": gpu.mean,
                  "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
                  "wall_s": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
