"""Ingestion nodes."""

from __future__ import annotations

from typing import Any

from visionpipe import stages
from visionpipe.tasks import get_task_class


def ingest_dataset(params: dict[str, Any], task: str) -> dict:
    """Index the dataset ``params['data']`` describes (built-in data when ``root`` is null)."""
    task_cls = get_task_class(task)
    return stages.ingest(task_cls, task_cls.parse_config(params))
