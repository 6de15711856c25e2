"""A user's own data after the demo: quiet tools, run-control keys, the champion in the user's classes,
registered model names, pretrained weights from the hub cache."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_project_itself_declines_kedro_telemetry_and_dvc_analytics(monkeypatch):
    from kedro_telemetry.plugin import _check_for_telemetry_consent

    for var in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(var, raising=False)
    assert _check_for_telemetry_consent(ROOT) is False  # from the committed .telemetry, not an environment variable
    assert subprocess.run(["git", "check-ignore", "-q", ".telemetry"], cwd=ROOT).returncode == 1  # committed, not ignored
    assert "analytics = false" in (ROOT / ".dvc/config").read_text()


def test_every_uncached_dvc_output_is_committable_to_git():
    """dvc.yaml's `cache: false` outputs, metrics and plots are git's to version (DVC experiment commits, `dvc metrics
    diff <rev>`): none may be git-ignored, or an experiment commit silently leaves it out."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    uncached = sorted({path for stage in stages.values() for kind in ("outs", "metrics", "plots")
                       for entry in stage.get(kind, []) if isinstance(entry, dict)
                       for path, opts in entry.items() if (opts or {}).get("cache") is False})
    assert any(p.endswith("/all_metrics.json") for p in uncached) and any(p.endswith("/metrics.json") for p in uncached)
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *uncached], cwd=ROOT, capture_output=True, text=True).stdout
    assert ignored == "", f"git-ignored uncached DVC outputs: {ignored}"


def test_run_control_keys_are_tags_and_never_changed_params():
    from visionpipe.hooks.mlflow_runs import is_run_control
    from visionpipe.hooks.run_state import changed_params

    assert is_run_control("classification.train.resume") and is_run_control("detection.data.num_workers")
    assert not is_run_control("classification.train.epochs")
    logged = {"classification.train.resume": "False", "classification.train.device": "cuda", "classification.train.lr": "0.1"}
    block = {"train": {"resume": True, "device": "cpu", "lr": 0.2}}
    assert changed_params(logged, "classification", block) == ["classification.train.lr"]


def test_champion_outputs_are_mapped_to_todays_classes_by_name():
    import torch

    from visionpipe.tracking.champion import OutputClassMap

    mapped = OutputClassMap(torch.nn.Identity(), ["a", "b", "c"], ["c", "x"])
    logits = torch.tensor([[5.0, 1.0, 0.0], [0.0, 1.0, 5.0], [1.0, 0.0, 0.5]])
    out = mapped(logits)
    assert out.shape == (3, 3)  # today's two classes + the champion's "a class today does not have"
    assert out.argmax(1).tolist() == [2, 0, 2]  # "a": no class of today's (a miss); "c": today's 0; "a" again
    assert out[:, 0].tolist() == [0.0, 5.0, 0.5] and (out[:, 1] < -1000).all()  # "x" was never learnt: never the answer
    pixels = mapped(torch.randn(2, 3, 4, 5))  # per-pixel logits (segmentation) map the same way
    assert pixels.shape == (2, 3, 4, 5)


def _colour_folders(root: Path, classes: dict[str, int], per_class: int = 3) -> None:
    from support import save_image

    for split in ("train", "val"):
        for name, value in classes.items():
            for i in range(per_class):
                save_image(root / split / name / f"{i}.png", size=(32, 32), value=value)


