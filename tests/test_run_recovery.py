"""Whole `kedro run`s (slow): concurrent runs on a fresh store, a failed run after a good one, a kill -9
during registration, and a killed training resumed into the same MLflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support import make_project
from support import tiny_params

pytestmark = pytest.mark.slow
TASK = "classification"


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(KEDRO_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", VISIONPIPE_SYSTEM_METRICS="false")
    return env


def _kedro_cmd(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "kedro"), *args]


def _run(project: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(_kedro_cmd(*args), cwd=project, env=_env(), capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


# Runs `kedro run` in-process after a patch that SIGKILLs the process at a chosen point.
DRIVER = textwrap.dedent('''
    import os, signal, sys
    import visionpipe.tracking.registry as registry
    import visionpipe.tracking.callbacks as callbacks
    where = sys.argv.pop(1)
    if where == "after-alias":
        registry.is_better = lambda *a, **k: True  # promote, so the kill lands after the alias moved
        original = registry.MlflowClient.set_registered_model_alias
        def killed(self, *args, **kwargs):
            original(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        registry.MlflowClient.set_registered_model_alias = killed
    elif where.startswith("epoch-"):
        last = int(where.removeprefix("epoch-"))
        original = callbacks.MlflowEpochLogger.on_epoch_end
        def killed(self, epoch, metrics):
            original(self, epoch, metrics)
            if epoch == last:  # last.pt holds this epoch; async metric logging may be lost with the process
                os.kill(os.getpid(), signal.SIGKILL)
        callbacks.MlflowEpochLogger.on_epoch_end = killed
    from kedro.framework.cli import main
    sys.argv = ["kedro", *sys.argv[1:]]
    main()
''')


def _killed_run(project: Path, where: str, *args: str) -> None:
    (project / "driver.py").write_text(DRIVER)
    proc = subprocess.run([sys.executable, str(project / "driver.py"), where, *args], cwd=project, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == -9, proc.stdout[-3000:] + proc.stderr[-3000:]


def _client(project: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def _manifest(project: Path, task: str = TASK) -> dict:
    return json.loads((project / f"data/08_reporting/{task}/run.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh copy of the project with no mlflow.db; the first test starts two runs on it together."""
    return make_project(tmp_path_factory.mktemp("recovery"))


