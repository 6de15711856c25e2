"""Validation pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe import TASKS
from visionpipe.pipelines import for_task
from visionpipe.pipelines.validation.nodes import apply_validation_policy, check_dataset


def create_pipeline(**kwargs) -> Pipeline:
    nodes = []
    for t in TASKS:
        nodes += [
            Node(for_task(check_dataset, t), inputs=[f"{t}.dataset_index", f"params:{t}"], outputs=f"{t}.validation_report",
                 name=f"{t}.check_dataset", tags=[t, "validation"]),
            Node(for_task(apply_validation_policy, t), inputs=[f"{t}.dataset_index", f"{t}.validation_report", f"params:{t}"],
                 outputs=f"{t}.clean_index", name=f"{t}.apply_validation_policy", tags=[t, "validation"]),
        ]
    return Pipeline(nodes)