def test_a_champion_is_rescored_in_todays_classes_and_one_knowing_none_scores_zero(tmp_path):
    import torch

    from support import task_params
    from visionpipe import stages
    from visionpipe.tasks import parse_task_config
    from visionpipe.data import formats
    from visionpipe.tasks import get_task, get_task_class
    from visionpipe.tracking.champion import rescorer

    _colour_folders(tmp_path / "mine", {"cat": 20, "dog": 230})
    cfg = parse_task_config("classification", task_params("classification", tmp_path, data={"root": str(tmp_path / "mine")}))
    index = formats.read_dataset(get_task_class("classification"), tmp_path / "mine", cfg.data)
    score = rescorer("classification", index, cfg)

    def bundle(classes, favourite=None):
        torch.manual_seed(0)
        spec = stages.make_spec("classification", cfg, classes)
        model = get_task(spec).build_model()
        if favourite is not None:  # a champion that answers this class of its own for every image
            with torch.no_grad():
                model.get_classifier().bias[classes.index(favourite)] += 1000.0
        return {"spec": spec, "state_dict": model.state_dict()}

    # knows none of today's classes: every image is a miss, whatever its weights answer
    assert score(bundle(["circle", "square", "ring"]))["top1"] == 0.0
    # knows "dog" and two classes of its own: always answering "dog" is right on the 3 dogs of 6 images ...
    assert score(bundle(["circle", "dog", "ring"], favourite="dog"))["top1"] == 0.5
    # ... always answering "ring", a class today's data does not have, is right nowhere (not "the first class")
    assert score(bundle(["ring", "dog", "circle"], favourite="ring"))["top1"] == 0.0


def test_demo_and_user_data_never_share_a_registered_model():
    from visionpipe.tracking.registry import registered_model_name

    assert registered_model_name("classification", None, {"builtin": True, "root": "/p/data/01_raw/builtin/classification"}) \
        == "visionpipe-classification"
    assert registered_model_name("instance_segmentation", None, {"builtin": True}) == "visionpipe-instance-segmentation"
    assert registered_model_name("classification", None, {"root": "/p/data/01_raw/my digits"}) == "visionpipe-classification-my-digits"
    assert registered_model_name("classification", "pets", {"root": "/p/data/01_raw/mine"}) == "pets"  # registry.model_name wins


def test_gate_and_default_model_say_when_the_champions_classes_differ(tmp_path, monkeypatch):
    import time

    import mlflow

    from visionpipe.tracking import registry
    from visionpipe.tracking.lookup import default_model_uri

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert default_model_uri("classification", client) == "models:/visionpipe-classification@champion"  # empty store
    run = client.create_run("0")
    for name in ("visionpipe-classification", "visionpipe-classification-mine"):
        client.create_registered_model(name, tags={"visionpipe.task": "classification", "visionpipe.alias": "champion"})
        version = client.create_model_version(name, source=(tmp_path / "a").as_uri(), run_id=run.info.run_id,
                                              tags={"visionpipe.classes": json.dumps(["circle", "ring"]), "metric.top1": "0.9"})
        client.set_registered_model_alias(name, "champion", version.version)
        time.sleep(0.01)
    client.update_registered_model("visionpipe-classification-mine", description="trained last")
    assert default_model_uri("classification", client) == "models:/visionpipe-classification-mine@champion"
    client.update_registered_model("visionpipe-classification", description="the demo again")
    assert default_model_uri("classification", client) == "models:/visionpipe-classification@champion"

    monkeypatch.setattr(registry, "download_bundle", lambda uri: {})
    verdict = registry.gate(client, version, "top1", 0.5, True, "fp", ["cat", "dog"], lambda bundle: {"top1": 0.0})
    assert verdict["promoted"] is True and verdict["champion_score"] == 0.0
    assert verdict["classes_note"].startswith(f"champion v{version.version} knows none of today's 2 classes")
    assert verdict["reason"].endswith(verdict["classes_note"])


