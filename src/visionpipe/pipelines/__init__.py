"""Stage pipelines; each builds its nodes for every task under the task's Kedro namespace.

Inside a stage, datasets have plain names (``model``, ``metrics``); the namespace makes them
``classification.model`` and so on, and the task's own parameter block stays ``params:<task>``.
"""

from __future__ import annotations

from functools import partial, update_wrapper
from typing import Callable

from kedro.pipeline import Node, Pipeline

from visionpipe.tasks import TASKS


def for_task(func: Callable, task: str) -> Callable:
    """``func`` with ``task`` bound, keeping its name for Kedro and kedro-viz."""
    return update_wrapper(partial(func, task=task), func)


def per_task(stage: str, build: Callable[[str], list[Node]], tasks=TASKS) -> Pipeline:
    """One namespaced copy of the stage's nodes per task, tagged with the task and the stage."""
    return sum(
        (Pipeline(build(task), namespace=task, parameters={f"params:{task}"}, tags=[task, stage]) for task in tasks),
        Pipeline([]),
    )
