"""Stage pipelines; each builds its nodes for every task, tagged with the task's name."""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Callable


def for_task(func: Callable, task: str) -> Callable:
    """``func`` with ``task`` bound, keeping its name for Kedro and kedro-viz."""
    return update_wrapper(partial(func, task=task), func)
