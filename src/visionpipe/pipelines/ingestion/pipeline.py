"""Ingestion pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe.pipelines import for_task, per_task
from visionpipe.pipelines.ingestion.nodes import ingest_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return per_task("ingestion", lambda t: [
        Node(for_task(ingest_dataset, t), inputs=f"params:{t}", outputs="dataset_index", name="ingest_dataset"),
    ])
