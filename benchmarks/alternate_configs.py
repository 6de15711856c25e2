"""Training configurations of one task alternated in one process through visionpipe's own stages (ingest,
validate, augment, train with per-epoch evaluation; the built-in data unless the YAML names data.root):
per run the wall and CPU seconds (this process and its loader workers), the epoch times and the selection
metric (last and best epoch). A shared machine: compare runs of the same round, not seconds across rounds.

    python benchmarks/alternate_configs.py classification 6 1 '{model: {name: resnet10t}, train: {lr: 0.003}}' '{}'
    python benchmarks/alternate_configs.py detection 3 2 '{data: {num_workers: 0}}' '{data: {num_workers: 1}}'

Arguments: TASK EPOCHS ROUNDS YAML... (each YAML merged into the task's block of conf/base).
"""

from __future__ import annotations

import copy
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import yaml

from _common import emit, merge
from visionpipe import stages
from visionpipe.tasks import parse_task_config

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    task, epochs, rounds, variants = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    base = yaml.safe_load((PROJECT / "conf/base" / f"parameters_{task}.yml").read_text())[task]
    base["train"].update(epochs=epochs, progress_bar=False)
    os.chdir(tempfile.mkdtemp())
    for _ in range(rounds):
        for variant in variants:
            cfg = parse_task_config(task, merge(copy.deepcopy(base), yaml.safe_load(variant) or {}))
            raw = stages.ingest(task, cfg)
            index = stages.enforce_policy(task, raw, stages.validate(task, raw, cfg), cfg)
            aug = stages.augmentation(task, cfg)
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            start, cpu = time.perf_counter(), time.process_time()
            _, history = stages.train(task, index, aug, cfg, callbacks=[])
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            metric = cfg.registry.metric
            emit({"benchmark": "alternate_configs", "task": task, "config": variant, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                  "workers_cpu_s": round(after.ru_utime + after.ru_stime - kids.ru_utime - kids.ru_stime, 2),
                  "epoch_s": [round(h.get("epoch_time_s", 0.0), 2) for h in history],
                  f"{metric}_last": round(history[-1].get(metric, float("nan")), 4),
                  f"{metric}_best": round(max(h.get(metric, 0.0) for h in history), 4)})


if __name__ == "__main__":
    main()
