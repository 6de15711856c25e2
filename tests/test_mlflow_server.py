"""A real MLflow tracking server (SQLite backend, served artifacts): a `kedro run` logs and registers through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support import TINY, free_port, make_project, wait_for_http
from support import tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with its own SQLite database and artifact folder; stopped afterwards."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", (store / "artifacts").as_uri()]
    log = open(store / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, store / "server.log", timeout=120, interval=0.5)
        yield url, store
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: uvicorn and its worker
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_a_run_logs_registers_and_serves_through_a_tracking_server(tmp_path, server):
    import mlflow

    from visionpipe.serving.predictor import Predictor

    url, store = server
    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(MLFLOW_TRACKING_URI=url, KEDRO_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "kedro"), "run", "--pipelines=classification",
                           f"--params={tiny_params(('classification',))}"], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()  # nothing went to the local store

    client = mlflow.MlflowClient(tracking_uri=url)
    runs = client.search_runs([client.get_experiment_by_name("visionpipe-classification").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["visionpipe.task"] == "classification" and runs[0].info.status == "FINISHED"
    run = runs[0]
    metrics = json.loads((project / "data/08_reporting/classification/all_metrics.json").read_text())
    assert run.data.metrics["top1"] == pytest.approx(metrics["top1"])
    assert run.data.params["classification.train.epochs"] == "1"
    version = client.get_model_version_by_alias("visionpipe-classification", "champion")
    assert version.run_id == run.info.run_id and int(version.version) == 1
    # the artifacts went through the server into its destination folder
    served = {p.name for p in (store / "artifacts").rglob("*") if p.is_file()}
    assert "MLmodel" in served and "model.safetensors" in served and "validation.json" in served
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")

    images = sorted((project / "data/01_raw/builtin/classification/val").rglob("*.png"))[:4]
    assert len(images) == 4 and TINY["classification"]["data"]["builtin"]["val_images"] >= 4
    script = ("import json, sys, mlflow, pandas as pd\n"
              "m = mlflow.pyfunc.load_model('models:/visionpipe-classification@champion', model_config={'allow_file_paths': True})\n"
              "out = m.predict(pd.DataFrame({'image': sys.argv[1:]}))\n"
              "print(json.dumps(out[['label', 'score']].to_dict(orient='records')))\n")
    proc = subprocess.run([sys.executable, "-c", script, *map(str, images)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    local = Predictor.from_folder(project / "data/06_models/classification/model").predict(images)
    assert [r["label"] for r in remote] == [r["label"] for r in local]
    assert [r["score"] for r in remote] == pytest.approx([r["score"] for r in local], abs=1e-4)  # ONNX Runtime vs torch
