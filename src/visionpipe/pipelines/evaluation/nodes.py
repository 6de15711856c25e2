"""Evaluation nodes: each returns its metrics; the catalog decides where they go (JSON, MLflow)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from visionpipe import stages
from visionpipe.config import parse_task_config


def mlflow_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """kedro-mlflow's metrics format: one value at step 0 per numeric metric."""
    return {k: {"value": float(v), "step": 0} for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def evaluate_model(model: dict, index: dict, augmentation: dict, params: dict[str, Any], task: str) -> dict[str, Any]:
    """The task's metrics on the validation split, and what the task writes beside them (predictions...)."""
    metrics, evaluator, task_obj = stages.evaluate(task, index, augmentation, model, parse_task_config(task, params))
    return {"metrics": metrics, "mlflow_metrics": mlflow_metrics(metrics), **task_obj.prediction_outputs(index, evaluator)}


def plot_evaluation(index: dict, history: pd.DataFrame, *outputs, task: str) -> dict[str, Any]:
    """The task's figures from the evaluation outputs (``outputs`` in the task's ``output_datasets`` order)."""
    from visionpipe.tasks import get_task_class

    task_cls = get_task_class(task)
    figures = task_cls.plots(dict(zip(task_cls.output_datasets, outputs)), index, history)
    return {f"plot_{name}": figures[name] for name in task_cls.plot_names}
