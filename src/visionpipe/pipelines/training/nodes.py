"""Training nodes."""

from __future__ import annotations

from typing import Any

import pandas as pd

from visionpipe import stages
from visionpipe.tasks import get_task_class
from visionpipe.tracking.callbacks import split_history, tracking_callbacks


def train_model(index: dict, augmentation: dict, params: dict[str, Any], task: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Train; return the best model bundle, the per-epoch history and the per-epoch timings (their own file);
    epochs are streamed to the active MLflow run."""
    task_cls = get_task_class(task)
    cfg = task_cls.parse_config(params)
    bundle, history = stages.train(task_cls, index, augmentation, cfg, callbacks=tracking_callbacks(cfg))
    note = bundle["spec"].get("weights_note")
    if note:  # model.pretrained: auto found no published weights: the end-of-run summary says how to get them
        import mlflow  # slow to import: only here

        if mlflow.active_run() is not None:
            mlflow.set_tag("visionpipe.weights_note", note[:5000])
    learning, timings = split_history(history)
    return bundle, pd.DataFrame(learning), pd.DataFrame(timings)
