"""Experiments: sweep points, the project's store from a DVC experiment copy, DVC tags on runs,
cache integrity with DVC's hashing, built-in data ownership, and dvc.yaml generated from the pipelines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from support import PROJECT, task_params
from visionpipe.errors import ConfigError, DataError

# ---------------------------------------------------------------- sweep points


def test_grid_is_the_cartesian_product_with_typed_values():
    from visionpipe.experiments.sweep import parse_grid

    points = parse_grid(["train.lr=[0.001,0.01]", "model.name=[resnet10t,mobilenetv3_small_050]", "train.epochs=2"])
    assert len(points) == 4
    assert points[0] == {"train.lr": 0.001, "model.name": "resnet10t", "train.epochs": 2}
    assert points[3] == {"train.lr": 0.01, "model.name": "mobilenetv3_small_050", "train.epochs": 2}
    with pytest.raises(ConfigError, match="expected KEY="):
        parse_grid(["train.lr"])


def test_sweep_file_holds_a_grid_and_explicit_points(tmp_path):
    from visionpipe.experiments.sweep import points_from_file

    path = tmp_path / "sweep.yml"
    path.write_text(yaml.safe_dump({"grid": {"train.lr": [0.1, 0.2]}, "points": [{"model.name": "resnet18"}]}))
    assert points_from_file(path) == [{"train.lr": 0.1}, {"train.lr": 0.2}, {"model.name": "resnet18"}]
    path.write_text(yaml.safe_dump({"grids": {"train.lr": [0.1]}}))
    with pytest.raises(ConfigError, match="grid:"):
        points_from_file(path)


def test_a_point_with_an_unknown_key_fails_before_anything_runs():
    from visionpipe.experiments.sweep import point_overrides

    params = task_params("classification")
    block = point_overrides("classification", params, {"train.lr": 0.5})
    assert block["train"]["lr"] == 0.5 and params["train"]["lr"] != 0.5  # the base block is untouched
    with pytest.raises(ConfigError, match="train.lrr"):
        point_overrides("classification", params, {"train.lrr": 0.5})


def test_comparison_table_and_plot():
    from visionpipe.experiments.sweep import PointResult, comparison_frame, comparison_plot

    points = [PointResult(0, {"train.lr": 0.1}, "a", Path("p0"), "finished", metrics={"top1": 0.5}),
              PointResult(1, {"train.lr": 0.2}, "b", Path("p1"), "failed", error="ConfigError: x")]
    frame = comparison_frame(points)
    assert list(frame["status"]) == ["finished", "failed"] and frame.loc[0, "top1"] == 0.5
    assert frame.loc[1, "error"] == "ConfigError: x"
    fig = comparison_plot(frame, "top1", ["train.lr"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0: train.lr=0.1", "1: train.lr=0.2"]


def test_search_specs_become_optuna_dimensions_and_bad_ones_name_the_key():
    import optuna

    from visionpipe.experiments.sweep import parse_search, suggest

    dims = parse_search(["train.lr=log[1e-5,1e-2]", "train.weight_decay=float[0,0.1]", "train.epochs=int[2,8]",
                         "model.name=[resnet18,resnet34]"])
    assert [(d.kind, d.low, d.high) for d in dims.values()] == [("log", 1e-5, 1e-2), ("float", 0.0, 0.1), ("int", 2, 8),
                                                                 ("choice", None, None)]
    assert dims["model.name"].choices == ("resnet18", "resnet34")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), dims)
        assert 1e-5 <= values["train.lr"] <= 1e-2 and isinstance(values["train.epochs"], int) and 2 <= values["train.epochs"] <= 8
        assert values["model.name"] in ("resnet18", "resnet34") and 0 <= values["train.weight_decay"] <= 0.1
    assert isinstance(study.trials[0].distributions["train.lr"], optuna.distributions.FloatDistribution)
    assert study.trials[0].distributions["train.lr"].log
    for spec, message in [("train.lr=log[0,1]", "lo > 0"), ("train.lr=float[1,0.1]", "low end"), ("train.lr=int[1.5,3]", "integers"),
                          ("train.lr=uniform(1,2)", "train.lr=log"), ("train.lr", "expected KEY="), ("model.name=[]", "empty"),
                          ("model.name=[[a]]", "single values")]:
        with pytest.raises(ConfigError, match=message) as err:
            parse_search([spec])
        assert "--search" in str(err.value)


def test_grid_space_keeps_a_grid_s_own_keys_and_indexes_explicit_points():
    from visionpipe.experiments.sweep import grid_space, parse_grid

    grid = parse_grid(["train.lr=[0.001,0.01]", "model.name=[a,b,c]"])
    assert grid_space(grid) == {"train.lr": [0.001, 0.01], "model.name": ["a", "b", "c"]}
    points = [{"train.lr": 0.1}, {"model.name": "b"}, {"train.lr": 0.2}]
    assert grid_space(points) == {"point": [0, 1, 2]}
    assert grid_space([{"train.lr": 0.1, "model.name": "a"}, {"train.lr": 0.2, "model.name": "b"}]) == {"point": [0, 1]}


def test_fixed_params_keep_commas_inside_brackets():
    from visionpipe.experiments.sweep import split_params

    assert split_params("data.root=/d/pets,train.epochs=2, augment.scale=[0.5,1.0]") == {
        "data.root": "/d/pets", "train.epochs": 2, "augment.scale": [0.5, 1.0]}
    assert split_params("") == {}
    with pytest.raises(ConfigError, match="--params 'train.epochs'"):
        split_params("train.epochs")


def test_best_point_follows_the_registry_direction_when_greater_is_better_is_null():
    """A null ``greater_is_better`` means higher is better for top1 (lower only for a loss): the sweep used to
    pass the raw null, which picked the point with the lowest top1."""
    from visionpipe.config import RegistryConfig
    from visionpipe.experiments.sweep import PointResult, pick_best

    points = [PointResult(0, {"train.lr": 0.1}, "a", Path("p0"), "finished", metrics={"top1": 0.2, "val_loss": 0.9}),
              PointResult(1, {"train.lr": 0.2}, "b", Path("p1"), "finished", metrics={"top1": 0.8, "val_loss": 0.3}),
              PointResult(2, {"train.lr": 0.3}, "c", Path("p2"), "pruned", metrics={"top1": 0.9}),
              PointResult(3, {"train.lr": 0.4}, "d", Path("p3"), "failed")]
    top1 = RegistryConfig(model_name="m", metric="top1")
    assert top1.greater_is_better is None
    assert pick_best(points, top1).run_id == "b"
    loss = RegistryConfig(model_name="m", metric="val_loss")
    assert pick_best(points, loss).run_id == "b"
    points[0].metrics["val_loss"] = 0.1
    assert pick_best(points, loss).run_id == "a"
    assert pick_best(points, RegistryConfig(model_name="m", metric="top1", greater_is_better=False)).run_id == "a"
    assert pick_best(points[2:], top1) is None  # a pruned point is never the best


def test_pruning_callback_reports_each_epoch_and_stops_a_hopeless_trial():
    import optuna

    from visionpipe.tasks import parse_task_config
    from visionpipe.experiments.sweep import PRUNER
    from visionpipe.experiments.sweep_point import pruning
    from visionpipe.tracking.callbacks import TrialReporter, tracking_callbacks

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(**{**PRUNER, "n_startup_trials": 2}))
    for good in (0.6, 0.8):  # two earlier trials: top1 0.5 then `good`
        trial = study.ask()
        for epoch, value in ((1, 0.5), (2, good)):
            trial.report(value, epoch)
        study.tell(trial, good)
    cfg = parse_task_config("classification", task_params("classification"))
    assert not any(isinstance(cb, TrialReporter) for cb in tracking_callbacks(cfg))
    trial = study.ask()
    with pruning(trial, "top1"):
        (reporter,) = [cb for cb in tracking_callbacks(cfg) if isinstance(cb, TrialReporter)]
        reporter.on_epoch_end(0, {"epoch": 1, "top1": 0.1, "train_loss": 2.0})  # warm-up epoch: never judged
        with pytest.raises(optuna.TrialPruned, match="top1=0.1 after epoch 2"):
            reporter.on_epoch_end(1, {"epoch": 2, "top1": 0.1})
    assert study.trials[-1].intermediate_values == {1: 0.1, 2: 0.1}
    assert not any(isinstance(cb, TrialReporter) for cb in tracking_callbacks(cfg))  # only while the trial runs


def test_a_worker_records_complete_pruned_and_failed_trials_and_gates_only_the_best(tmp_path, monkeypatch):
    """The worker's whole loop on a stand-in for training (no Kedro run): a study in SQLite, one parent run,
    a pruned trial (KILLED in MLflow), a failed one (FAILED, with its error), the best by top1 gated once."""
    import json as _json

    import mlflow
    import optuna

    from visionpipe.tasks import parse_task_config
    from visionpipe.experiments import sweep
    from visionpipe.tracking.callbacks import TrialReporter, tracking_callbacks

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = task_params("classification")
    experiment = SimpleNamespace(name="visionpipe",
                                 create_experiment_kwargs=SimpleNamespace(artifact_location=(tmp_path / "art").as_uri()))
    monkeypatch.setattr(sweep.SweepWorker, "_load_project", lambda self: (params, experiment, None))
    monkeypatch.setattr(sweep.SweepWorker, "catalog_path", lambda self, dataset: f"out/{dataset}.json")
    monkeypatch.setattr(sweep.SweepWorker, "_builtin_data", lambda self: None)
    monkeypatch.setattr(sweep, "PRUNER", {"n_startup_trials": 2, "n_warmup_steps": 2})
    gated = []
    monkeypatch.setattr(sweep, "champion_gate", lambda run_id, *args: gated.append(run_id) or {"model_name": "m", "version": "1"})
    # the n-th trial to run: its top1 after epochs 1, 2, 3 (None: it fails)
    curves = [(0.5, 0.5, 0.5), (0.6, 0.6, 0.6), (0.1, 0.1, 0.1), None, (0.7, 0.8, 0.9)]

    def fake_run_point(project, point_dir, task, run_id, runtime_params, env=None):
        assert runtime_params[task]["registry"]["enabled"] is False and runtime_params[task]["train"]["epochs"] == 3
        curve = curves.pop(0)
        if curve is None:
            raise ConfigError("classification.train.lr: out of range")
        reporters = [cb for cb in tracking_callbacks(parse_task_config(task, params)) if isinstance(cb, TrialReporter)]
        for epoch, value in enumerate(curve):
            for cb in reporters:
                cb.on_epoch_end(epoch, {"epoch": epoch + 1, "top1": value})
        (point_dir / "out").mkdir(parents=True)
        (point_dir / "out/metrics.json").write_text(_json.dumps({"top1": curve[-1], "val_loss": 1.0}))

    monkeypatch.setattr(sweep, "run_point", fake_run_point)
    summary = sweep.run_sweep(tmp_path, "classification", search=["train.lr=log[1e-4,1e-1]"], trials=5, prune=True,
                              fixed={"train.epochs": 3}, name="s", heartbeat_s=5, poll_s=0.1)

    study = optuna.load_study(study_name="s", storage=sweep.default_storage(tmp_path))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert study.trials[2].intermediate_values == {1: 0.1, 2: 0.1}  # stopped after epoch 2, below the median
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name("visionpipe-classification")  # the task's own experiment
    runs = {r.data.tags["sweep.trial"]: r for r in client.search_runs([experiment.experiment_id], "tags.`sweep.trial` != ''")}  # beside the task's runs
    assert [runs[str(i)].info.status for i in range(5)] == ["FINISHED", "FINISHED", "KILLED", "FAILED", "FINISHED"]
    assert runs["2"].data.tags["sweep.state"] == "PRUNED" and "after epoch 2" in runs["2"].data.tags["sweep.pruned"]
    assert runs["3"].data.tags["visionpipe.error"] == "ConfigError: classification.train.lr: out of range"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {summary.parent_run_id}
    parent = client.get_run(summary.parent_run_id)
    assert parent.data.tags["sweep.study"] == "s" and parent.data.tags["sweep.best_run_id"] == runs["4"].info.run_id
    assert parent.data.metrics["best_top1"] == 0.9 and parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith((tmp_path / "art").as_uri())  # the project's artifact root, not ./mlruns
    assert gated == [runs["4"].info.run_id]  # only the best went through the registration node
    frame = pd.read_csv(tmp_path / "data/sweeps/classification/s/comparison.csv")
    assert list(frame["status"]) == ["finished", "finished", "pruned", "failed", "finished"]
    assert (tmp_path / "data/sweeps/classification/s/trial-003/error.txt").read_text().count("ConfigError") >= 1
    # a worker started again once the study is done finds nothing to do and registers nothing more
    again = sweep.run_sweep(tmp_path, "classification", search=["train.lr=log[1e-4,1e-1]"], trials=5, prune=True,
                            fixed={"train.epochs": 3}, name="s", heartbeat_s=5)
    assert len(study.trials) == 5 and gated == [runs["4"].info.run_id] and again.best.run_id == runs["4"].info.run_id
    with pytest.raises(ConfigError, match="was started with trials = 5"):
        sweep.run_sweep(tmp_path, "classification", search=["train.lr=log[1e-4,1e-1]"], trials=6, prune=True,
                        fixed={"train.epochs": 3}, name="s")


def test_sweep_options_fail_in_one_line(tmp_path, monkeypatch):
    from visionpipe.cli import cli

    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(cli, ["sweep", "--task", "classification", "--grid", "train.lr=[0.1]", "--jobs", "2"])
    assert out.exit_code != 0 and "CUDA_VISIBLE_DEVICES" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(cli, ["sweep", "--task", "classification", "--search", "train.lr=log[0,1]"])
    assert out.exit_code == 1 and "--search" in out.output and "Traceback" not in out.output


# ---------------------------------------------------------------- the project's store


def test_store_is_the_repository_s_not_the_experiment_copy(tmp_path, monkeypatch):
    from visionpipe.project import project_root
    from visionpipe.settings import artifact_root, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    (copy / "pyproject.toml").write_text("[tool.kedro]\npackage_name = 'visionpipe'\n")
    monkeypatch.chdir(copy)
    assert project_root() == repo
    assert tracking_uri() == f"sqlite:///{repo / 'mlflow.db'}"
    assert artifact_root() == (repo / "mlartifacts").as_uri()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))  # what `dvc exp run` sets: it wins
    assert project_root() == tmp_path
    monkeypatch.delenv("DVC_ROOT")
    (repo / "pyproject.toml").write_text("[tool.kedro]\n")
    (repo / "src" / "pkg").mkdir(parents=True)
    monkeypatch.chdir(repo / "src" / "pkg")  # a subfolder of the project: still the project's store
    assert project_root() == repo


def test_runs_are_tagged_with_the_dvc_experiment(monkeypatch):
    import mlflow

    from visionpipe.hooks.experiments import DvcExperimentHook, experiment_tags

    assert experiment_tags({}) == {}
    env = {"DVC_EXP_NAME": "tidy-lamb", "DVC_EXP_BASELINE_REV": "a" * 40, "DVC_ROOT": "/x"}
    assert experiment_tags(env) == {"dvc.exp_name": "tidy-lamb", "dvc.exp_baseline_rev": "a" * 40}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    logged = {}
    run = SimpleNamespace(info=SimpleNamespace(run_id="r1"))
    monkeypatch.setattr(mlflow, "active_run", lambda: run)
    monkeypatch.setattr(mlflow, "set_tags", logged.update)
    monkeypatch.setattr("visionpipe.hooks.experiments.dirty_paths", lambda project: ["conf/base/parameters_classification.yml"])
    hook = DvcExperimentHook()
    hook.before_node_run(node=None)
    assert logged == {"dvc.exp_name": "tidy-lamb", "dvc.exp_baseline_rev": "a" * 40,
                      "git.dirty_paths": "conf/base/parameters_classification.yml"}
    logged.clear()
    hook.before_node_run(node=None)  # once per run
    assert logged == {}


# ---------------------------------------------------------------- integrity


def _lock(project: Path, path: str, md5: str, stage: str = "builtin_data@classification") -> None:
    (project / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {stage: {"outs": [{"path": path, "md5": md5}]}}}))


def test_dvc_hash_of_a_file_and_of_a_folder(tmp_path):
    from visionpipe.experiments.integrity import content_hash

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_bytes(b"alpha")
    (tmp_path / "d" / "sub" / "b.txt").write_bytes(b"beta")
    assert content_hash(tmp_path / "d" / "a.txt") == (hashlib.md5(b"alpha").hexdigest(), {})
    value, files = content_hash(tmp_path / "d")
    assert files == {"a.txt": hashlib.md5(b"alpha").hexdigest(), "sub/b.txt": hashlib.md5(b"beta").hexdigest()}
    # DVC's .dir hash: md5 of the sorted JSON manifest it stores in the cache
    manifest = json.dumps([{"md5": files[k], "relpath": k} for k in sorted(files)], sort_keys=True)
    assert value == hashlib.md5(manifest.encode()).hexdigest() + ".dir"


def test_corrupt_data_names_the_file_and_the_fix(tmp_path):
    from visionpipe.experiments.integrity import content_hash, verify_task_data

    data = tmp_path / "data" / "01_raw" / "builtin" / "classification"
    (data / "train").mkdir(parents=True)
    (data / "train" / "x.png").write_bytes(b"good")
    (data / "train" / "y.png").write_bytes(b"fine")
    md5, files = content_hash(data)
    _lock(tmp_path, "data/01_raw/builtin/classification", md5)
    manifest = tmp_path / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps([{"md5": files[k], "relpath": k} for k in sorted(files)]))
    assert verify_task_data("data/01_raw/builtin/classification", tmp_path).md5 == md5
    (data / "train" / "x.png").write_bytes(b"evil")  # what `dvc checkout` copies from a corrupt cache object
    with pytest.raises(DataError) as err:
        verify_task_data("data/01_raw/builtin/classification", tmp_path)
    message = str(err.value)
    assert "1 file(s) differ" in message and "train/x.png" in message and "y.png" not in message
    assert "dvc.lock (stage builtin_data@classification)" in message
    assert "dvc pull data/01_raw/builtin/classification" in message and "dvc checkout --relink" in message
    assert verify_task_data("elsewhere", tmp_path) is None  # untracked data: nothing to check against


def test_integrity_hook_checks_only_before_registration(tmp_path):
    from visionpipe.experiments.integrity import content_hash
    from visionpipe.hooks.experiments import CacheIntegrityHook

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"1")
    _lock(tmp_path, "d", "0" * 32 + ".dir")
    hook = CacheIntegrityHook()
    hook.after_context_created(type("Context", (), {"project_path": tmp_path})())
    index = {"root": str(tmp_path / "d")}

    class Node:
        def __init__(self, name):
            self.name = name

    hook.before_node_run(Node("classification.train_model"), {"classification.clean_index": index})
    with pytest.raises(DataError, match="records 0000"):
        hook.before_node_run(Node("classification.register_model"), {"classification.clean_index": index})
    with pytest.raises(DataError, match="records 0000"):  # right after ingestion, before any training
        hook.after_node_run(Node("classification.ingest_dataset"), {"classification.dataset_index": index})
    _lock(tmp_path, "d", content_hash(tmp_path / "d")[0])
    hook.before_node_run(Node("classification.register_model"), {"classification.clean_index": index})


def test_dvc_owns_the_builtin_data_once_it_tracks_it(tmp_path):
    from visionpipe.experiments.integrity import content_hash
    from visionpipe.experiments.ownership import builtin_data_for_ingestion

    cfg = dict(task_params("classification")["data"]["builtin"], seed=0)
    root = tmp_path / "data/01_raw/builtin/classification"
    builtin_data_for_ingestion(root, "classification", cfg, tmp_path)  # untracked: ingestion generates it
    assert len(list(root.rglob("*.png"))) == 36
    _lock(tmp_path, "data/01_raw/builtin/classification", content_hash(root)[0])
    assert builtin_data_for_ingestion(root, "classification", cfg, tmp_path) == root
    with pytest.raises(DataError, match=r"owned by DVC .*dvc repro classification"):
        builtin_data_for_ingestion(root, "classification", {**cfg, "train_images": 30}, tmp_path)
    assert len(list(root.rglob("*.png"))) == 36  # not rewritten
    marker = next(root.glob(".visionpipe-*.json"))
    marker.write_bytes(b"\xcd" + marker.read_bytes()[1:])  # a corrupt copy of the marker: named as corruption
    with pytest.raises(DataError, match=r"dvc.lock .stage builtin_data@classification. records .*dvc pull"):
        builtin_data_for_ingestion(root, "classification", cfg, tmp_path)


# ---------------------------------------------------------------- dvc.yaml


def test_module_closure_follows_imports_inside_functions(tmp_path):
    from visionpipe.experiments.dvc_sync import module_closure

    pkg = tmp_path / "visionpipe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from visionpipe.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\nimport os\n")
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "unused.py").write_text("")
    (pkg / "cli.py").write_text("import visionpipe.a\ndef cmd():\n    import visionpipe.unused\n")
    files = {f.relative_to(tmp_path).as_posix() for f in module_closure(["visionpipe.cli"], tmp_path)}
    assert files == {"visionpipe/__init__.py", "visionpipe/cli.py", "visionpipe/a.py", "visionpipe/sub/__init__.py",
                     "visionpipe/sub/b.py", "visionpipe/sub/c.py"}  # a command module: top-level imports only


def test_generated_stages_follow_the_catalog_and_parameters():
    from visionpipe.tasks import TASKS
    from visionpipe.experiments.dvc_sync import build_dvc_yaml

    content = build_dvc_yaml(PROJECT)
    assert set(content["stages"]) == {"builtin_data", *TASKS}
    stage = content["stages"]["classification"]
    deps = stage["deps"]
    for required in ("data/01_raw/builtin/classification", "conf/base/mlflow.yml", "conf/base/catalog.yml",
                     "src/visionpipe/config.py", "src/visionpipe/tasks/__init__.py", "src/visionpipe/io/datasets.py",
                     "src/visionpipe/serving/predictor.py", "src/visionpipe/tracking/registry.py", "src/visionpipe/settings.py",
                     "src/visionpipe/hooks/mlflow_runs.py"):
        assert required in deps, required
    assert "src/visionpipe/serving/export.py" in deps  # registration exports the ONNX model the pyfunc carries
    assert stage["params"] == [{"conf/base/parameters_classification.yml": ["classification"]}]
    assert "data/06_models/classification/model" in stage["outs"]
    assert stage["metrics"] == [{"data/08_reporting/classification/metrics.json": {"cache": False}}]
    # history.csv: an uncached out for the top-level plots, not a stage plot DVC would draw column by column
    assert "plots" not in stage and {"data/08_reporting/classification/history.csv": {"cache": False}} in stage["outs"]
    plots = {name: spec for entry in content["plots"] for name, spec in entry.items()}
    assert plots["classification_loss"]["y"] == {"data/08_reporting/classification/history.csv": ["train_loss", "val_loss"]}
    assert plots["detection_ap_per_class"]["y"] == {"data/08_reporting/detection/per_class.csv": "class"}
    assert all(spec["x"] for spec in plots.values())  # every plot names its x and y
    assert not [k for k in content["stages"]["detection"]["metrics"] if "evaluation" in str(k)]
    assert not any("registration.json" in str(o) for o in stage["outs"])
    assert content["stages"]["builtin_data"]["foreach"] == list(TASKS)


def test_dvc_yaml_of_the_repository_is_up_to_date():
    """What CI runs: `visionpipe dvc-sync --check` on the repository itself."""
    from visionpipe.cli import cli

    result = CliRunner().invoke(cli, ["dvc-sync", "--check", "--project", str(PROJECT)])
    assert result.exit_code == 0, result.output


def test_check_fails_and_shows_the_diff_when_dvc_yaml_is_stale(tmp_path):
    from visionpipe.cli import cli
    from visionpipe.experiments.dvc_sync import sync

    for name in ("conf", "src"):
        (tmp_path / name).symlink_to(PROJECT / name)
    (tmp_path / "dvc.yaml").write_text((PROJECT / "dvc.yaml").read_text().replace("- conf/base/mlflow.yml\n", "", 1))
    result = CliRunner().invoke(cli, ["dvc-sync", "--check", "--project", str(tmp_path)])
    assert result.exit_code == 1 and "+    - conf/base/mlflow.yml" in result.output and "disagrees" in result.output
    assert sync(tmp_path)[0] is False  # writes it
    assert sync(tmp_path, check=True) == (True, "")
    assert (tmp_path / "dvc.yaml").read_text() == (PROJECT / "dvc.yaml").read_text()
