"""RunStateHook, one behaviour per test on a dummy pipeline and catalog (as kedro-mlflow tests its hooks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from kedro.io import DataCatalog
from kedro.pipeline import Node, Pipeline

from visionpipe import run_record as rs
from visionpipe.engine.checkpoint import save_checkpoint
from visionpipe.hooks.run_state import RunStateHook, output_paths, pipeline_tasks
from visionpipe.io import AtomicJSONDataset


def _identity(x):
    return x


@pytest.fixture
def project(tmp_path):
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text("[tool.kedro]\n")
    return tmp_path


def _pipeline(task="classification"):
    return Pipeline([Node(_identity, "clean_index", "metrics", name="evaluate")], namespace=task)


def _catalog(project, task="classification"):
    return DataCatalog({f"{task}.metrics": AtomicJSONDataset(str(project / f"data/08_reporting/{task}/metrics.json")),
                        f"{task}.clean_index": AtomicJSONDataset(str(project / f"data/03_primary/{task}/clean_index.json"))})


def _hook(project, params=None, mlflow_config=None):
    hook = RunStateHook()
    hook._context = SimpleNamespace(params=params or {}, mlflow=mlflow_config)
    hook._project = project
    return hook


RUN_PARAMS = {"run_id": "kedro-1", "pipeline_names": ["classification"]}


def test_tasks_and_output_paths_come_from_the_pipeline(project):
    pipeline = _pipeline()
    assert pipeline_tasks(pipeline) == ["classification"]
    assert output_paths(_catalog(project), pipeline.all_outputs()) == [project / "data/08_reporting/classification/metrics.json"]


def test_run_json_is_written_first_and_last(project):
    hook = _hook(project)
    hook.before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))
    first = rs.read_manifest("classification", project)
    assert first["status"] == "running" and first["kedro_run_id"] == "kedro-1" and first["pid"] == os.getpid() and first["end"] is None
    hook.after_pipeline_run()
    last = rs.read_manifest("classification", project)
    assert last["status"] == "finished" and last["start"] == first["start"] and last["end"] is not None


def test_a_failed_run_moves_earlier_outputs_aside_and_says_so(project):
    catalog = _catalog(project)
    good = _hook(project)
    good.before_pipeline_run(RUN_PARAMS, _pipeline(), catalog)
    catalog.save("classification.metrics", {"top1": 0.9})
    good.after_pipeline_run()

    failing = _hook(project)
    failing.before_pipeline_run({**RUN_PARAMS, "run_id": "kedro-2"}, _pipeline(), catalog)
    assert not (project / "data/08_reporting/classification/metrics.json").exists()  # nothing old looks current
    failing.on_pipeline_error(ValueError("strict validation failed"))
    manifest = rs.read_manifest("classification", project)
    assert manifest["status"] == "failed" and manifest["error"] == "ValueError: strict validation failed"
    previous = project / manifest["previous_outputs"]
    assert json.loads((previous / "data/08_reporting/classification/metrics.json").read_text()) == {"top1": 0.9}
    assert json.loads((previous / "run.json").read_text())["kedro_run_id"] == "kedro-1"  # which run they came from

    again = _hook(project)  # a later good run removes the moved-aside outputs
    again.before_pipeline_run({**RUN_PARAMS, "run_id": "kedro-3"}, _pipeline(), catalog)
    catalog.save("classification.metrics", {"top1": 0.8})
    again.after_pipeline_run()
    assert rs.read_manifest("classification", project)["previous_outputs"] is None and not previous.exists()


def test_a_second_run_of_the_same_task_is_refused_with_the_pid(project):
    first = _hook(project)
    first.before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))
    with pytest.raises(rs.RunInProgressError, match=rf"another run of classification is in progress \(pid {os.getpid()}\)"):
        _hook(project).before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))
    other_task = _hook(project)  # another task is not blocked
    other_task.before_pipeline_run(RUN_PARAMS, _pipeline("detection"), _catalog(project, "detection"))
    first.after_pipeline_run()
    other_task.after_pipeline_run()
    later = _hook(project)
    later.before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))  # the lock was released
    later.after_pipeline_run()


def test_the_lock_of_a_killed_process_is_free(project):
    lock = project / rs.REPORTING / "classification" / ".run.lock"
    lock.parent.mkdir(parents=True)
    code = f"from filelock import FileLock; import os; FileLock({str(lock)!r}).acquire(); os.kill(os.getpid(), 9)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    hook = _hook(project)
    hook.before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))
    hook.after_pipeline_run()


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    import mlflow

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'sub' / 'mlflow.db'}"  # the folder is created too
    rs.ensure_store(uri, "visionpipe", (folder / "art").as_uri())
    client = mlflow.MlflowClient(uri)
    client.uri, client.art = uri, (folder / "art").as_uri()
    return client, client.get_experiment_by_name("visionpipe").experiment_id


def test_ensure_store_creates_tables_and_experiment_once(mlflow_store):
    client, exp = mlflow_store
    rs.ensure_store(client.uri, "visionpipe", "file:///elsewhere")  # idempotent: the experiment is not re-created
    assert client.get_experiment_by_name("visionpipe").experiment_id == exp
    assert client.get_experiment(exp).artifact_location == client.art


def test_an_experiment_another_process_creates_at_the_same_moment_is_not_an_error():
    """Two runs starting together against a tracking server (no file lock there) both create the experiment."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

    class Racing:  # the other process creates it between our lookup and our create
        created = False

        def get_experiment_by_name(self, name):
            return SimpleNamespace(experiment_id="7") if self.created else None

        def create_experiment(self, name, **kwargs):
            self.created = True
            raise MlflowException(f"Experiment(name={name}) already exists", error_code=RESOURCE_ALREADY_EXISTS)

    assert rs.create_experiment_once(Racing(), "visionpipe") == "7"