def test_two_runs_started_together_on_a_fresh_store_both_succeed(project):
    assert not (project / "mlflow.db").exists()
    tasks = ("classification", "segmentation")
    procs = [subprocess.Popen(_kedro_cmd("run", f"--pipelines={t}", f"--params={tiny_params((t,))}"), cwd=project, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for t in tasks]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for task, proc, out in zip(tasks, procs, outputs):
        assert proc.returncode == 0, out[-4000:]
        manifest = _manifest(project, task)
        assert manifest["status"] == "finished"
        run = _client(project).get_run(manifest["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["visionpipe.task"] == task
    assert str(_client(project).get_model_version_by_alias("visionpipe-classification", "champion").version) == "1"


def test_a_failed_run_after_a_good_one_leaves_nothing_stale_looking_current(project, tmp_path):
    good = _manifest(project)
    bad_root = tmp_path / "pets"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (bad_root / split / cls).mkdir(parents=True)
            (bad_root / split / cls / "broken.png").write_bytes(b"not a png")
    proc = _run(project, "run", f"--pipelines={TASK}", f"--params={tiny_params((TASK,))},{TASK}.data.root={bad_root}", ok=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    manifest = _manifest(project)
    assert manifest["status"] == "failed" and "data problem" in manifest["error"]
    assert manifest["kedro_run_id"] != good["kedro_run_id"]
    reporting = project / f"data/08_reporting/{TASK}"
    for stale in ("metrics.json", "registration.json", "history.csv"):
        assert not (reporting / stale).exists(), stale
    assert not (project / f"data/06_models/{TASK}/model").exists()
    previous = project / manifest["previous_outputs"]
    assert json.loads((previous / "run.json").read_text())["status"] == "finished"  # marked as the earlier run's
    assert json.loads((previous / f"data/08_reporting/{TASK}/metrics.json").read_text())["top1"] >= 0
    assert json.loads((reporting / "validation.json").read_text())["findings"]  # this run's own report is current


def test_kill_during_registration_then_a_clean_run(project):
    client = _client(project)
    name = f"visionpipe-{TASK}"
    champion_before = client.get_model_version_by_alias(name, "champion").version
    _killed_run(project, "after-alias", "run", f"--pipelines={TASK}", f"--params={tiny_params((TASK,))}")
    half = max(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    assert half.tags["visionpipe.registration"] == "pending"
    assert client.get_model_version_by_alias(name, "champion").version == half.version  # killed right after the move
    killed_run = half.run_id
    assert _manifest(project)["status"] == "running"  # the killed process never wrote its end

    _run(project, "run", f"--pipelines={TASK}", f"--params={tiny_params((TASK,))}")
    assert client.get_run(killed_run).info.status == "KILLED"
    repaired = client.get_model_version(name, half.version)
    assert repaired.tags["visionpipe.incomplete"] == "true" and repaired.tags["visionpipe.registration"] == "incomplete"
    holder = client.get_model_version_by_alias(name, "champion")
    assert holder.version != half.version and holder.tags["visionpipe.registration"] == "complete"
    decision = json.loads((project / f"data/08_reporting/{TASK}/registration.json").read_text())
    assert decision["champion_version"] == int(champion_before)  # the gate compared with the real champion
    assert decision["reason"].startswith("same evaluation data") and decision["new_fingerprint"] == decision["champion_fingerprint"]
    assert _manifest(project)["status"] == "finished"
    # what the MLflow pages show: descriptions, tags, a logged model named for what it is
    import mlflow

    newest = client.get_model_version(name, decision["version"])
    assert "champion" in client.get_registered_model(name).description
    assert newest.description.startswith("classification-resnet10t_nano trained on") and "Decision:" in newest.description
    assert newest.tags["visionpipe.gate.reason"] == decision["reason"] and newest.tags["visionpipe.registration"] == "complete"
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        assert mlflow.get_logged_model(decision["model_uri"].removeprefix("models:/")).name == "classification-resnet10t_nano"
    finally:
        mlflow.set_tracking_uri(None)


def test_resume_continues_the_same_mlflow_run(project):
    # the natural flow after a crash: the first run had resume=false, the restart sets it (and other run-control
    # keys such as log_every_n_steps); none of them is a changed parameter
    params = f"{tiny_params((TASK,))},{TASK}.train.epochs=3"
    ckpt = project / f"data/06_models/{TASK}/checkpoints/last.pt"
    ckpt.unlink(missing_ok=True)
    _killed_run(project, "epoch-1", "run", f"--pipelines={TASK}", f"--params={params},{TASK}.train.resume=false")
    killed = _manifest(project)["mlflow_run_id"]
    assert killed

    proc = _run(project, "run", f"--pipelines={TASK}",
                f"--params={params},{TASK}.train.resume=true,{TASK}.train.log_every_n_steps=7")
    assert "new MLflow run" not in proc.stdout + proc.stderr
    manifest = _manifest(project)
    assert manifest["mlflow_run_id"] == killed and manifest["status"] == "finished"
    client = _client(project)
    run = client.get_run(killed)
    assert run.info.status == "FINISHED"
    assert f"{TASK}.train.resume" not in run.data.params and run.data.tags[f"{TASK}.train.resume"] == "True"
    assert run.data.params[f"{TASK}.train.epochs"] == "3"
    steps = sorted(m.step for m in client.get_metric_history(killed, "train/loss"))
    assert steps == [1, 2, 3]  # from the first epoch (1-based, as the console and history.csv count), no gap, no repeat
    import pandas as pd

    assert pd.read_csv(project / f"data/08_reporting/{TASK}/history.csv")["epoch"].tolist() == [1, 2, 3]
