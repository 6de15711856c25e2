"""Experiments: sweep points, the project's store from a DVC experiment copy, DVC tags on runs,
cache integrity with DVC's hashing, built-in data ownership, and dvc.yaml generated from the pipelines."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

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


def test_parallel_points_never_share_a_gpu():
    import threading
    import time

    from visionpipe.experiments.sweep import run_parallel

    lock, held, seen, peak = threading.Lock(), set(), [], [0]

    def work(item, gpu):
        with lock:
            assert gpu not in held  # no two running points on one GPU
            held.add(gpu)
            seen.append((item, gpu))
            peak[0] = max(peak[0], len(held))
        time.sleep(0.05)
        with lock:
            held.discard(gpu)

    run_parallel(list(range(6)), work, jobs=2, gpus=["3", "5"])
    assert sorted(i for i, _ in seen) == list(range(6)) and {g for _, g in seen} == {"3", "5"} and peak[0] == 2
    seen.clear()
    run_parallel([0, 1], work)  # sequential by default, without a GPU assignment
    assert seen == [(0, None), (1, None)]


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
