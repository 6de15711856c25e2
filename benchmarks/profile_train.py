"""Where a task's training epoch goes on this machine: torch.profiler (operators, self CPU time) and
cProfile (Python functions, cumulative time) over the real path (visionpipe.stages: built-in data decoded
and augmented by the loader, the task's loss, evaluation after each epoch). Prints the top items.

    python benchmarks/profile_train.py --task detection --epochs 1
    python benchmarks/profile_train.py --task detection --yaml '{model: {name: rtdet}}'
"""

from __future__ import annotations

import argparse
import cProfile
import copy
import io
import os
import pstats
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _common import emit, merge
from visionpipe import stages
from visionpipe.tasks import parse_task_config

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="detection")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--yaml", default="", help="YAML merged into the task's block, e.g. '{model: {name: rtdet}}'")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    block = copy.deepcopy(yaml.safe_load((PROJECT / "conf/base" / f"parameters_{args.task}.yml").read_text())[args.task])
    block["train"].update(epochs=args.epochs, progress_bar=False)
    block = merge(block, yaml.safe_load(args.yaml) or {})
    cfg = parse_task_config(args.task, block)
    os.chdir(tempfile.mkdtemp())
    raw = stages.ingest(args.task, cfg)
    index = stages.enforce_policy(args.task, raw, stages.validate(args.task, raw, cfg), cfg)
    aug = stages.augmentation(args.task, cfg)
    prof = cProfile.Profile()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as tp:
        prof.enable()
        bundle, history = stages.train(args.task, index, aug, cfg, callbacks=[])
        prof.disable()
    wall = time.perf_counter() - start
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(45)
    print(out.getvalue())
    print(tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    emit({"benchmark": "profile_train", "task": args.task, "model": cfg.model.name, "epochs": args.epochs, "wall_s": round(wall, 1),
          "epoch_time_s": [round(h.get("epoch_time_s", 0), 2) for h in history]})


if __name__ == "__main__":
    main()
