"""Augmentation pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe.pipelines import for_task, per_task
from visionpipe.pipelines.augmentation.nodes import build_augmentation


def create_pipeline(**kwargs) -> Pipeline:
    return per_task("augmentation", lambda t: [
        Node(for_task(build_augmentation, t), inputs=f"params:{t}", outputs="augmentation", name="build_augmentation"),
    ])