def _sh(repo: Path, *cmd: str) -> str:
    """Run a command as a user would in the clone: no telemetry opt-out in the environment (the project's own
    .telemetry answers), the venv's programs first."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_TRACKING", "DVC_")) and k not in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK", "VISIONPIPE_VERBOSE")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", COLUMNS="200", VISIONPIPE_SYSTEM_METRICS="false",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
    proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_own_data_after_the_demo_in_a_fresh_clone(tmp_path):
    """The README's route: the demo, then `dvc add` of the user's folder (classes the demo never had), a run on
    it, `predict` in the user's classes, and `visionpipe reproduce` restoring the data by md5 after it changed."""
    from support import dvc_project, save_image

    repo = dvc_project(tmp_path)
    _sh(repo, "git", "init", "-q")
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-qm", "fresh clone")
    out = _sh(repo, "kedro", "run", "--pipelines=classification")  # the demo: visionpipe-classification
    _colour_folders(repo / "data/01_raw/mine", {"cat": 20, "dog": 230}, per_class=4)
    _sh(repo, "dvc", "add", "data/01_raw/mine")  # the .dvc file is not git-ignored; DVC stages it (core.autostage)
    _sh(repo, "git", "commit", "-qm", "my data")
    out += _sh(repo, "kedro", "run", "--pipelines=classification", "--params=classification.data.root=data/01_raw/mine")
    assert "telemetry" not in out.lower() and "Heap" not in out
    assert re.search(r"weights +from scratch \(model.pretrained: auto\)", out)  # offline, nothing cached: said in the summary

    decision = json.loads((repo / "data/08_reporting/classification/registration.json").read_text())
    assert decision["model_name"] == "visionpipe-classification-mine" and decision["champion_version"] is None
    import mlflow
    import yaml

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    recorded = yaml.safe_load((repo / "data/01_raw/mine.dvc").read_text())["outs"][0]["md5"]
    assert client.get_run(decision["run_id"]).data.tags["data.dvc_md5"] == recorded

    predicted = _sh(repo, "visionpipe", "predict", "--task", "classification", "--images", "data/01_raw/mine/val",
                    "--output", "predictions.jsonl", "--no-progress")
    assert "models:/visionpipe-classification-mine@champion" in predicted
    rows = [json.loads(line) for line in (repo / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["label"] for r in rows} <= {"cat", "dog"}  # the user's classes, never "circle"

    save_image(repo / "data/01_raw/mine/val/cat/0.png", size=(32, 32), value=200)  # the folder changes afterwards
    save_image(repo / "data/01_raw/mine/train/dog/extra.png", size=(32, 32), value=90)
    out = _sh(repo, "visionpipe", "reproduce", "models:/visionpipe-classification-mine/1")
    assert "reproduced: metrics equal within tolerance" in out and recorded in out


def test_the_short_experiments_view_keeps_headline_metrics_and_parameters():
    import re

    from visionpipe.experiments.cli import short_view_drop

    drop = re.compile(short_view_drop())
    kept = ["Experiment", "Created", "top1", "map", "miou", "mask_map", "test/top1",
            "data/08_reporting/detection/metrics.json:map", "classification.train.lr", "detection.model.backbone"]
    dropped = ["val_loss", "top5", "ap/circle", "iou/background", "val_images", "eval_time_s",
               "data/01_raw/builtin/classification", "data/08_reporting/detection/metrics.json:val_loss"]
    assert not [c for c in kept if drop.search(c)] and all(drop.search(c) for c in dropped)


def _hub_cache(tmp_path, monkeypatch, weights: dict | None):
    """An offline Hugging Face hub cache holding ``weights`` as timm's published resnet10t (or nothing)."""
    import huggingface_hub.constants as hf
    import safetensors.torch

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    if weights is not None:
        repo = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k"
        snapshot = repo / "snapshots" / ("0" * 40)
        snapshot.mkdir(parents=True)
        safetensors.torch.save_file(weights, str(snapshot / "model.safetensors"))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)


def _published(fill: float = 0.5) -> dict:
    """Weights of timm's resnet10t (1000 classes) with every float tensor set to ``fill``: recognisable once loaded."""
    import timm
    import torch

    return {k: torch.full_like(v, fill) if v.is_floating_point() else v
            for k, v in timm.create_model("resnet10t", pretrained=False).state_dict().items()}


def _spec(pretrained, name: str = "resnet10t", **kwargs):
    from support import task_params
    from visionpipe import stages
    from visionpipe.tasks import parse_task_config

    cfg = parse_task_config("classification", task_params("classification", model={"name": name, "pretrained": pretrained, "kwargs": kwargs}))
    return stages.make_spec("classification", cfg, ["cat", "dog"])


