"""The champion gate compares like with like, classes are matched by name, half-made versions are repaired."""

from __future__ import annotations

import json

import pytest
import torch

from support import task_params
from visionpipe.tracking import registry
from visionpipe.tracking.champion import UNKNOWN_CLASS_BIAS, class_layout, remap_bundle, remap_state_dict, split_fingerprint


def test_classifier_rows_follow_the_class_names():
    old = {"fc.weight": torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), "fc.bias": torch.tensor([0.1, 0.2, 0.3]),
           "body.weight": torch.ones(2, 2)}
    new = remap_state_dict(old, {"fc.weight": (1, 0), "fc.bias": (1, 0)}, ["cat", "dog", "bird"], ["dog", "fish", "cat"])
    assert new["fc.weight"].tolist() == [[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]]
    assert new["fc.bias"].tolist() == pytest.approx([0.2, UNKNOWN_CLASS_BIAS, 0.1])
    assert new["body.weight"] is old["body.weight"]


def test_background_row_and_anchors_are_kept_in_place():
    # two-stage detector: background + 2 classes; one-stage: 2 anchors x 2 classes (anchor-major)
    old = {"cls_score.bias": torch.tensor([9.0, 1.0, 2.0]), "cls_logits.bias": torch.tensor([1.0, 2.0, 10.0, 20.0]),
           "bbox_pred.bias": torch.arange(12.0)}
    layout = class_layout({"cls_score.bias": (3,), "cls_logits.bias": (4,), "bbox_pred.bias": (12,), "x": (5,)},
                          {"cls_score.bias": (4,), "cls_logits.bias": (6,), "bbox_pred.bias": (16,), "x": (5,)}, 2)
    assert layout == {"cls_score.bias": (1, 1), "cls_logits.bias": (2, 0), "bbox_pred.bias": (4, 1)}
    new = remap_state_dict(old, layout, ["a", "b"], ["b", "z"])
    assert new["cls_score.bias"].tolist() == pytest.approx([9.0, 2.0, UNKNOWN_CLASS_BIAS])
    assert new["cls_logits.bias"].tolist() == pytest.approx([2.0, UNKNOWN_CLASS_BIAS, 20.0, UNKNOWN_CLASS_BIAS])
    # box deltas class by class: background 0..3, a 4..7, b 8..11 -> background, b, zeros
    assert new["bbox_pred.bias"].tolist() == [0.0, 1.0, 2.0, 3.0, 8.0, 9.0, 10.0, 11.0, 0.0, 0.0, 0.0, 0.0]


