"""COCO-protocol evaluation, shared by the tasks that score boxes or instance masks: COCO ground truth from index
records (the user's category ids kept), the evaluator backend (faster-coco-eval's drop-in when installed, else
pycocotools: the same numbers), and ``coco_evaluate``, which returns the metrics and the evaluated COCOeval (the
object ``plots.pr_curves`` draws)."""

from __future__ import annotations

import contextlib
import io
from typing import Any


def coco_categories(classes: list[str], category_ids: list[int] | None = None) -> list[dict]:
    """COCO ``categories`` for the classes: the user's own ids (COCO data), else 1..K in class order (VOC, YOLO)."""
    ids = category_ids or list(range(1, len(classes) + 1))
    return [{"id": int(i), "name": n, "supercategory": "object"} for i, n in zip(ids, classes)]


def coco_ground_truth(records: list[dict], classes: list[str], category_ids: list[int] | None = None) -> dict:
    """The COCO ground truth of ``records`` with the user's image ids and category ids (``category_ids[label]``)."""
    ids = category_ids or list(range(1, len(classes) + 1))
    images, annotations = [], []
    for rec in records:
        images.append({"id": rec["image_id"], "file_name": rec["image"], "width": rec["width"], "height": rec["height"]})
        for box, label, crowd in zip(rec["boxes"], rec["labels"], rec["iscrowd"]):
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": rec["image_id"], "category_id": int(ids[label]),
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": crowd})
    return {"images": images, "annotations": annotations, "categories": coco_categories(classes, ids)}


def coco_backend(name: str = "auto"):
    """(COCO, COCOeval) classes: faster-coco-eval's drop-in when installed (``auto``), else pycocotools."""
    if name in ("auto", "faster_coco_eval"):
        try:
            from faster_coco_eval import COCO, COCOeval_faster

            return COCO, COCOeval_faster
        except ImportError:
            if name == "faster_coco_eval":
                raise
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def coco_evaluate(ground_truth: dict, predictions: list[dict], classes: list[str], max_detections: int = 100,
                  backend: str = "auto", iou_type: str = "bbox") -> tuple[dict, Any]:
    """COCO evaluation, ``iou_type`` bbox or segm (faster-coco-eval or pycocotools, same numbers); returns
    (metrics, the COCOeval object).

    Per-class AP is keyed by the category names of ``ground_truth``.
    """
    coco_cls, eval_cls = coco_backend(backend)
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    with contextlib.redirect_stdout(io.StringIO()):
        if not predictions:
            metrics = {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
            metrics.update({f"ap/{c}": 0.0 for c in classes})
            return metrics, None
        gt = coco_cls()
        gt.dataset = ground_truth
        gt.createIndex()
        dt = gt.loadRes([dict(p) for p in predictions])  # loadRes adds keys to the dicts it is given
        ev = eval_cls(gt, dt, iou_type)
        ev.params.maxDets = [1, 10, max_detections]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metric_names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
    metrics = {n: float(v) for n, v in zip(metric_names, ev.stats[:6]) if v >= 0}  # -1: no object of that size
    precision = ev.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        metrics[f"ap/{names[cat_id]}"] = float(p.mean()) if p.size else float("nan")
    return metrics, ev
