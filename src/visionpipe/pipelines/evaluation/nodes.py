"""Evaluation nodes: each returns its metrics; the catalog decides where they go (JSON, MLflow)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from visionpipe import stages
from visionpipe.tasks import get_task_class


# val_loss is the val/loss curve at the best epoch; val_images is in the dataset input's profile
_NOT_LOGGED_AS_FINAL = ("val_loss", "val_images")


def split_timings(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """(metrics, timings): the evaluation time leaves metrics.json, so `dvc metrics diff` shows only real changes."""
    metrics = dict(metrics)
    seconds = metrics.pop("eval_time_s", None)
    timings = {} if seconds is None else {"eval_time_s": seconds,
                                          "eval_images_per_s": metrics.get("val_images", 0) / max(seconds, 1e-9)}
    return metrics, timings


def mlflow_metrics(metrics: dict[str, Any], timings: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """kedro-mlflow's metrics format: one value at step 0 per numeric final metric (plain names: top1, map, miou),
    timings under process/ beside the per-epoch process figures."""
    out = {k: {"value": float(v), "step": 0} for k, v in metrics.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_LOGGED_AS_FINAL}
    out.update({f"process/{k}": {"value": float(v), "step": 0} for k, v in (timings or {}).items()})
    return out


def evaluate_model(model: dict, index: dict, augmentation: dict, params: dict[str, Any], task: str) -> dict[str, Any]:
    """The task's metrics on the validation split, their timings (own file), and what the task writes beside
    them (predictions...)."""
    task_cls = get_task_class(task)
    metrics, evaluator, task_obj = stages.evaluate(task_cls, index, augmentation, model, task_cls.parse_config(params))
    metrics, timings = split_timings(metrics)
    return {"metrics": metrics, "evaluation_timings": timings, "mlflow_metrics": mlflow_metrics(metrics, timings),
            **task_obj.prediction_outputs(index, evaluator),
            **{f"plot_{name}": figure for name, figure in task_obj.evaluation_figures(evaluator).items()}}


def plot_evaluation(index: dict, history: pd.DataFrame, *outputs, task: str) -> dict[str, Any]:
    """The task's figures from the evaluation outputs (``outputs`` in the task's ``output_datasets`` order)."""
    task_cls = get_task_class(task)
    figures = task_cls.plots(dict(zip(task_cls.output_datasets, outputs)), index, history)
    return {f"plot_{name}": figures[name] for name in task_cls.plot_names if name not in task_cls.evaluation_plots}
