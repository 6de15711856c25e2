"""Training nodes."""

from __future__ import annotations

from typing import Any

import pandas as pd

from visionpipe import stages
from visionpipe.config import parse_task_config


def train_model(index: dict, augmentation: dict, params: dict[str, Any], task: str) -> tuple[dict, pd.DataFrame]:
    """Train; return the best model bundle and the per-epoch history."""
    bundle, history = stages.train(task, index, augmentation, parse_task_config(task, params))
    return bundle, pd.DataFrame(history)
