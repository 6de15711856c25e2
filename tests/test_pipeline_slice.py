"""A slice of the real pipelines run with SequentialRunner on an in-memory DataCatalog."""

from __future__ import annotations

import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from support import task_params
from visionpipe.io import AtomicJSONDataset
from visionpipe.pipeline_registry import register_pipelines


def test_classification_ingest_to_evaluation_in_memory(in_tmp):
    pipeline = register_pipelines()["classification"].to_nodes("classification.evaluate")
    assert "classification.register_model" not in {n.name for n in pipeline.nodes}
    catalog = DataCatalog()
    catalog["params:classification"] = task_params("classification", in_tmp)
    catalog["classification.validation_report"] = AtomicJSONDataset(str(in_tmp / "validation.json"))
    SequentialRunner().run(pipeline, catalog)
    metrics = catalog.load("classification.metrics")
    predictions = catalog.load("classification.predictions")
    assert 0.0 <= metrics["top1"] <= metrics["top5"] <= 1.0
    assert len(predictions) == 12 == catalog.load("classification.evaluation_details")["val_images"]
    assert "val_images" not in metrics and "evaluation" not in metrics  # metrics.json: metrics only
    assert list(predictions.columns[:7]) == ["image", "target", "top1", "top2", "top3", "top4", "top5"]
    assert (predictions["target"] == predictions["top1"]).mean() == pytest.approx(metrics["top1"])
    report = catalog.load("classification.validation_report")
    assert report["findings"] == [] and report["checked"] == {"train": 24, "val": 12}


def test_stage_and_task_pipelines_are_registered():
    from visionpipe.tasks import TASKS

    pipelines = register_pipelines()
    assert set(TASKS) >= {"classification", "detection", "segmentation", "instance_segmentation"}
    for name in ("ingestion", "validation", "augmentation", "training", "evaluation", "registration", *TASKS, "__default__"):
        assert name in pipelines
    for task in TASKS:
        stages = {tag for n in pipelines[task].nodes for tag in n.tags} - {task}
        assert stages == {"ingestion", "validation", "augmentation", "training", "evaluation", "registration"}
    assert len(pipelines["__default__"].nodes) == sum(len(pipelines[t].nodes) for t in TASKS)
