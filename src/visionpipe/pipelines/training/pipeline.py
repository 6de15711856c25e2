"""Training pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe import TASKS
from visionpipe.pipelines import for_task
from visionpipe.pipelines.training.nodes import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(for_task(train_model, t), inputs=[f"{t}.clean_index", f"{t}.augmentation", f"params:{t}"],
             outputs=[f"{t}.model", f"{t}.training_history"], name=f"{t}.train_model", tags=[t, "training"])
        for t in TASKS
    ])
