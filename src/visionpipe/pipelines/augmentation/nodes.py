"""Augmentation nodes."""

from __future__ import annotations

from typing import Any

from visionpipe import stages
from visionpipe.config import parse_task_config


def build_augmentation(params: dict[str, Any], task: str) -> dict:
    """Train and val pipelines in albumentations' serialised form (unknown transforms are errors)."""
    return stages.augmentation(task, parse_task_config(task, params))
