"""Training pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe.pipelines import for_task, per_task
from visionpipe.pipelines.training.nodes import train_model


def create_pipeline(**kwargs) -> Pipeline:
    return per_task("training", lambda t: [
        Node(for_task(train_model, t), inputs=["clean_index", "augmentation", f"params:{t}"], outputs=["model", "training_history", "training_timings"],
             name="train_model"),
    ])
