"""Metrics against hand-checked values and peer libraries (timm, pycocotools, smp)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionpipe.engine.runtime import Runtime
from visionpipe.tasks.classification import ClassificationEvaluator
from visionpipe.tasks.detection import coco_evaluate, coco_ground_truth
from visionpipe.tasks.segmentation import SegmentationTask

CPU = Runtime(torch.device("cpu"), None, False, 0, False)


class _Fixed(torch.nn.Module):
    """A 'model' that returns preset outputs, to drive evaluators with known predictions."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


def test_top1_top5_hand_checked_and_against_timm():
    from timm.utils import accuracy

    logits = torch.tensor([
        [9.0, 1, 2, 3, 4, 5, 6],   # target 0: rank 1
        [1.0, 9, 8, 7, 6, 5, 4],   # target 6: rank 7 (miss top-5)
        [1.0, 2, 9, 8, 7, 6, 5],   # target 4: rank 3
        [5.0, 4, 3, 2, 1, 0, 9],   # target 1: rank 3
    ])
    targets = torch.tensor([0, 6, 4, 1])
    ev = ClassificationEvaluator(7, torch.device("cpu"), keep_predictions=True)
    ev.update(_Fixed(logits), (logits, targets, torch.arange(4)))
    m = ev.compute()
    assert m["top1"] == pytest.approx(1 / 4) and m["top5"] == pytest.approx(3 / 4)
    t1, t5 = accuracy(logits, targets, topk=(1, 5))
    assert m["top1"] == pytest.approx(t1.item() / 100) and m["top5"] == pytest.approx(t5.item() / 100)
    assert ev.predictions[2]["classes"][:3] == [2, 3, 4]


def test_top5_only_where_it_means_something():
    """With 5 classes or fewer top-5 is 1.0 by construction: not reported (predictions keep the top k classes)."""
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1]])
    ev = ClassificationEvaluator(3, torch.device("cpu"), keep_predictions=False)
    ev.update(_Fixed(logits), (logits, torch.tensor([2, 0]), torch.arange(2)))
    assert ev.k == 3 and ev.compute() == {"val_loss": pytest.approx(ev.compute()["val_loss"]), "top1": 0.5}


def _gt(boxes_per_image):
    records = [{"image": f"{i}.png", "image_id": i + 1, "width": 100, "height": 100, "boxes": [b for b, _ in objs],
                "labels": [c for _, c in objs], "iscrowd": [0] * len(objs)} for i, objs in enumerate(boxes_per_image)]
    return coco_ground_truth(records, ["a", "b"])


def _pred(image_id, box, label, score=0.9):
    x0, y0, x1, y1 = box
    return {"image_id": image_id, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}


def test_coco_map_perfect_predictions_is_one():
    objs = [[([10, 10, 50, 50], 0), ([60, 60, 90, 95], 1)], [([5, 5, 40, 30], 1)]]
    gt = _gt(objs)
    preds = [_pred(i + 1, b, c) for i, o in enumerate(objs) for b, c in o]
    metrics, _ = coco_evaluate(gt, preds, ["a", "b"])
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_50"] == pytest.approx(1.0)
    assert metrics["ap/a"] == pytest.approx(1.0) and metrics["ap/b"] == pytest.approx(1.0)


def test_coco_map_shifted_box_counts_only_below_its_iou():
    gt = _gt([[([0, 0, 40, 40], 0)]])
    # shifted by 8 px: IoU = 32*40 / (2*1600 - 32*40) = 1280/1920 = 0.667
    metrics, _ = coco_evaluate(gt, [_pred(1, [8, 0, 48, 40], 0)], ["a", "b"])
    assert metrics["map_50"] == pytest.approx(1.0)
    assert metrics["map_75"] == pytest.approx(0.0)
    # matched at thresholds 0.50..0.65 (4 of 10) -> AP@[.5:.95] = 0.4
    assert metrics["map"] == pytest.approx(0.4, abs=1e-6)


def test_coco_map_missed_object_halves_recall():
    gt = _gt([[([0, 0, 40, 40], 0)], [([10, 10, 30, 30], 0)]])
    metrics, _ = coco_evaluate(gt, [_pred(1, [0, 0, 40, 40], 0)], ["a", "b"])
    # precision 1 up to recall 0.5, then nothing: 51 of 101 recall points
    assert metrics["map"] == pytest.approx(51 / 101, abs=1e-6)


def test_coco_map_equals_pycocotools_directly():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    objs = [[([x, y, x + 20, y + 20], int(rng.integers(0, 2))) for x, y in rng.integers(0, 70, size=(3, 2))] for _ in range(5)]
    gt = _gt(objs)
    preds = [_pred(i + 1, [v + rng.normal(0, 3) for v in b], c, float(rng.uniform(0.1, 1))) for i, o in enumerate(objs) for b, c in o]
    metrics, _ = coco_evaluate(gt, preds, ["a", "b"])
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(preds), "bbox")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert metrics["map"] == pytest.approx(ev.stats[0]) and metrics["map_75"] == pytest.approx(ev.stats[2])


def test_segmentation_iou_with_ignore_and_absent_class_matches_smp():
    import segmentation_models_pytorch as smp

    target = torch.tensor([[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 0, 255], [1, 1, 0, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]])
    # class 2 appears nowhere in the target and only on an ignored pixel in the prediction: absent
    spec = {"task": "segmentation", "classes": ["bg", "fg", "other"], "ignore_index": 255, "losses": [{"name": "ce", "weight": 1.0}]}
    task = SegmentationTask(spec)
    ev = task.evaluator(CPU, [])
    logits = torch.nn.functional.one_hot(pred, 3).permute(2, 0, 1).float()[None] * 10
    ev.update(_Fixed(logits), (logits, target[None], [{"index": 0, "mask": target}]))
    m = ev.compute()
    # hand count, ignoring the two 255 pixels: bg tp=6 fp=0 fn=3 -> 6/9; fg tp=5 fp=3 fn=0 -> 5/8
    assert m["iou/bg"] == pytest.approx(6 / 9) and m["iou/fg"] == pytest.approx(5 / 8)
    assert math.isnan(m["iou/other"])
    assert m["miou"] == pytest.approx((6 / 9 + 5 / 8) / 2)
    assert m["pixel_accuracy"] == pytest.approx(11 / 14)
    tp, fp, fn, tn = smp.metrics.get_stats(pred[None], target[None], mode="multiclass", num_classes=3, ignore_index=255)
    iou = smp.metrics.iou_score(tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0), reduction="none")
    assert m["iou/bg"] == pytest.approx(iou[0].item()) and m["iou/fg"] == pytest.approx(iou[1].item())
    assert m["dice"] == pytest.approx(np.mean([2 * 6 / (12 + 3), 2 * 5 / (10 + 3)]))
