"""Evaluation nodes: each returns its metrics; the catalog decides where they go (JSON, MLflow)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from visionpipe import stages
from visionpipe.tasks import get_task_class
from visionpipe.tracking.callbacks import PROCESS_PREFIX, final_metric_name


# val_loss is the val/loss curve at the best epoch
_NOT_LOGGED_AS_FINAL = ("val_loss",)
# what evaluation.json holds beside the timings: how the metrics were measured, not metrics
_DETAILS = ("evaluation", "val_images", "test_images")


def split_timings(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, details): all_metrics.json and metrics.json keep only metrics, so `make metrics` and `dvc metrics
    show/diff` list results and nothing else; evaluation.json gets the evaluation time (it changes on every run), the image counts and the
    evaluation settings used (``evaluation``, also in the task's DVC params)."""
    metrics = dict(metrics)
    details = {k: metrics.pop(k) for k in _DETAILS if k in metrics}
    seconds = metrics.pop("eval_time_s", None)
    if seconds is not None:
        details.update({"eval_time_s": seconds, "eval_images_per_s": details.get("val_images", 0) / max(seconds, 1e-9)})
    return metrics, details


# metrics.json's values: as many decimals as every other view of a run (the summary, `make metrics`), so
# `dvc metrics show` lists each in at most 6 characters
TABLE_DECIMALS = 4


def dvc_metrics(task_cls, metrics: dict[str, Any]) -> dict[str, float]:
    """metrics.json, what `dvc metrics show` and `dvc exp show` list: the task's few ``table_metrics`` (its primary
    metric when it names none), and the same under ``test/`` when there is a test split, at TABLE_DECIMALS
    decimals. Every metric at full precision is in all_metrics.json (``<task>.metrics``)."""
    names = task_cls.table_metrics or (task_cls.primary_metric,)
    return {key: round(float(metrics[key]), TABLE_DECIMALS)
            for key in (f"{prefix}{name}" for prefix in ("", "test/") for name in names) if key in metrics}


def mlflow_metrics(metrics: dict[str, Any], timings: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """kedro-mlflow's metrics format: one value at step 0 per numeric final metric (plain names: top1, map, miou,
    ap_circle), timings under system/process/ beside the per-epoch process figures."""
    out = {final_metric_name(k): {"value": float(v), "step": 0} for k, v in metrics.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _NOT_LOGGED_AS_FINAL}
    out.update({f"{PROCESS_PREFIX}{k}": {"value": float(v), "step": 0} for k, v in (timings or {}).items() if k.startswith("eval_")})
    return out


def per_class_table(metrics: dict[str, Any], metric: str) -> pd.DataFrame:
    """The per-class metric (``ap/<class>`` ...) as a table, one row per class: per_class.csv, which dvc.yaml
    draws as a bar per class."""
    rows = [(k.split("/", 1)[1], float(v)) for k, v in metrics.items() if k.startswith(f"{metric}/")]
    return pd.DataFrame(rows, columns=["class", metric])


def evaluate_model(model: dict, index: dict, augmentation: dict, params: dict[str, Any], task: str) -> dict[str, Any]:
    """The task's metrics on the validation split, how they were measured (evaluation.json), the per-class
    table of a task with a per-class metric, and what the task writes beside them (predictions...)."""
    task_cls = get_task_class(task)
    metrics, evaluator, task_obj = stages.evaluate(task_cls, index, augmentation, model, task_cls.parse_config(params))
    metrics, details = split_timings(metrics)
    per_class = task_cls.per_class_metric
    return {"metrics": metrics, "dvc_metrics": dvc_metrics(task_cls, metrics), "evaluation_details": details,
            "mlflow_metrics": mlflow_metrics(metrics, details),
            **({"per_class": per_class_table(metrics, per_class)} if per_class else {}),
            **task_obj.prediction_outputs(index, evaluator),
            **{f"plot_{name}": figure for name, figure in task_obj.evaluation_figures(evaluator).items()}}


def plot_evaluation(index: dict, history: pd.DataFrame, *outputs, task: str) -> dict[str, Any]:
    """The task's figures from the evaluation outputs (``outputs`` in the task's ``output_datasets`` order)."""
    task_cls = get_task_class(task)
    figures = task_cls.plots(dict(zip(task_cls.output_datasets, outputs)), index, history)
    return {f"plot_{name}": figures[name] for name in task_cls.plot_names if name not in task_cls.evaluation_plots}
