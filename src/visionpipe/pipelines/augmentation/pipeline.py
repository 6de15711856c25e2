"""Augmentation pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe import TASKS
from visionpipe.pipelines import for_task
from visionpipe.pipelines.augmentation.nodes import build_augmentation


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(for_task(build_augmentation, t), inputs=f"params:{t}", outputs=f"{t}.augmentation",
             name=f"{t}.build_augmentation", tags=[t, "augmentation"])
        for t in TASKS
    ])
