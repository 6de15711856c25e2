"""Ingestion nodes."""

from __future__ import annotations

from typing import Any

from visionpipe import stages
from visionpipe.config import parse_task_config


def ingest_dataset(params: dict[str, Any], task: str) -> dict:
    """Index the dataset ``params['data']`` describes (built-in data when ``root`` is null)."""
    return stages.ingest(task, parse_task_config(task, params))
