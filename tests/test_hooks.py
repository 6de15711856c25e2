"""Each project hook alone, on a dummy pipeline and catalog (as kedro-mlflow tests its hooks)."""

from __future__ import annotations

import os

import mlflow
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline

from visionpipe.hooks import DistributedHook, FrozenStartupHook, MlflowRunHook, ProjectMlflowHook, SystemMetricsHook
from visionpipe.hooks import imports as imports_hook
from visionpipe.io import AtomicJSONDataset


def _identity(x):
    return x


@pytest.fixture
def pipeline():
    return Pipeline([Node(_identity, "raw", "middle", name="first", namespace=None),
                     Node(_identity, "middle", "final", name="second")])


@pytest.fixture(scope="module")
def _store_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"  # one store: creating one costs seconds


@pytest.fixture
def store(_store_uri):
    mlflow.set_tracking_uri(_store_uri)
    mlflow.set_experiment("hooks")
    yield _store_uri
    while mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    from mlflow.tracking import fluent

    fluent._active_experiment_id = None  # no later test's store should look for this experiment
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # set_experiment exports it too


def _namespaced_node():
    return Pipeline([Node(_identity, "a", "b", name="train_model")], namespace="detection").nodes[0]


# ---------------------------------------------------------------- DistributedHook

def test_rank_zero_keeps_the_catalog(pipeline, tmp_path, monkeypatch):
    from visionpipe.engine import distributed

    monkeypatch.setattr(distributed, "is_main_process", lambda: True)
    catalog = DataCatalog({"raw": AtomicJSONDataset(str(tmp_path / "raw.json")), "final": AtomicJSONDataset(str(tmp_path / "final.json"))})
    DistributedHook().before_pipeline_run({}, pipeline, catalog)
    assert isinstance(catalog.get("final"), AtomicJSONDataset)


def test_other_ranks_replace_only_outputs_and_still_read_inputs(pipeline, tmp_path, monkeypatch):
    from visionpipe.engine import distributed

    monkeypatch.setattr(distributed, "is_main_process", lambda: False)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    raw = AtomicJSONDataset(str(tmp_path / "raw.json"))
    raw.save({"written": "by rank 0 earlier"})
    final = AtomicJSONDataset(str(tmp_path / "final.json"))
    catalog = DataCatalog({"raw": raw, "final": final})
    DistributedHook().before_pipeline_run({}, pipeline, catalog)
    assert catalog.get("raw") is raw and catalog.load("raw") == {"written": "by rank 0 earlier"}
    assert isinstance(catalog.get("middle"), MemoryDataset) and isinstance(catalog.get("final"), MemoryDataset)
    catalog.save("final", {"rank": 1})
    assert not (tmp_path / "final.json").exists()  # nothing written by rank 1


# ---------------------------------------------------------------- SystemMetricsHook

class _FakeMonitor:
    started: list = []

    def __init__(self, run_id, **kwargs):
        self.run_id = run_id
        self.finished = False

    def start(self):
        _FakeMonitor.started.append(self)

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_monitor(monkeypatch):
    from mlflow.system_metrics import system_metrics_monitor

    _FakeMonitor.started = []
    monkeypatch.setattr(system_metrics_monitor, "SystemMetricsMonitor", _FakeMonitor)
    return _FakeMonitor


def test_system_metrics_start_once_per_run_and_stop_after_the_pipeline(store, fake_monitor):
    hook = SystemMetricsHook()
    run = mlflow.start_run()
    for _ in range(3):  # kedro-mlflow re-enters its run at every node
        hook.before_node_run(_namespaced_node())
    assert len(fake_monitor.started) == 1 and fake_monitor.started[0].run_id == run.info.run_id
    hook.after_pipeline_run()
    assert fake_monitor.started[0].finished


def test_system_metrics_stop_on_error_and_can_be_switched_off(store, fake_monitor, monkeypatch):
    hook = SystemMetricsHook()
    mlflow.start_run()
    hook.before_node_run(_namespaced_node())
    hook.on_pipeline_error()
    assert fake_monitor.started[0].finished
    monkeypatch.setenv("VISIONPIPE_SYSTEM_METRICS", "false")
    off = SystemMetricsHook()
    off.before_node_run(_namespaced_node())
    assert len(fake_monitor.started) == 1


def test_no_monitor_without_an_active_run(store, fake_monitor):
    SystemMetricsHook().before_node_run(_namespaced_node())
    assert fake_monitor.started == []


# ---------------------------------------------------------------- FrozenStartupHook

class _FakeGc:
    """gc's freeze calls, recorded instead of freezing the test process."""

    def __init__(self, frozen=0):
        self.frozen, self.calls = frozen, []

    def set_threshold(self, *thresholds):
        self.calls.append(("set_threshold", *thresholds))

    def get_freeze_count(self):
        return self.frozen

    def collect(self, generation=2):
        self.calls.append(("collect", generation))

    def freeze(self):
        self.calls.append(("freeze",))
        self.frozen = 500_000


