"""Registration pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe import TASKS
from visionpipe.pipelines import for_task
from visionpipe.pipelines.registration.nodes import register_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(for_task(register_model, t), inputs=[f"{t}.model", f"{t}.metrics", f"{t}.clean_index", f"params:{t}"],
             outputs=f"{t}.registration", name=f"{t}.register_model", tags=[t, "registration"])
        for t in TASKS
    ])
