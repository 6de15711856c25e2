"""Data path: images/s decoded + augmented by one worker (one process), per task, on the built-in
data with the training augmentations from conf/base. A DataLoader with N workers scales about N-fold.

    python benchmarks/data_path.py --images 400
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from _common import emit
from visionpipe import stages
from visionpipe.data import transforms
from visionpipe.data.datasets import IndexDataset
from visionpipe.tasks import get_task_class

PROJECT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--image-size", type=int, default=None, help="default: each task's built-in size")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp())
    for task in ("classification", "detection", "segmentation"):
        block = yaml.safe_load((PROJECT / "conf/base" / f"parameters_{task}.yml").read_text())[task]
        block["data"]["builtin"].update(train_images=args.images, val_images=2, path=str(work))
        if args.image_size:
            block["data"]["builtin"]["image_size"] = block["train"]["image_size"] = args.image_size
        task_cls = get_task_class(task)
        cfg = task_cls.parse_config(block)
        index = stages.ingest(task_cls, cfg)
        aug = stages.augmentation(task_cls, cfg)
        task_obj = task_cls(stages.make_spec(task_cls, cfg, index["classes"]))
        ds = IndexDataset(index, "train", transforms.from_dict(aug["train"]), task_obj.make_sample, seed=0)
        for i in range(min(10, len(ds))):  # warm-up
            ds[(i, 0)]
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[(i, 1)]
        rate = len(ds) / (time.perf_counter() - start)
        emit({"benchmark": "data_path", "task": task, "image_size": block["data"]["builtin"]["image_size"], "images": len(ds),
              "images_per_s_per_worker": round(rate, 1), "augment": [t["__class_fullname__"] for t in block["augment"]]})


if __name__ == "__main__":
    main()
