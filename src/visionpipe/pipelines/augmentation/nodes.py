"""Augmentation nodes."""

from __future__ import annotations

from typing import Any

from visionpipe import stages
from visionpipe.tasks import get_task_class


def build_augmentation(params: dict[str, Any], task: str) -> dict:
    """Train and val pipelines in albumentations' serialised form (unknown transforms are errors)."""
    task_cls = get_task_class(task)
    return stages.augmentation(task_cls, task_cls.parse_config(params))