def test_startup_objects_are_frozen_once_per_process_after_a_young_collection(monkeypatch):
    fake = _FakeGc()
    monkeypatch.setattr(imports_hook, "gc", fake)
    hook = FrozenStartupHook()
    hook.before_pipeline_run()
    assert fake.calls == [("collect", 1), ("freeze",)]
    FrozenStartupHook().before_pipeline_run()  # the next session of the process (one per task): nothing more
    hook.before_pipeline_run()
    assert fake.calls == [("collect", 1), ("freeze",)]


def test_nothing_is_frozen_when_something_already_was(monkeypatch):
    fake = _FakeGc(frozen=10)
    monkeypatch.setattr(imports_hook, "gc", fake)
    FrozenStartupHook().before_pipeline_run()
    assert fake.calls == []


def test_python_thresholds_come_back_once_the_context_exists(monkeypatch):
    fake = _FakeGc()
    monkeypatch.setattr(imports_hook, "gc", fake)
    hook = FrozenStartupHook((700, 10, 10))
    hook.after_context_created()
    hook.after_context_created()  # a later session of the process: a user's own thresholds stay
    FrozenStartupHook().after_context_created()
    assert fake.calls == [("set_threshold", 700, 10, 10)]


def test_settings_relax_start_up_collections_and_hand_python_s_thresholds_to_the_hook():
    import gc
    import importlib.util

    from visionpipe import settings

    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:  # settings executed afresh (its imports are cached): what Kedro's start-up runs first
        spec = importlib.util.spec_from_file_location("settings_again", settings.__file__)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert gc.get_threshold() == (100_000, 10, 10)
        hook = module.HOOKS[0]
        assert isinstance(hook, FrozenStartupHook)  # registered first: pluggy calls it after the others
        hook.after_context_created()
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*saved)


# ---------------------------------------------------------------- ProjectMlflowHook

def test_a_param_goes_to_the_store_once_per_run_and_a_changed_value_is_still_refused(store, monkeypatch):
    sent = []
    real = mlflow.log_param
    monkeypatch.setattr(mlflow, "log_param", lambda name, value, **kw: (sent.append((name, value)), real(name, value, **kw))[1])
    hook = ProjectMlflowHook()
    run = mlflow.start_run()
    for _ in range(7):  # kedro-mlflow logs a node's params before each of the task's 7 nodes that read them
        hook._log_param("classification.train.lr", 0.01)
        hook._log_param("classification.train.resume", False)  # run control: a tag
    assert sent == [("classification.train.lr", 0.01)]
    with pytest.raises(mlflow.exceptions.MlflowException, match="[Cc]hanging param values is not allowed"):
        hook._log_param("classification.train.lr", 0.02)
    stored = mlflow.get_run(run.info.run_id).data
    assert stored.params == {"classification.train.lr": "0.01"} and stored.tags["classification.train.resume"] == "False"
    mlflow.end_run()
    mlflow.start_run()
    hook._log_param("classification.train.lr", 0.01)  # another run: logged again
    assert sent == [("classification.train.lr", 0.01), ("classification.train.lr", 0.02), ("classification.train.lr", 0.01)]


# ---------------------------------------------------------------- MlflowRunHook

_PARAMS = {"params:detection": {"model": {"name": "fcos", "backbone": "resnet10t"}}}


def test_run_is_tagged_with_task_and_kedro_run_id_and_stage_runs_are_named(store):
    hook = MlflowRunHook()
    hook.after_context_created(None)
    hook.before_pipeline_run({"run_id": "2026-11-23T18.00.00.000Z"})
    run = mlflow.start_run(run_name="training")
    hook.before_node_run(_namespaced_node(), _PARAMS)
    tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["kedro.run_id"] == "2026-11-23T18.00.00.000Z"
    assert tags["visionpipe.task"] == "detection"
    assert tags["mlflow.runName"] == "detection-fcos-resnet10t-training-1123-180000"


def test_task_run_is_named_for_its_task_and_model(store):
    hook = MlflowRunHook()
    hook.after_context_created(None)
    hook.before_pipeline_run({"run_id": "2026-11-23T18.00.00.000Z"})
    run = mlflow.start_run(run_name="detection")
    hook.before_node_run(_namespaced_node(), _PARAMS)
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.run_name == "detection-fcos-resnet10t-1123-180000"


def test_runs_left_open_are_closed_but_an_outer_run_stays_open(store):
    outer = mlflow.start_run(run_name="orchestrator")
    hook = MlflowRunHook()
    hook.after_context_created(None)
    mlflow.start_run(run_name="task", nested=True)
    mlflow.start_run(run_name="task", nested=True)  # re-entered
    hook.after_pipeline_run()
    assert mlflow.active_run().info.run_id == outer.info.run_id


def test_all_runs_closed_without_an_outer_run(store):
    hook = MlflowRunHook()
    hook.after_context_created(None)
    mlflow.start_run(run_name="task")
    hook.after_pipeline_run()
    assert mlflow.active_run() is None
