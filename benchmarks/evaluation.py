"""Evaluation cost: visionpipe's COCO mAP against calling pycocotools directly on the same files
(goal: no slower, equal numbers), and segmentation metrics over a large validation set.

    python benchmarks/evaluation.py --images 500 --seg-images 500 --seg-size 256
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import emit
from visionpipe.engine.runtime import Runtime
from visionpipe.tasks.detection import coco_evaluate
from visionpipe.tasks.segmentation import SegmentationTask


def detection_files(n_images: int, n_classes: int, folder: Path) -> tuple[Path, Path, list[str]]:
    rng = np.random.default_rng(0)
    images, anns, preds = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 640, "height": 480})
        for _ in range(int(rng.integers(1, 10))):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            w, h = rng.uniform(8, 140), rng.uniform(8, 100)
            c = int(rng.integers(1, n_classes + 1))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            preds.append({"image_id": i, "category_id": c, "bbox": [x + rng.normal(0, 4), y + rng.normal(0, 4), w, h], "score": float(rng.uniform(0.3, 1))})
        for _ in range(40):  # background detections up to a realistic count per image
            preds.append({"image_id": i, "category_id": int(rng.integers(1, n_classes + 1)),
                          "bbox": [rng.uniform(0, 600), rng.uniform(0, 440), rng.uniform(5, 60), rng.uniform(5, 60)], "score": float(rng.uniform(0, 0.5))})
    classes = [f"c{k}" for k in range(1, n_classes + 1)]
    gt = {"images": images, "annotations": anns, "categories": [{"id": k, "name": n} for k, n in enumerate(classes, 1)]}
    (folder / "gt.json").write_text(json.dumps(gt))
    (folder / "pred.json").write_text(json.dumps(preds))
    return folder / "gt.json", folder / "pred.json", classes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--seg-images", type=int, default=500)
    ap.add_argument("--seg-size", type=int, default=256)
    args = ap.parse_args()
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = Path(tempfile.mkdtemp())
    gt_path, pred_path, classes = detection_files(args.images, args.classes, folder)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt_path))
        ev = COCOeval(coco, coco.loadRes(str(pred_path)), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    reference_s = time.perf_counter() - start
    gt, preds = json.loads(gt_path.read_text()), json.loads(pred_path.read_text())
    backends = ["pycocotools"]
    try:
        import faster_coco_eval  # noqa: F401

        backends.append("faster_coco_eval")
    except ImportError:
        emit({"benchmark": "coco_map", "backend": "faster_coco_eval", "skipped": "not installed (pip install 'visionpipe[fast-eval]')"})
    for backend in backends:  # visionpipe's coco_evaluate with each COCOeval, against pycocotools called directly
        start = time.perf_counter()
        metrics, _ = coco_evaluate(gt, preds, classes, backend=backend)
        ours_s = time.perf_counter() - start
        emit({"benchmark": "coco_map", "backend": backend, "images": args.images, "classes": args.classes, "visionpipe_s": round(ours_s, 3),
              "pycocotools_s": round(reference_s, 3), "ratio": round(ours_s / reference_s, 3), "map": metrics["map"],
              "map_pycocotools": float(ev.stats[0]), "equal": bool(abs(metrics["map"] - ev.stats[0]) < 1e-12)})

    k = 21
    task = SegmentationTask({"classes": [f"c{i}" for i in range(k)], "ignore_index": 255, "losses": [{"name": "ce", "weight": 1.0}]})
    ev = task.evaluator(Runtime(torch.device("cpu"), None, False, 0, False), [])
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, k, (args.seg_size, args.seg_size), generator=g)
    logits = torch.randn(1, k, args.seg_size, args.seg_size, generator=g)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits

    start = time.perf_counter()
    for i in range(args.seg_images):
        ev.update(Fixed(), (None, target[None], [{"index": i, "mask": target}]))
    metrics = ev.compute()
    seg_s = time.perf_counter() - start
    emit({"benchmark": "segmentation_metrics", "images": args.seg_images, "size": args.seg_size, "classes": k,
          "seconds": round(seg_s, 3), "images_per_s": round(args.seg_images / seg_s, 1), "miou": round(metrics["miou"], 4)})


if __name__ == "__main__":
    main()