def test_pretrained_auto_takes_published_weights_from_the_hub_cache_for_user_data(tmp_path, monkeypatch):
    from visionpipe import stages

    _hub_cache(tmp_path, monkeypatch, _published())
    spec = _spec("auto")
    _, model = stages.build_initial_model("classification", spec, {"root": str(tmp_path / "mine")})
    assert spec["model"]["pretrained"] is True and "weights_note" not in spec
    assert (model.conv1[0].weight == 0.5).all() and model.fc.weight.shape == (2, 512)  # body published, head for 2 classes
    # the built-in data stays offline and deterministic: never the published weights, even when cached
    spec = _spec("auto")
    _, model = stages.build_initial_model("classification", spec, {"builtin": True})
    assert spec["model"]["pretrained"] is False and not (model.conv1[0].weight == 0.5).all()


def test_pretrained_auto_without_weights_trains_from_scratch_and_says_how_to_get_them(tmp_path, monkeypatch):
    from visionpipe import stages
    from visionpipe.errors import ConfigError

    _hub_cache(tmp_path, monkeypatch, None)  # offline, nothing cached
    spec = _spec("auto")
    _, model = stages.build_initial_model("classification", spec, {"root": str(tmp_path / "mine")})
    assert spec["model"]["pretrained"] is False
    assert spec["weights_note"].startswith("from scratch (model.pretrained: auto)") and "pretrained_path" in spec["weights_note"]
    with pytest.raises(ConfigError, match="model.pretrained"):  # asked for explicitly, missing weights stay an error
        stages.build_initial_model("classification", _spec(True), {"root": str(tmp_path / "mine")})
    # the default model (resnet10t_nano) has no published weights at all: the note names a model that has them
    spec = _spec("auto", name="resnet10t_nano")
    stages.build_initial_model("classification", spec, {"root": str(tmp_path / "mine")})
    assert spec["model"]["pretrained"] is False
    assert "'resnet10t_nano' has no published weights" in spec["weights_note"] and "e.g. resnet10t" in spec["weights_note"]


def test_reset_head_always_reinitialises_the_classifier(tmp_path, monkeypatch):
    from visionpipe.engine.checkpoint import save_weights
    from visionpipe.tasks.classification import build_classifier

    _hub_cache(tmp_path, monkeypatch, _published())
    kept = build_classifier({"name": "resnet10t", "pretrained": True}, 1000)  # as many classes as the published head
    fresh = build_classifier({"name": "resnet10t", "pretrained": True, "kwargs": {"reset_head": True}}, 1000)
    assert (kept.fc.weight == 0.5).all()
    assert (fresh.conv1[0].weight == 0.5).all() and not (fresh.fc.weight == 0.5).any()
    # a 5-class model fine-tuned on 5 new classes: the old head is not kept either
    five = {k: v for k, v in build_classifier({"name": "resnet10t"}, 5).state_dict().items()}
    five = {k: v.fill_(0.25) if v.is_floating_point() else v for k, v in five.items()}
    save_weights(five, tmp_path / "five.safetensors")
    new = build_classifier({"name": "resnet10t", "pretrained_path": str(tmp_path / "five.safetensors"),
                            "kwargs": {"reset_head": True}}, 5)
    assert (new.conv1[0].weight == 0.25).all() and not (new.fc.weight == 0.25).any()


def test_data_add_copies_a_folder_into_data_raw_under_dvc(tmp_path):
    import shutil

    from click.testing import CliRunner

    from visionpipe.cli import cli
    from visionpipe.experiments.own_data import dvc_program

    repo = tmp_path / "clone"
    (repo / "data/01_raw").mkdir(parents=True)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc_program(), "init", "-q"], cwd=repo, check=True)
    shutil.copy(ROOT / ".dvc/config", repo / ".dvc/config")  # the project's: core.autostage stages the .dvc file
    _colour_folders(tmp_path / "my photos", {"cat": 20}, per_class=1)
    result = CliRunner().invoke(cli, ["data", "add", str(tmp_path / "my photos"), "--project", str(repo)])
    assert result.exit_code == 0, result.output
    assert (repo / "data/01_raw/my-photos/train/cat/0.png").is_file() and "kedro run" in result.output
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert "data/01_raw/my-photos.dvc" in staged and "data/01_raw/.gitignore" in staged  # committable, not ignored
    again = CliRunner().invoke(cli, ["data", "add", str(tmp_path / "my photos"), "--project", str(repo)])
    assert again.exit_code != 0 and "already exists" in again.output and "Traceback" not in again.output
