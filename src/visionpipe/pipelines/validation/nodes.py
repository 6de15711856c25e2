"""Validation nodes: the report is a node output of its own, so it is saved even when strict mode fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from visionpipe import stages
from visionpipe.tasks import get_task_class
from visionpipe.data import quality
from visionpipe.project import find_project_root


def signature_cache_path(task: str) -> Path:
    """Where a run keeps the duplicate-search signatures of the task's image files for the next run (beside the
    dataset index, in the project a ``kedro run`` started in or below; no DVC out, so ``dvc repro`` keeps it):
    unchanged files are not decoded again."""
    return (find_project_root() or Path.cwd()) / "data" / "02_intermediate" / task / "image_signatures.npz"


def check_dataset(index: dict, params: dict[str, Any], task: str) -> dict:
    """Check every image, mask and annotation; return the report of findings."""
    task_cls = get_task_class(task)
    return stages.validate(task_cls, index, task_cls.parse_config(params), cache=signature_cache_path(task))


def apply_validation_policy(index: dict, report: dict, params: dict[str, Any], task: str) -> dict:
    """``strict``: fail on any finding, naming the files; ``skip``: drop them."""
    task_cls = get_task_class(task)
    return stages.enforce_policy(task_cls, index, report, task_cls.parse_config(params))


def report_data_quality(report: dict):
    """The readable data-quality report (markdown) and its plot, from the validation report."""
    return quality.markdown(report), quality.plot(report)
