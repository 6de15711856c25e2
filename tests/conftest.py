"""Shared fixtures (plain helpers are in support.py)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # model.pretrained: auto on a user's data never reaches for the network in tests
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_active_mlflow_experiment_leaks():
    """`mlflow.set_experiment` in one test must not point a later test's fresh store at an experiment id
    it does not have (MLflow keeps it in a module global and in MLFLOW_EXPERIMENT_ID); nor may an in-process
    CLI call's `mlflow.set_tracking_uri` (which also sets MLFLOW_TRACKING_URI) send a later test of the same
    worker to its store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import mlflow
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    if os.environ.get("MLFLOW_TRACKING_URI") != uri:
        mlflow.set_tracking_uri(uri)  # None: unset, the variable too
