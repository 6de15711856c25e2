"""The optional test split: read from each format's layout or held out by data.test_fraction, validated,
evaluated with ``test/`` keys, and compared by the champion gate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from support import task_params
from support import write_coco_scenes, write_voc_scenes, write_yolo_scenes
from visionpipe import stages
from visionpipe.tasks import get_task_class, parse_task_config
from visionpipe.data import formats, validation
from visionpipe.errors import ConfigError


def _copy_val_to_test(root: Path, fmt: str) -> None:
    if fmt == "coco":
        shutil.copy(root / "annotations" / "instances_val.json", root / "annotations" / "instances_test.json")
        shutil.copytree(root / "images" / "val", root / "images" / "test")
    elif fmt == "voc":
        shutil.copy(root / "ImageSets" / "Main" / "val.txt", root / "ImageSets" / "Main" / "test.txt")
    elif fmt == "yolo":
        shutil.copytree(root / "images" / "val", root / "images" / "test")
        shutil.copytree(root / "labels" / "val", root / "labels" / "test")
    else:  # imagefolder and masks: root/val/... -> root/test/...
        shutil.copytree(root / "val", root / "test")


def _strip(records):
    return sorted((Path(r["image"]).name, tuple(r.get("labels", [r.get("label")]))) for r in records)


@pytest.mark.parametrize("fmt,writer", [("coco", write_coco_scenes), ("voc", write_voc_scenes), ("yolo", write_yolo_scenes)])
def test_detection_layouts_read_an_optional_test_split(tmp_path, fmt, writer):
    writer(tmp_path)
    cfg = parse_task_config("detection", task_params("detection", data={"root": str(tmp_path), "format": fmt})).data
    assert "test" not in formats.read_dataset(get_task_class("detection"), tmp_path, cfg)
    _copy_val_to_test(tmp_path, fmt)
    index = formats.read_dataset(get_task_class("detection"), tmp_path, cfg)
    assert _strip(index["test"]) == _strip(index["val"]) and len(index["test"]) == 2
    assert all(r["image"].startswith("images/test/") for r in index["test"]) or fmt == "voc"


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_folder_layouts_read_a_test_split_and_validation_checks_it(tmp_path, task):
    cfg = parse_task_config(task, task_params(task, tmp_path))
    builtin_index = stages.ingest(task, cfg)
    root = Path(builtin_index["root"])
    _copy_val_to_test(root, "folders")
    data = cfg.data.model_copy(update={"root": str(root), "format": builtin_index["format"], "classes": builtin_index["classes"]})
    index = formats.read_dataset(get_task_class(task), root, data)
    assert len(index["test"]) == len(index["val"]) > 0
    assert all(r["image"].startswith("test/") for r in index["test"])
    report = validation.validate_index(get_task_class(index["task"]), index, data)
    assert report["checked"]["test"] == len(index["test"])
    clean, summary = validation.apply_policy(get_task_class(index["task"]), index, report, "skip")
    assert summary["test"]["kept"] == len(index["test"]) and clean["test"] == index["test"]


def test_test_fraction_holds_out_part_of_train_stratified_and_seeded(tmp_path):
    cfg = parse_task_config("classification", task_params("classification", tmp_path))
    plain = stages.ingest("classification", cfg)
    data = cfg.data.model_copy(update={"root": plain["root"], "test_fraction": 0.25, "classes": plain["classes"]})
    index = formats.read_dataset(get_task_class("classification"), plain["root"], data)
    assert sorted(r["image"] for r in index["train"] + index["test"]) == sorted(r["image"] for r in plain["train"])
    assert not {r["image"] for r in index["train"]} & {r["image"] for r in index["test"]}
    per_class = [sum(r["label"] == c for r in index["test"]) for c in range(len(index["classes"]))]
    assert per_class == [1] * 6  # 4 train images a class in the tiny data: a quarter is one each
    assert index["test"] == formats.read_dataset(get_task_class("classification"), plain["root"], data)["test"]  # seeded
    assert index["val"] == plain["val"]


@pytest.mark.slow  # trains
def test_test_metrics_are_reported_and_gate_on_test(tmp_path):
    cfg = parse_task_config("classification", task_params("classification", tmp_path))
    builtin_index = stages.ingest("classification", cfg)
    aug = stages.augmentation("classification", cfg)
    bundle, _ = stages.train("classification", builtin_index, aug, cfg, callbacks=[])
    metrics, _, _ = stages.evaluate("classification", builtin_index, aug, bundle, cfg)
    assert not any(k.startswith("test/") for k in metrics)
    assert stages.gate_metric("top1", metrics) == "top1"
    with pytest.raises(ConfigError, match="needs a test split"):
        stages.gate_metric("test/top1", metrics)

    # the test split is a copy of val: its metrics must equal val's exactly
    index = {**builtin_index, "test": list(builtin_index["val"])}
    with_test, _, _ = stages.evaluate("classification", index, aug, bundle, cfg)
    for key in ("top1", "top5", "val_loss"):
        assert with_test[f"test/{key}"] == pytest.approx(with_test[key])
    assert with_test["test_images"] == len(index["test"])
    assert stages.gate_metric("top1", with_test) == "test/top1"
    assert stages.gate_metric("test/top1", with_test) == "test/top1"
