"""End to end on tiny data: queued `dvc exp run`s log to the project's store, a sweep of nested
runs, `visionpipe reproduce` of registered versions, and a corrupt DVC cache object caught."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import dvc_project, make_project, tiny_classification

pytestmark = pytest.mark.slow

PARAMS = "conf/base/parameters_classification.yml"


def sh(repo: Path, *cmd: str, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", KEDRO_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = dvc_project(tmp_path_factory.mktemp("exprepo"))
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", "fresh clone")
    return root


def client(repo: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def test_queued_experiments_log_to_the_project_store(repo):
    for lr in ("0.01", "0.02"):
        sh(repo, "dvc", "exp", "run", "--queue", "-S", f"{PARAMS}:classification.train.lr={lr}", "classification")
    sh(repo, "dvc", "queue", "start", "-j", "1")
    deadline = time.time() + 800
    while time.time() < deadline:
        status = sh(repo, "dvc", "queue", "status")
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    sh(repo, "dvc", "queue", "stop", check=False)
    assert status.count("Success") == 2, status
    names = set(sh(repo, "dvc", "exp", "ls", "--name-only").split())
    assert len(names) == 2
    head = sh(repo, "git", "rev-parse", "HEAD").strip()
    runs = client(repo).search_runs([client(repo).get_experiment_by_name("visionpipe-classification").experiment_id],
                                    "tags.`dvc.exp_name` != ''")
    assert {r.data.tags["dvc.exp_name"] for r in runs} == names  # `dvc exp show` and MLflow list the same experiments
    assert {r.data.tags["dvc.exp_baseline_rev"] for r in runs} == {head}
    assert {r.data.params["classification.train.lr"] for r in runs} == {"0.01", "0.02"}
    assert all(r.info.artifact_uri.startswith((repo / "mlartifacts").as_uri()) for r in runs)
    # each experiment commit carries its metrics: `dvc exp show` reads them (no "!" cells, no FileNotFoundError)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "COLUMNS": "160"}
    shown = json.loads(subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, env=env, capture_output=True, text=True,
                                      check=True).stdout)
    experiments = [e for row in shown for e in (row.get("experiments") or [])]
    assert len(experiments) == 2
    for exp in experiments:
        metrics = exp["revs"][0]["data"]["metrics"]["data/08_reporting/classification/metrics.json"]
        assert "error" not in metrics and 0.0 <= metrics["data"]["top1"] <= 1.0
    table = subprocess.run(["visionpipe", "exps"], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout
    # the short view: the headline metric and the changed parameter, in 160 columns
    assert "top1" in table and "classification.train.lr" in table and "val_loss" not in table
    assert max(len(line) for line in table.splitlines()) <= 160
    assert not list((repo / ".dvc").rglob("mlflow.db"))  # nothing logged inside DVC's temporary copies


def test_reproduce_a_version_trained_in_a_dvc_experiment(repo):
    from visionpipe.experiments.reproduce import reproduce_version

    versions = client(repo).search_model_versions("name='visionpipe-classification'")
    exp_version = next(v for v in versions if client(repo).get_run(v.run_id).data.tags.get("dvc.exp_name"))
    result = reproduce_version(f"models:/visionpipe-classification/{exp_version.version}", project=repo)
    assert result.matches and "top1" in result.compared and result.tolerance == 0.0, result.table()
    assert any("DVC experiment" in note for note in result.notes)
    assert result.recorded["top1"] == result.reproduced["top1"]


def test_reproduce_a_version_from_dvc_repro(repo):
    sh(repo, "dvc", "repro", "classification")
    version = max(client(repo).search_model_versions("name='visionpipe-classification'"), key=lambda v: int(v.version))
    assert version.tags["git.dirty"] == "False"
    out = sh(repo, "visionpipe", "reproduce", f"models:/visionpipe-classification/{version.version}")
    assert "reproduced: metrics equal within tolerance" in out
    top1 = [line.split() for line in out.splitlines() if line.startswith("top1 ")][0]
    assert float(top1[1]) == float(top1[2])
    assert "visionpipe-reproduce" not in sh(repo, "git", "worktree", "list")  # the temporary worktree is gone


def test_corrupt_cache_object_is_caught_before_registering_and_reproducing(repo):
    from visionpipe.errors import DataError
    from visionpipe.experiments.integrity import verify_task_data

    data = repo / "data/01_raw/builtin/classification"
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    md5 = lock["stages"]["builtin_data@classification"]["outs"][0]["md5"]
    manifest = json.loads((repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).read_text())
    victim = next(entry for entry in manifest if entry["relpath"].endswith(".png"))
    obj = repo / ".dvc/cache/files/md5" / victim["md5"][:2] / victim["md5"][2:]
    # bit rot: one flipped byte, size and modification time unchanged, so DVC's metadata check passes
    stat, good = obj.stat(), obj.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    obj.chmod(0o644)
    with obj.open("r+b") as f:
        f.write(bad)
    obj.chmod(stat.st_mode & 0o777)
    os.utime(obj, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    shutil.rmtree(data)
    sh(repo, "dvc", "checkout", "data/01_raw/builtin/classification")
    assert (data / victim["relpath"]).read_bytes() == bytes(bad)  # DVC restored the corrupt bytes...
    assert "up to date" in sh(repo, "dvc", "status", "builtin_data@classification")  # ...and trusts them (dvc#9641)
    with pytest.raises(DataError) as err:
        verify_task_data("data/01_raw/builtin/classification", repo)
    assert victim["relpath"] in str(err.value) and "dvc pull" in str(err.value)
    # the hook checks right after ingestion (and again before registering): `kedro run` stops before training
    out = sh(repo, "kedro", "run", "--pipelines=classification", check=False)
    assert victim["relpath"] in out and "DataError" in out and "Training classification" not in out
    version = max(client(repo).search_model_versions("name='visionpipe-classification'"), key=lambda v: int(v.version))
    out = sh(repo, "visionpipe", "reproduce", f"models:/visionpipe-classification/{version.version}", check=False)
    assert victim["relpath"] in out and "dvc pull" in out


def test_sweep_of_nested_runs_gates_only_the_best(tmp_path):
    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    tiny_classification(project)
    out = sh(project, "visionpipe", "sweep", "--task", "classification", "--name", "s1",
             "--grid", "model.name=[resnet10t,no_such_model]")
    assert "no_such_model" in out
    c = client(project)
    parent = c.search_runs([c.get_experiment_by_name("visionpipe-classification").experiment_id], "tags.`visionpipe.sweep` = 's1' "
                           "and attributes.run_name = 's1'")[0]
    children = c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    status = {ch.data.tags["sweep.model.name"]: ch.info.status for ch in children}
    assert status == {"resnet10t": "FINISHED", "no_such_model": "FAILED"}  # the failed point did not stop the other
    good = next(ch for ch in children if ch.info.status == "FINISHED")
    assert "top1" in good.data.metrics
    artifacts = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"comparison.csv", "comparison.png"} <= artifacts
    comparison = (project / "data/sweeps/classification/s1/comparison.csv").read_text()
    assert "finished" in comparison and "failed" in comparison and "unknown timm model" in comparison
    versions = c.search_model_versions("name='visionpipe-classification'")
    assert [v.run_id for v in versions] == [good.info.run_id]  # only the best point went through the gate
    assert parent.data.tags["sweep.best_run_id"] == good.info.run_id and parent.data.tags["sweep.study"] == "s1"
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.failed"] == "1"
    # each trial wrote its own outputs
    trial = good.data.tags["sweep.trial"]
    assert (project / f"data/sweeps/classification/s1/trial-{int(trial):03d}/data/06_models/classification/model").is_dir()
    assert (project / "data/sweeps/optuna.db").is_file()  # the study: the project's own SQLite file
    assert not (project / "data/06_models/classification/model").exists()
