"""A team's setup on loopback: our own PostgreSQL (the machine's server binaries) under `mlflow server
--serve-artifacts`, as `make tracking-server` starts it; two `kedro run`s at once log and register through it,
and two sweep workers share one Optuna study in it, one of them killed mid-trial."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support import make_project, tiny_classification, tiny_params
from visionpipe.experiments.server import missing_programs, start, stop

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(missing_programs()), reason=f"PostgreSQL server programs absent: {missing_programs()}")]


@pytest.fixture(scope="module")
def team_server():
    # under /tmp rather than pytest's 0700 folder: as root, PostgreSQL runs as its own user, who must enter it
    base = Path(tempfile.mkdtemp(prefix="visionpipe-team-"))
    base.chmod(0o711)
    root = base / "server"
    try:
        first = start(root, workers=1)
        assert (root / "password").stat().st_mode & 0o777 == 0o600
        again = start(root, workers=1)  # a second start finds both servers running and reuses the data
        assert (again.tracking_uri, again.sweep_storage) == (first.tracking_uri, first.sweep_storage)
        yield again
    finally:
        stop(root)
        shutil.rmtree(base, ignore_errors=True)


def _env(server) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "VISIONPIPE_SWEEP"))}
    env.update(MLFLOW_TRACKING_URI=server.tracking_uri, KEDRO_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    return env


def _wait(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out[-4000:]
    return out


def test_two_kedro_runs_at_once_log_and_register_through_the_server(tmp_path, team_server):
    import mlflow

    project = make_project(tmp_path)
    procs = {}
    for task in ("classification", "segmentation"):
        log = tmp_path / f"{task}.log"
        procs[task] = (subprocess.Popen(["kedro", "run", f"--pipelines={task}", f"--params={tiny_params((task,))}"], cwd=project,
                                        env=_env(team_server), stdout=log.open("w"), stderr=subprocess.STDOUT), log)
    for proc, log in procs.values():
        _wait(proc, log)
    assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()  # nothing went to a local store

    client = mlflow.MlflowClient(tracking_uri=team_server.tracking_uri)
    runs = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
            if "sweep.study" not in r.data.tags]
    assert sorted(r.data.tags["visionpipe.task"] for r in runs) == ["classification", "segmentation"]
    for run in runs:
        task = run.data.tags["visionpipe.task"]
        assert run.info.status == "FINISHED" and run.info.artifact_uri.startswith("mlflow-artifacts:")
        version = client.get_model_version_by_alias(f"visionpipe-{task}", "champion")
        assert version.run_id == run.info.run_id and int(version.version) == 1
    # the models went through the server into its artifacts folder
    assert len([f for f in (team_server.root / "artifacts").rglob("MLmodel")]) >= 2


def test_two_workers_share_one_study_and_a_killed_one_leaves_a_failed_trial(tmp_path, team_server):
    import mlflow
    import optuna

    project = make_project(tmp_path)
    tiny_classification(project)
    cmd = ["visionpipe", "sweep", "--task", "classification", "--name", "team", "--trials", "4", "--heartbeat", "2",
           "--search", "train.lr=log[1e-4,1e-1]", "--storage", team_server.sweep_storage]
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    a, b = (subprocess.Popen(cmd, cwd=project, env=_env(team_server), stdout=log.open("w"), stderr=subprocess.STDOUT,
                             start_new_session=True) for log in logs)
    storage = optuna.storages.RDBStorage(team_server.sweep_storage)
    deadline = time.monotonic() + 600
    while True:  # kill worker b in its second trial: it has finished one and runs another
        assert time.monotonic() < deadline and b.poll() is None, logs[1].read_text()[-3000:]
        try:
            trials = optuna.load_study(study_name="team", storage=storage).get_trials(deepcopy=False)
        except KeyError:  # the study does not exist yet
            trials = []
        mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{b.pid}")]
        if any(t.state.name == "COMPLETE" for t in mine) and any(t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs
                                                                 for t in mine):
            break
        time.sleep(0.5)
    killed = next(t for t in mine if t.state.name == "RUNNING")
    os.killpg(b.pid, signal.SIGKILL)
    b.wait()
    out = _wait(a, logs[0])

    trials = optuna.load_study(study_name="team", storage=storage).get_trials(deepcopy=False)
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE"] * 4 + ["FAIL"], states
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.number == killed.number
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE" and retried[0].params == killed.params

    client = mlflow.MlflowClient(tracking_uri=team_server.tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "tags.`sweep.study` = 'team' and attributes.run_name = 'team'")
    children = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 5 and len({c.data.tags["sweep.worker"] for c in children}) == 2  # both workers ran trials
    by_run = {c.info.run_id: c for c in children}
    assert by_run[failed.user_attrs["mlflow_run_id"]].info.status == "FAILED"
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert len(finished) == 4 and all("top1" in c.data.metrics for c in finished)
    best = by_run[parent.data.tags["sweep.best_run_id"]]
    assert best.data.metrics["top1"] == max(c.data.metrics["top1"] for c in finished)
    assert f"best: trial {best.data.tags['sweep.trial']}" in out
    assert {"comparison.csv", "comparison.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    versions = client.search_model_versions("name='visionpipe-classification'")
    assert [v.run_id for v in versions if v.run_id in by_run] == [best.info.run_id]  # only the best trial was registered
    assert parent.info.status == "FINISHED"
