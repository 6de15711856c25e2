"""A user's own data after the demo: quiet tools, run-control keys, the champion in the user's classes,
registered model names, pretrained weights from the hub cache."""

from __future__ import annotations

import json
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

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert registry.default_model_uri("classification", client) == "models:/visionpipe-classification@champion"  # empty store
    run = client.create_run("0")
    for name in ("visionpipe-classification", "visionpipe-classification-mine"):
        client.create_registered_model(name, tags={"visionpipe.task": "classification", "visionpipe.alias": "champion"})
        version = client.create_model_version(name, source=(tmp_path / "a").as_uri(), run_id=run.info.run_id,
                                              tags={"visionpipe.classes": json.dumps(["circle", "ring"]), "metric.top1": "0.9"})
        client.set_registered_model_alias(name, "champion", version.version)
        time.sleep(0.01)
    client.update_registered_model("visionpipe-classification-mine", description="trained last")
    assert registry.default_model_uri("classification", client) == "models:/visionpipe-classification-mine@champion"
    client.update_registered_model("visionpipe-classification", description="the demo again")
    assert registry.default_model_uri("classification", client) == "models:/visionpipe-classification@champion"

    monkeypatch.setattr(registry, "download_bundle", lambda uri: {})
    verdict = registry.gate(client, version, "top1", 0.5, True, "fp", ["cat", "dog"], lambda bundle: {"top1": 0.0})
    assert verdict["promoted"] is True and verdict["champion_score"] == 0.0
    assert verdict["classes_note"].startswith(f"champion v{version.version} knows none of today's 2 classes")
    assert verdict["reason"].endswith(verdict["classes_note"])
