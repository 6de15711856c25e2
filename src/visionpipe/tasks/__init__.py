"""Tasks: each one module behind the same small interface (model, sample, collate, loss, evaluator)."""

from __future__ import annotations

from typing import Any

from visionpipe.tasks.classification import ClassificationTask
from visionpipe.tasks.detection import DetectionTask
from visionpipe.tasks.segmentation import SegmentationTask

TASK_CLASSES = {"classification": ClassificationTask, "detection": DetectionTask, "segmentation": SegmentationTask}


def get_task(spec: dict[str, Any], **kwargs):
    """The task object for a model spec (see visionpipe.tasks.spec.make_spec)."""
    try:
        cls = TASK_CLASSES[spec["task"]]
    except KeyError:
        raise ValueError(f"Unknown task {spec['task']!r}; expected one of {sorted(TASK_CLASSES)}") from None
    return cls(spec, **kwargs)


def transform_normalization(task: str, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Detectors normalise inside the model (torchvision's GeneralizedRCNNTransform), so their input
    transform only scales pixels to [0, 1]; the other tasks normalise in the transform."""
    if task == "detection":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return tuple(mean), tuple(std)
