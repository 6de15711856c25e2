"""Ingestion pipeline."""

from kedro.pipeline import Node, Pipeline

from visionpipe import TASKS
from visionpipe.pipelines import for_task
from visionpipe.pipelines.ingestion.nodes import ingest_dataset


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(for_task(ingest_dataset, t), inputs=f"params:{t}", outputs=f"{t}.dataset_index",
             name=f"{t}.ingest_dataset", tags=[t, "ingestion"])
        for t in TASKS
    ])
