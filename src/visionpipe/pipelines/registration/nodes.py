"""Registration node."""

from __future__ import annotations

import logging
from typing import Any

from visionpipe.engine import distributed
from visionpipe.stages import gate_metric, serving_bundle
from visionpipe.tasks import get_task_class
from visionpipe.tracking.champion import rescorer, scoring_split, split_fingerprint
from visionpipe.tracking.lineage import lineage_tags
from visionpipe.tracking.registry import register_and_gate, registered_model_name

logger = logging.getLogger(__name__)


def register_model(model: dict, metrics: dict[str, float], index: dict, params: dict[str, Any], task: str) -> dict:
    """Register the model in the MLflow Model Registry; the alias goes to it only if it beats the champion."""
    import mlflow

    task_cls = get_task_class(task)
    cfg = task_cls.parse_config(params)
    if not cfg.registry.enabled:
        return {"skipped": f"{task}.registry.enabled is false"}
    if not distributed.is_main_process():
        return {"skipped": f"rank {distributed.rank()} does not register"}
    if mlflow.active_run() is None:
        logger.warning("No active MLflow run (is kedro-mlflow disabled for this pipeline?): %s is not registered", task)
        return {"skipped": "no active MLflow run"}
    tags = {"visionpipe.task": task, "visionpipe.model": cfg.model.name, **lineage_tags(index, strict=cfg.data.validation == "strict")}
    if cfg.model.backbone:
        tags["visionpipe.backbone"] = cfg.model.backbone

    split = scoring_split(index)
    evaluation = {"split": split, "fingerprint": split_fingerprint(index, split), "rescore": rescorer(task_cls, index, cfg)}
    registry_cfg = {**cfg.registry.model_dump(), "greater_is_better": cfg.registry.greater,
                    "model_name": registered_model_name(task, cfg.registry.model_name, index),
                    "metric": gate_metric(cfg.registry.metric, metrics)}
    return register_and_gate(serving_bundle(model, cfg), metrics, registry_cfg, tags, evaluation)
