"""Registration pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe.pipelines import for_task, per_task
from visionpipe.pipelines.registration.nodes import register_model


def create_pipeline(**kwargs) -> Pipeline:
    return per_task("registration", lambda t: [
        Node(for_task(register_model, t), inputs=["model", "metrics", "clean_index", f"params:{t}"], outputs="registration",
             name="register_model"),
    ])
