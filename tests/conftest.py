"""Shared fixtures: tiny parameter blocks built from the real conf/base files, and image helpers."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PROJECT = Path(__file__).resolve().parents[1]

TINY = {
    "classification": {"data": {"builtin": {"image_size": 32, "train_images": 24, "val_images": 12, "num_classes": 6}},
                       "train": {"epochs": 1, "batch_size": 8, "image_size": 32}},
    "detection": {"data": {"builtin": {"image_size": 64, "train_images": 12, "val_images": 6, "num_classes": 3}},
                  "train": {"epochs": 1, "batch_size": 4, "image_size": 64}},
    "segmentation": {"data": {"builtin": {"image_size": 32, "train_images": 12, "val_images": 6, "num_classes": 3}},
                     "train": {"epochs": 1, "batch_size": 4, "image_size": 32}},
    "instance_segmentation": {"data": {"builtin": {"image_size": 64, "train_images": 8, "val_images": 4, "num_classes": 3}},
                              "train": {"epochs": 1, "batch_size": 4, "image_size": 64}},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def task_params(task: str, tmp: Path | None = None, **override) -> dict:
    """The task's block from conf/base, shrunk for tests (CPU, no workers, no progress bar)."""
    block = yaml.safe_load((PROJECT / "conf" / "base" / f"parameters_{task}.yml").read_text())[task]
    block = merge(block, TINY[task])
    block = merge(block, {"data": {"num_workers": 0}, "train": {"device": "cpu", "progress_bar": False}})
    if tmp is not None:
        block = merge(block, {"data": {"builtin": {"path": str(tmp / "builtin")}},
                              "train": {"checkpoint_dir": str(tmp / "checkpoints" / task)}})
    return merge(block, override)


def make_project(root: Path) -> Path:
    """A runnable copy of the project: configuration and source (Kedro wants a src folder inside)."""
    import shutil

    shutil.copy(PROJECT / "pyproject.toml", root)
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("credentials*", "*.local.yml"))
    shutil.copytree(PROJECT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data").mkdir()
    return root


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def save_image(path: Path, size=(16, 16), mode="RGB", value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16)).save(path)
    else:
        Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(path)
    return path


@pytest.fixture(autouse=True)
def _no_active_mlflow_experiment_leaks():
    """`mlflow.set_experiment` in one test must not point a later test's fresh store at an experiment id
    it does not have (MLflow keeps it in a module global and in MLFLOW_EXPERIMENT_ID)."""
    yield
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
