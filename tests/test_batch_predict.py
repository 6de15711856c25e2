"""`visionpipe predict` streams batch by batch, lists bad files, and never creates an MLflow store."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest

from support import save_image
from visionpipe.serving.batch import find_images, predict_folder
from visionpipe.cli import resolve_store
from visionpipe.errors import DataError


class FakePredictor:
    """Classifies by mean brightness; records batch sizes so streaming can be checked."""

    spec = {"task": "classification"}

    def __init__(self):
        self.batches = []

    def predict(self, images):
        self.batches.append(len(images))
        return [{"label": "bright" if np.mean(a) > 100 else "dark", "score": 1.0} for a in images]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "imgs"
    for i in range(5):
        save_image(root / f"a{i}.png", value=200 if i % 2 else 10)
    save_image(root / "sub" / "b.png", value=200)
    (root / "broken.png").write_bytes(b"not an image")
    return root


def test_skip_lists_bad_files_and_writes_every_good_one(folder, tmp_path):
    predictor, out = FakePredictor(), tmp_path / "out" / "p.jsonl"
    summary = predict_folder(predictor, find_images(folder), folder, out, batch_size=2, on_error="skip", progress=False)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary.written == 6 and [f["image"] for f in summary.failed] == ["broken.png"]
    by_image = {line["image"]: line for line in lines}
    assert "cannot decode image" in by_image["broken.png"]["error"]
    assert by_image["a1.png"]["label"] == "bright" and by_image["a0.png"]["label"] == "dark" and by_image["sub/b.png"]["label"] == "bright"
    assert max(predictor.batches) <= 2  # never more than one batch decoded at once
    assert not list(out.parent.glob(".*tmp*"))


def test_fail_stops_at_the_bad_file_and_leaves_no_output(folder, tmp_path):
    out = tmp_path / "p.jsonl"
    with pytest.raises(DataError, match="broken.png: cannot be read"):
        predict_folder(FakePredictor(), find_images(folder), folder, out, batch_size=2, on_error="fail", progress=False)
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_outside_a_project_no_store_is_created(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(click.ClickException, match="no visionpipe project at or above .*--tracking-uri"):
        resolve_store(None, cwd=tmp_path)
    with pytest.raises(click.ClickException, match="no MLflow store at .*mlflow.db"):
        resolve_store(f"sqlite:///{tmp_path / 'mlflow.db'}", cwd=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_the_project_store_is_found_from_a_subfolder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[tool.kedro]\n")
    (tmp_path / "data" / "x").mkdir(parents=True)
    with pytest.raises(click.ClickException, match=f"no MLflow store at {tmp_path / 'mlflow.db'}"):
        resolve_store(None, cwd=tmp_path / "data" / "x")
    (tmp_path / "mlflow.db").touch()
    assert resolve_store(None, cwd=tmp_path / "data" / "x") == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_predict_command_outside_a_project_explains_and_creates_nothing(folder, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from visionpipe.cli import cli

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["predict", "--task", "classification", "--images", str(folder), "--output", "p.jsonl"])
    assert result.exit_code == 1 and "no visionpipe project at or above" in result.output and "--tracking-uri" in result.output
    assert "Traceback" not in result.output and list(elsewhere.iterdir()) == []


def test_predict_reads_a_local_model_folder_in_place_without_a_store(folder, tmp_path, monkeypatch):
    """--model-uri DIR: the folder's spec.json is found and loaded there; no project, no MLflow store needed."""
    from click.testing import CliRunner

    import visionpipe.serving.load
    from visionpipe.cli import cli

    model = tmp_path / "downloaded" / "artifacts" / "bundle"
    model.mkdir(parents=True)
    (model / "spec.json").write_text("{}")
    loaded = []

    def fake_load(bundle_dir, config):
        loaded.append((bundle_dir, config))
        predictor = FakePredictor()
        predictor.engine = "fake"
        return predictor

    monkeypatch.setattr(visionpipe.serving.load, "load_predictor", fake_load)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(cli, ["predict", "--task", "classification", "--images", str(folder), "--output", "p.jsonl",
                                      "--model-uri", str(tmp_path / "downloaded"), "--engine", "onnx", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert loaded == [(model, {"engine": "onnx"})]
    rows = {r["image"]: r for r in map(json.loads, (elsewhere / "p.jsonl").read_text().splitlines())}
    assert rows["a1.png"]["label"] == "bright" and rows["a0.png"]["label"] == "dark" and "error" in rows["broken.png"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["p.jsonl"]  # no mlflow.db, no mlruns

    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["predict", "--task", "classification", "--images", str(folder), "--output", "q.jsonl",
                                      "--model-uri", str(tmp_path / "empty")])
    assert result.exit_code == 1 and "no spec.json inside" in result.output and "Traceback" not in result.output


def test_predicting_from_a_model_folder_imports_neither_mlflow_nor_pandas(tmp_path):
    """What `visionpipe predict --model-uri DIR` imports to load and run a model (cli, serving.batch, serving.load):
    MLflow (its tracking store) and pandas cost seconds of start-up, and only a models:/ URI needs MLflow."""
    import os
    import subprocess
    import sys

    code = ("import sys, visionpipe.cli, visionpipe.serving.batch, visionpipe.serving.load; "
            "print(sorted(m for m in ('mlflow', 'pandas') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
