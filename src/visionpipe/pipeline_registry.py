"""Pipelines: one per stage, one per task (that task's nodes across all stages), and all of them.

The stages are listed explicitly rather than found with ``find_pipelines``: since Kedro 1.x
discovery only imports the folders named on the command line, and the task pipelines
(``--pipelines=classification``) are compositions of every stage, not folders of their own.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from visionpipe.pipelines import augmentation, evaluation, ingestion, registration, training, validation
from visionpipe.tasks import TASKS

STAGES = {
    "ingestion": ingestion,
    "validation": validation,
    "augmentation": augmentation,
    "training": training,
    "evaluation": evaluation,
    "registration": registration,
}


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {name: module.create_pipeline() for name, module in STAGES.items()}
    everything = sum(pipelines.values(), Pipeline([]))
    for task in TASKS:
        pipelines[task] = everything.only_nodes_with_tags(task)
    pipelines["__default__"] = everything
    return pipelines