def test_runs_of_dead_processes_are_marked_killed(mlflow_store, project):
    client, exp = mlflow_store
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tags = rs.process_tags(project)
    gone = client.create_run(exp, tags={**tags, rs.TAG_PID: str(dead.pid)})
    alive = client.create_run(exp, tags=tags)
    elsewhere = client.create_run(exp, tags={**tags, rs.TAG_PID: str(dead.pid), rs.TAG_PROJECT: "/some/other/project"})
    killed = rs.mark_killed_runs(client, exp, project)
    assert killed == [gone.info.run_id]
    assert client.get_run(gone.info.run_id).info.status == "KILLED"
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"


def test_resume_points_kedro_mlflow_at_the_checkpoints_run(mlflow_store, project):
    client, exp = mlflow_store
    run = client.create_run(exp)
    ckpt = project / "ckpt"
    save_checkpoint({"model": {"w": torch.ones(1)}, "epoch": 0, "history": [{"epoch": 0, "train_loss": 1.0}],
                     "extra": {"mlflow_run_id": run.info.run_id}}, ckpt / "last.pt")
    config = SimpleNamespace(server=SimpleNamespace(_mlflow_client=client),
                             tracking=SimpleNamespace(run=SimpleNamespace(id=None),
                                                      experiment=SimpleNamespace(_experiment=SimpleNamespace(experiment_id=exp))))
    params = {"classification": {"train": {"resume": True, "checkpoint_dir": str(ckpt)}}}
    hook = _hook(project, params, config)
    hook.before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))
    assert config.tracking.run.id == run.info.run_id
    hook.after_pipeline_run()

    params["classification"]["train"]["resume"] = False
    config.tracking.run.id = None
    hook = _hook(project, params, config)
    hook.before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))
    assert config.tracking.run.id is None  # without resume a new run starts
    hook.after_pipeline_run()


def test_each_task_runs_in_its_own_experiment(mlflow_store, project):
    """kedro-mlflow is pointed at visionpipe-<task> before it starts the run: one experiment per task."""
    client, exp = mlflow_store
    experiment = SimpleNamespace(name="visionpipe", _experiment=client.get_experiment(exp),
                                 create_experiment_kwargs=SimpleNamespace(artifact_location=client.art, tags=None))
    config = SimpleNamespace(server=SimpleNamespace(_mlflow_client=client, mlflow_tracking_uri=client.uri),
                             tracking=SimpleNamespace(run=SimpleNamespace(id=None), experiment=experiment))
    import mlflow

    ids = []
    mlflow.set_tracking_uri(client.uri)
    mlflow.set_experiment(experiment_id=exp)  # what kedro-mlflow does when the session's context is created
    try:
        for _ in range(2):
            hook = _hook(project, {"classification": {"train": {}}}, config)
            hook.before_pipeline_run(RUN_PARAMS, _pipeline(), _catalog(project))
            hook.after_pipeline_run()
            ids.append(experiment._experiment.experiment_id)
            # kedro-mlflow re-enters its run at every node with start_run(run_id): the run's experiment must be the active one
            with mlflow.start_run(run_id=client.create_run(ids[-1]).info.run_id):
                pass
    finally:
        mlflow.set_tracking_uri(None)
    task_exp = client.get_experiment_by_name("visionpipe-classification")
    assert ids == [task_exp.experiment_id] * 2 and task_exp.experiment_id != exp  # created once, then reused
    assert task_exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's "Model training" view
    assert task_exp.artifact_location == client.art


def test_checkpoint_run_id_of_a_bad_file_is_none(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"junk")
    assert rs.checkpoint_run_id(tmp_path / "last.pt") is None
    assert rs.checkpoint_run_id(tmp_path / "missing.pt") is None


class _Loader(dict):
    def __init__(self, conf):
        super().__init__(mlflow=conf)
        self.config_patterns = {}


def test_the_store_and_experiment_exist_before_kedro_mlflow_starts(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    conf = {"server": {"mlflow_tracking_uri": uri},
            "tracking": {"experiment": {"name": "visionpipe", "create_experiment_kwargs": {"artifact_location": (tmp_path / "a").as_uri()}}}}
    context = SimpleNamespace(project_path=tmp_path, config_loader=_Loader(conf))
    RunStateHook().after_context_created(context)
    assert "mlflow" in context.config_loader.config_patterns
    assert mlflow.MlflowClient(uri).get_experiment_by_name("visionpipe").artifact_location == (tmp_path / "a").as_uri()
    assert (tmp_path / "mlflow.db.lock").exists()


def test_changed_parameters_are_found_by_their_flattened_names():
    from visionpipe.hooks.run_state import changed_params

    logged = {"classification.train.epochs": "3", "classification.train.lr": "0.001", "classification.augment": "[]"}
    block = {"train": {"epochs": 5, "lr": 0.001, "resume": True}, "augment": []}
    assert changed_params(logged, "classification", block) == ["classification.train.epochs"]
