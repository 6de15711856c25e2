"""Intra-op threads on a shared CPU: one rtdet training step (16 images, 128 px) and a resnet10t forward at batch 1
(32 px) with 1..N torch threads, alternated in one process, best of each kept.

    python benchmarks/cpu_threads.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import time

import timm
import torch

from _common import emit
from visionpipe.tasks.detection import build_detector


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    spec = {"model": {"name": "rtdet", "backbone": "resnet10t_nano", "kwargs": {"fpn_channels": 48}}, "classes": list("0123456789"),
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": 128,
            "evaluation": {"score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 100}}
    detector = build_detector(spec).train()
    images = [torch.rand(3, 128, 128) for _ in range(16)]
    targets = [{"boxes": torch.tensor([[10.0, 10, 50, 60], [60, 60, 100, 90]]), "labels": torch.tensor([1, 2])} for _ in range(16)]
    optimizer = torch.optim.AdamW(detector.parameters())
    classifier = timm.create_model("resnet10t", num_classes=10).eval()
    x = torch.rand(1, 3, 32, 32)
    step, single = {}, {}
    for _ in range(args.rounds):
        for n in range(1, cores + 1):
            torch.set_num_threads(n)
            start = time.perf_counter()
            loss = sum(detector(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step[n] = min(step.get(n, float("inf")), time.perf_counter() - start)
            with torch.inference_mode():
                start = time.perf_counter()
                for _ in range(32):
                    classifier(x)
                single[n] = max(single.get(n, 0.0), 32 / (time.perf_counter() - start))
    for n in step:
        emit({"benchmark": "cpu_threads", "threads": n, "cores": cores, "load_avg_1m": round(os.getloadavg()[0], 1),
              "detection_step_s": round(step[n], 3), "classification_b1_img_s": round(single[n], 1)})


if __name__ == "__main__":
    main()