def test_a_remapped_champion_scores_known_classes_as_before():
    from visionpipe import stages
    from visionpipe.tasks import parse_task_config
    from visionpipe.tasks import get_task

    cfg = parse_task_config("classification", task_params("classification"))
    spec = stages.make_spec("classification", cfg, ["a", "b", "c"])
    model = get_task(spec).build_model().eval()
    bundle = {"spec": spec, "state_dict": model.state_dict()}
    remapped = remap_bundle(bundle, ["c", "x", "a"])  # same number of classes: matched by name all the same
    new_model = get_task(remapped["spec"]).build_model().eval()
    new_model.load_state_dict(remapped["state_dict"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        old_out, new_out = model(x), new_model(x)
    assert torch.allclose(new_out[:, 0], old_out[:, 2], atol=1e-5) and torch.allclose(new_out[:, 2], old_out[:, 0], atol=1e-5)
    assert (new_out[:, 1] < -1000).all()  # a class the champion never saw is never its answer


def test_split_fingerprint_changes_with_the_split_only(tmp_path):
    index = {"root": str(tmp_path), "classes": ["a"], "train": [{"image": "t.png", "label": 0}], "val": [{"image": "v.png", "label": 0}]}
    before = split_fingerprint(index, "val")
    assert split_fingerprint({**index, "train": []}, "val") == before
    assert split_fingerprint({**index, "val": [{"image": "w.png", "label": 0}]}, "val") != before
    assert split_fingerprint({**index, "classes": ["b"]}, "val") != before


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")  # created once: migrations are slow


_models = iter(range(1000))


@pytest.fixture
def client(store):
    """The shared store, with a fresh registered model ``m<N>`` (``store.m``) for each test."""
    store.m = f"m{next(_models)}"
    store.create_registered_model(store.m)
    return store


def _version(client, tmp_path, status: str, **tags):
    exp = client.get_experiment_by_name("Default") or client.get_experiment("0")
    run = client.create_run(exp.experiment_id)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status=status)
    return client.create_model_version(client.m, source=(tmp_path / "artifacts").as_uri(), run_id=run.info.run_id,
                                       tags={k.replace("__", "."): v for k, v in tags.items()})


def test_a_half_registered_version_is_tagged_and_loses_the_alias(client, tmp_path):
    v1 = _version(client, tmp_path, "FINISHED", visionpipe__registration="complete")
    v2 = _version(client, tmp_path, "KILLED", visionpipe__registration="pending", visionpipe__previous_champion=v1.version)
    v3 = _version(client, tmp_path, "RUNNING", visionpipe__registration="pending", visionpipe__previous_champion=v1.version)
    client.set_registered_model_alias(client.m, "champion", v2.version)  # killed after moving the alias
    assert registry.recover_incomplete(client, client.m, "champion") == [int(v2.version)]
    assert client.get_model_version(client.m, v2.version).tags[registry.TAG_INCOMPLETE] == "true"
    assert client.get_model_version_by_alias(client.m, "champion").version == v1.version
    assert registry.TAG_INCOMPLETE not in client.get_model_version(client.m, v3.version).tags  # still being registered


def test_alias_is_removed_when_the_incomplete_version_had_no_predecessor(client, tmp_path):
    v1 = _version(client, tmp_path, "FAILED", visionpipe__registration="pending", visionpipe__previous_champion="none")
    client.set_registered_model_alias(client.m, "champion", v1.version)
    registry.recover_incomplete(client, client.m, "champion")
    assert registry._champion(client, client.m, "champion") is None


def test_same_data_compares_recorded_scores_without_rescoring(client, tmp_path):
    champion = _version(client, tmp_path, "FINISHED", metric__top1="0.9", visionpipe__eval_fingerprint="fp",
                        visionpipe__classes=json.dumps(["a", "b"]))

    def never(bundle):
        raise AssertionError("re-scored although the data is the same")

    verdict = registry.gate(client, champion, "top1", 0.8, True, "fp", ["a", "b"], never)
    assert verdict["promoted"] is False and verdict["champion_score"] == 0.9 and "same evaluation data" in verdict["reason"]


def test_other_data_rescores_the_champion_before_deciding(client, tmp_path, monkeypatch):
    champion = _version(client, tmp_path, "FINISHED", metric__top1="1.0", visionpipe__eval_fingerprint="tiny-data",
                        visionpipe__classes=json.dumps(["a", "b"]))
    monkeypatch.setattr(registry, "download_bundle", lambda uri: {"uri": uri})
    seen = []
    verdict = registry.gate(client, champion, "top1", 0.5, True, "real-data", ["a", "b"], lambda b: seen.append(b) or {"top1": 0.2})
    assert seen == [{"uri": f"models:/{client.m}/{champion.version}"}]
    assert verdict["promoted"] is True and verdict["champion_score"] == 0.2 and verdict["champion_recorded_score"] == 1.0
    assert "re-scored on today's split" in verdict["reason"] and verdict["champion_fingerprint"] == "tiny-data"
    # other classes, same files: still re-scored, and the reason says why
    verdict = registry.gate(client, champion, "top1", 0.1, True, "tiny-data", ["a", "c"], lambda b: {"top1": 0.3})
    assert verdict["promoted"] is False and "other classes" in verdict["reason"]


def test_a_champion_that_cannot_be_rescored_never_wins_by_its_old_number(client, tmp_path, monkeypatch):
    champion = _version(client, tmp_path, "FINISHED", metric__top1="1.0")
    monkeypatch.setattr(registry, "download_bundle", lambda uri: (_ for _ in ()).throw(OSError("artifacts gone")))
    verdict = registry.gate(client, champion, "top1", 0.1, True, "fp", ["a"], lambda b: {"top1": 1.0})
    assert verdict["promoted"] is True and verdict["champion_score"] is None and "re-scoring it failed (OSError)" in verdict["reason"]


def test_logged_models_are_named_for_what_they_are():
    spec = {"task": "detection", "model": {"name": "fcos", "backbone": "resnet10t"}}
    assert registry.model_label(spec) == "detection-fcos-resnet10t"
    assert registry.model_label({"task": "classification", "model": {"name": "resnet10t", "backbone": None}}) == "classification-resnet10t"
    assert registry.model_label({"task": "segmentation", "model": {"name": "Unet", "backbone": "tu-resnet10t"}}) == "segmentation-Unet-tu-resnet10t"
