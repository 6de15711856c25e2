"""`dvc repro` on a fresh copy: runs the stages, does nothing the second time, pushes and pulls data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import dvc_project, task_params

pytestmark = pytest.mark.slow


def sh(repo: Path, *cmd: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", KEDRO_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = dvc_project(tmp_path_factory.mktemp("repo"))
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "fresh clone")
    return root


def test_repro_then_nothing_to_do(repo):
    first = sh(repo, "dvc", "repro", "classification")
    assert "Running stage 'builtin_data@classification'" in first and "Running stage 'classification'" in first
    assert (repo / "data/08_reporting/classification/metrics.json").is_file()
    second = sh(repo, "dvc", "repro", "classification")
    assert "Running stage" not in second
    assert "up to date" in sh(repo, "dvc", "status", "classification")


def test_registered_model_carries_the_dvc_data_version(repo):
    import mlflow

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = lock["stages"]["builtin_data@classification"]["outs"][0]["md5"]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    version = client.get_model_version_by_alias("visionpipe-classification", "champion")
    assert version.tags["data.dvc_md5"] == md5
    assert version.tags["git.commit"] == sh(repo, "git", "rev-parse", "HEAD").strip()


def test_push_and_pull_through_the_default_remote(repo):
    sh(repo, "dvc", "push", "--with-deps", "classification")
    shutil.rmtree(repo / "data/01_raw/builtin/classification")
    shutil.rmtree(repo / "data/06_models/classification/model")
    sh(repo, "dvc", "pull", "--with-deps", "classification")
    assert len(list((repo / "data/01_raw/builtin/classification").rglob("*.png"))) == 36
    assert (repo / "data/06_models/classification/model/model.safetensors").is_file()
    assert "up to date" in sh(repo, "dvc", "status", "classification")


def test_shards_travel_through_a_remote_into_a_fresh_clone(tmp_path):
    """`dvc add` on a shard folder, push to a named remote, clone elsewhere, pull: the same index, byte for byte."""
    from visionpipe import stages
    from visionpipe.data import builtin, shards
    from visionpipe.tasks import get_task_class, parse_task_config

    cfg = parse_task_config("classification", task_params("classification", tmp_path, data={"classes": get_task_class("classification").builtin_classes(6)}))
    source = builtin.ensure_builtin_dataset(tmp_path / "source", get_task_class("classification"), cfg.data.builtin.model_dump(exclude={"path"}))
    origin = tmp_path / "origin"
    origin.mkdir()
    sh(origin, "git", "init", "-q")
    sh(origin, "dvc", "init", "-q")
    stages.shard_dataset("classification", cfg, source, origin / "data" / "shards", shard_size=10)
    sh(origin, "dvc", "add", "-q", "data/shards")
    sh(origin, "dvc", "remote", "add", "-d", "team", str(tmp_path / "remote"))
    sh(origin, "git", "add", "-A")
    sh(origin, "git", "commit", "-qm", "shards")
    sh(origin, "dvc", "push", "-q")
    assert len([p for p in (tmp_path / "remote").rglob("*") if p.is_file()]) == 7  # 5 shards + manifest + the folder listing

    sh(tmp_path, "git", "clone", "-q", str(origin), "clone")
    clone = tmp_path / "clone"
    assert not (clone / "data" / "shards").exists()
    sh(clone, "dvc", "pull", "-q")
    pulled, written = shards.read_shards(clone / "data" / "shards", "classification"), shards.read_shards(origin / "data" / "shards", "classification")
    assert pulled["train"] == written["train"] and pulled["val"] == written["val"]
    for name in ("manifest.json", "train-000000.tar", "val-000001.tar"):
        assert (clone / "data" / "shards" / name).read_bytes() == (origin / "data" / "shards" / name).read_bytes()
