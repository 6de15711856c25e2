"""Validation nodes: the report is a node output of its own, so it is saved even when strict mode fails."""

from __future__ import annotations

from typing import Any

from visionpipe import stages
from visionpipe.config import parse_task_config


def check_dataset(index: dict, params: dict[str, Any], task: str) -> dict:
    """Check every image, mask and annotation; return the report of findings."""
    return stages.validate(index, parse_task_config(task, params))


def apply_validation_policy(index: dict, report: dict, params: dict[str, Any], task: str) -> dict:
    """``strict``: fail on any finding, naming the files; ``skip``: drop them."""
    return stages.enforce_policy(index, report, parse_task_config(task, params))


def report_data_quality(report: dict):
    """The readable data-quality report (markdown) and its plot, from the validation report."""
    from visionpipe.data import quality

    return quality.markdown(report), quality.plot(report)
