"""Validation pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe.pipelines import for_task, per_task
from visionpipe.pipelines.validation.nodes import apply_validation_policy, check_dataset, report_data_quality


def create_pipeline(**kwargs) -> Pipeline:
    return per_task("validation", lambda t: [
        Node(for_task(check_dataset, t), inputs=["dataset_index", f"params:{t}"], outputs="validation_report", name="check_dataset"),
        Node(for_task(apply_validation_policy, t), inputs=["dataset_index", "validation_report", f"params:{t}"],
             outputs="clean_index", name="apply_validation_policy"),
        Node(report_data_quality, inputs="validation_report", outputs=["data_quality", "plot_data_quality"], name="report_data_quality"),
    ])
