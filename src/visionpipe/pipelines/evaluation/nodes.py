"""Evaluation nodes: each returns its metrics; the catalog decides where they go (JSON, MLflow)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from visionpipe import stages
from visionpipe.config import parse_task_config


# val_loss is the val/loss curve at the best epoch; val_images is in the dataset input's profile
_NOT_LOGGED_AS_FINAL = ("val_loss", "val_images")


def split_timings(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, timings): the evaluation time leaves metrics.json, so `dvc metrics diff` shows only real changes."""
    metrics = dict(metrics)
    seconds = metrics.pop("eval_time_s", None)
    timings = {} if seconds is None else {"eval_time_s": seconds,
                                          "eval_images_per_s": metrics.get("val_images", 0) / max(seconds, 1e-9)}
    return metrics, timings


def mlflow_metrics(metrics: dict[str, float], timings: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """kedro-mlflow's metrics format: one value at step 0 per numeric final metric (plain names: top1, map, miou),
    timings under process/ beside the per-epoch process figures."""
    out = {k: {"value": float(v), "step": 0} for k, v in metrics.items()
           if isinstance(v, (int, float)) and k not in _NOT_LOGGED_AS_FINAL}
    out.update({f"process/{k}": {"value": float(v), "step": 0} for k, v in (timings or {}).items()})
    return out


def evaluate_classifier(model: dict, index: dict, augmentation: dict, params: dict[str, Any]):
    """top-1/top-5 (top-k with fewer classes) and a row of ranked classes per validation image."""
    metrics, evaluator, _ = stages.evaluate("classification", index, augmentation, model, parse_task_config("classification", params))
    metrics, timings = split_timings(metrics)
    return metrics, timings, mlflow_metrics(metrics, timings), stages.classification_predictions(index, evaluator)


def evaluate_detector(model: dict, index: dict, augmentation: dict, params: dict[str, Any]):
    """COCO mAP; predictions in COCO results format and the ground truth they were scored against."""
    metrics, evaluator, _ = stages.evaluate("detection", index, augmentation, model, parse_task_config("detection", params))
    predictions, ground_truth = stages.detection_outputs(index, evaluator)
    metrics, timings = split_timings(metrics)
    return metrics, timings, mlflow_metrics(metrics, timings), predictions, ground_truth


def evaluate_segmenter(model: dict, index: dict, augmentation: dict, params: dict[str, Any]):
    """mIoU, pixel accuracy, Dice and per-class IoU; a class-index PNG per validation image."""
    metrics, evaluator, _ = stages.evaluate("segmentation", index, augmentation, model, parse_task_config("segmentation", params))
    metrics, timings = split_timings(metrics)
    return metrics, timings, mlflow_metrics(metrics, timings), stages.segmentation_masks(index, evaluator)


def plot_classification(predictions: pd.DataFrame, index: dict, history: pd.DataFrame):
    """Confusion matrix, per-class accuracy and loss curves."""
    from visionpipe.tracking import plots

    return (plots.confusion_matrix(predictions, index["classes"]), plots.per_class_accuracy(predictions, index["classes"]),
            plots.loss_curves(history))


def plot_detection(predictions: list, ground_truth: dict, index: dict, history: pd.DataFrame):
    """Precision-recall curves per class, validation images with predicted vs true boxes, loss curves."""
    from visionpipe.tracking import plots

    return (plots.pr_curves(predictions, ground_truth, index["classes"]), plots.box_grid(predictions, ground_truth, index),
            plots.loss_curves(history))


def plot_segmentation(masks: dict, index: dict, history: pd.DataFrame):
    """Predicted vs true mask overlays and loss curves."""
    from visionpipe.tracking import plots

    return plots.mask_overlays(masks, index), plots.loss_curves(history)
