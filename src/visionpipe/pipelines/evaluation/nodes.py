"""Evaluation nodes: each returns its metrics; the catalog decides where they go (JSON, MLflow)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from visionpipe import stages
from visionpipe.config import parse_task_config


def mlflow_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """kedro-mlflow's metrics format: one value at step 0 per numeric metric."""
    return {k: {"value": float(v), "step": 0} for k, v in metrics.items() if isinstance(v, (int, float))}


def evaluate_classifier(model: dict, index: dict, augmentation: dict, params: dict[str, Any]):
    """top-1/top-5 (top-k with fewer classes) and a row of ranked classes per validation image."""
    metrics, evaluator, _ = stages.evaluate("classification", index, augmentation, model, parse_task_config("classification", params))
    return metrics, mlflow_metrics(metrics), stages.classification_predictions(index, evaluator)


def evaluate_detector(model: dict, index: dict, augmentation: dict, params: dict[str, Any]):
    """COCO mAP; predictions in COCO results format and the ground truth they were scored against."""
    metrics, evaluator, _ = stages.evaluate("detection", index, augmentation, model, parse_task_config("detection", params))
    predictions, ground_truth = stages.detection_outputs(index, evaluator)
    return metrics, mlflow_metrics(metrics), predictions, ground_truth


def evaluate_segmenter(model: dict, index: dict, augmentation: dict, params: dict[str, Any]):
    """mIoU, pixel accuracy, Dice and per-class IoU; a class-index PNG per validation image."""
    metrics, evaluator, _ = stages.evaluate("segmentation", index, augmentation, model, parse_task_config("segmentation", params))
    return metrics, mlflow_metrics(metrics), stages.segmentation_masks(index, evaluator)


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
