"""Tasks: one module each, every module one :class:`~visionpipe.tasks.base.Task` subclass.

Task names are the module names, found without importing them (``visionpipe --help`` stays fast);
a module is imported the first time its task is asked for. A node or command resolves its task name here once
(:func:`get_task_class`) and hands the class down: the layers below (``data``, ``config``, ``engine``) take it as
an argument and never import this package.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path
from typing import Any

_NOT_TASKS = {"base"}


def task_names() -> tuple[str, ...]:
    """Every task, in a stable order (the default `kedro run` order)."""
    found = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if not m.name.startswith("_") and m.name not in _NOT_TASKS]
    return tuple(sorted(found, key=lambda n: (_ORDER.get(n, len(_ORDER)), n)))


_ORDER = {"classification": 0, "detection": 1, "segmentation": 2}  # the historical order first; new tasks after, by name
TASKS = task_names()  # a folder listing: importing this package imports no task module


@cache
def _task_class(name: str):
    if name not in task_names():
        raise ValueError(f"Unknown task {name!r}; expected one of {list(task_names())}")
    module = importlib.import_module(f"visionpipe.tasks.{name}")  # imported by name: tasks stay lazy (see above)
    base = importlib.import_module("visionpipe.tasks.base")
    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, base.Task) and getattr(v, "name", None) == name]
    if len(classes) != 1:
        raise TypeError(f"visionpipe.tasks.{name} must define exactly one Task subclass with name = {name!r}")
    return classes[0]


def get_task_class(task):
    """The Task subclass for a task name (an unknown name lists the known ones); a Task class is returned as
    it is, so a class resolved once at the node or command passes through every layer above ``tasks``."""
    return task if isinstance(task, type) else _task_class(task)


def parse_task_config(task, params: dict[str, Any]):
    """The task's parameter block validated by its config model (``task``: a name or a Task class)."""
    return get_task_class(task).parse_config(params)


def get_task(spec: dict[str, Any]):
    """The task object for a model spec (``spec.json``)."""
    return get_task_class(spec["task"])(spec)
