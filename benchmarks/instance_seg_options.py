"""Instance segmentation: where a Mask R-CNN training step goes, and what a lighter configuration of the same
model (same contract: the task's Mask R-CNN on a timm backbone) saves. One process, steps timed alternately,
the best of each kept (the machine is shared); torch.profiler's top operators for the default.

    python benchmarks/instance_seg_options.py --steps 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from _common import emit
from visionpipe.tasks import get_task_class

PROJECT = Path(__file__).resolve().parents[1]

VARIANTS = {
    "default (resnet10t, conf/base)": {},
    "resnet10t_nano backbone": {"backbone": "resnet10t_nano"},
    "resnet10t_nano, fpn 32, 32 RoIs": {"backbone": "resnet10t_nano", "kwargs": {"fpn_channels": 32, "box_batch_size_per_image": 32}},
}


def batch(size: int, n: int):
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for _ in range(n):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 8:40, 10:50] = 1
        masks[1, 50:90, 40:80] = 1
        images.append(torch.rand(3, size, size, generator=g))
        targets.append({"boxes": torch.tensor([[10.0, 8, 50, 40], [40, 50, 80, 90]]), "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    block = yaml.safe_load((PROJECT / "conf/base/parameters_instance_segmentation.yml").read_text())["instance_segmentation"]
    size, n = block["train"]["image_size"], block["train"]["batch_size"]
    cls = get_task_class("instance_segmentation")
    models = {}
    for name, override in VARIANTS.items():
        model_cfg = {**block["model"], **override, "kwargs": {**block["model"]["kwargs"], **override.get("kwargs", {})}, "pretrained": False}
        spec = {"task": cls.name, "classes": ["a", "b", "c"], "model": model_cfg, "image_size": size, "mean": [0.485, 0.456, 0.406],
                "std": [0.229, 0.224, 0.225], "evaluation": {"score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 100,
                                                             "mask_threshold": 0.5}}
        model = cls(spec).build_model().train()
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    images, targets = batch(size, n)

    def step(model, opt):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    best = {name: float("inf") for name in models}
    for _ in range(args.steps + 1):
        for name, (model, opt) in models.items():
            start = time.perf_counter()
            step(model, opt)
            best[name] = min(best[name], time.perf_counter() - start)
    model, opt = models[next(iter(models))]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.profiler.record_function("step"):
            step(model, opt)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    base = best[next(iter(best))]
    for name, seconds in best.items():
        params = sum(p.numel() for p in models[name][0].parameters()) / 1e6
        emit({"benchmark": "instance_seg_options", "variant": name, "step_s": round(seconds, 3), "ratio": round(seconds / base, 2),
              "params_m": round(params, 2), "batch": n, "image_size": size})


if __name__ == "__main__":
    main()
