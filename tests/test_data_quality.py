"""Leakage and duplicates, dataset statistics, the readable report, and the validation details of issue 13."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import save_image, task_params
from visionpipe.tasks import get_task_class, parse_task_config
from visionpipe.data import formats, quality, validation
from visionpipe.errors import ConfigError, DataError


def _photo(path: Path, seed: int, size=(64, 48)) -> Path:
    """A smooth random picture (gradients survive resizing, unlike noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


def _leaky_index(tmp_path):
    _photo(tmp_path / "train" / "x" / "t1.png", 1)
    _photo(tmp_path / "train" / "x" / "t2.png", 2)
    _photo(tmp_path / "train" / "y" / "t3.png", 3)
    _photo(tmp_path / "train" / "y" / "t3_copy.png", 3)  # the same bytes inside train: a duplicate, not leakage
    (tmp_path / "val" / "x").mkdir(parents=True)
    (tmp_path / "val" / "x" / "v1.png").write_bytes((tmp_path / "train" / "x" / "t1.png").read_bytes())  # exact leak
    Image.open(tmp_path / "train" / "x" / "t2.png").resize((80, 60)).save(tmp_path / "val" / "x" / "v2.png")  # near leak
    _photo(tmp_path / "val" / "y" / "v3.png", 4)
    rec = lambda split, cls, name, label: {"image": f"{split}/{cls}/{name}", "label": label}  # noqa: E731
    return {"task": "classification", "format": "imagefolder", "root": str(tmp_path), "classes": ["x", "y"], "problems": [],
            "train": [rec("train", "x", "t1.png", 0), rec("train", "x", "t2.png", 0), rec("train", "y", "t3.png", 1),
                      rec("train", "y", "t3_copy.png", 1)],
            "val": [rec("val", "x", "v1.png", 0), rec("val", "x", "v2.png", 0), rec("val", "y", "v3.png", 1)]}


def test_exact_and_near_duplicates_across_splits_are_leakage(tmp_path):
    index = _leaky_index(tmp_path)
    report = validation.validate_index(get_task_class(index["task"]), index)
    pairs = {(d["kind"], d["leakage"], d["a"]["image"], d["b"]["image"]) for d in report["quality"]["duplicates"]}
    assert pairs == {("exact", True, "train/x/t1.png", "val/x/v1.png"), ("near", True, "train/x/t2.png", "val/x/v2.png"),
                     ("exact", False, "train/y/t3.png", "train/y/t3_copy.png")}
    kinds = sorted(w["kind"] for w in report["warnings"])
    assert kinds == ["duplicate", "leakage", "leakage"] and report["findings"] == []

    report["leakage"] = "warn"
    clean, _ = validation.apply_policy(get_task_class(index["task"]), index, report, "strict")  # a warning drops nothing
    assert len(clean["val"]) == 3
    report["leakage"] = "error"
    with pytest.raises(DataError, match=r"2 image pair\(s\) leak between splits \(first: train/x/t1.png ~ val/x/v1.png; "
                                         r"train/x/t2.png ~ val/x/v2.png\).*data.leakage: warn"):
        validation.apply_policy(get_task_class(index["task"]), index, report, "strict")


def test_a_test_split_is_checked_too(tmp_path):
    index = _leaky_index(tmp_path)
    index["test"] = [{"image": "train/y/t3.png", "label": 1}]
    report = validation.validate_index(get_task_class(index["task"]), index)
    assert report["checked"]["test"] == 1
    assert any(d["leakage"] and "test" in (d["a"]["split"], d["b"]["split"]) for d in report["quality"]["duplicates"])


def test_detection_statistics_by_hand():
    boxes = [[0, 0, 10, 10], [0, 0, 40, 40], [0, 0, 100, 100]]
    index = {"task": "detection", "root": ".", "classes": ["car", "dog"],
             "train": [{"image": "a", "boxes": boxes[:2], "labels": [0, 0]}, {"image": "b", "boxes": boxes[2:], "labels": [1]}],
             "val": [{"image": "c", "boxes": [], "labels": []}]}
    train = quality.statistics(get_task_class(index["task"]), index)["splits"]["train"]
    assert train["objects_per_class"] == {"car": 2, "dog": 1} and train["images_per_class"] == {"car": 1, "dog": 1}
    assert train["objects_per_image"]["mean"] == 1.5 and train["objects_per_image"]["max"] == 2
    assert train["box_size_bins"] == {"small": 1, "medium": 1, "large": 1} and train["box_size_px"]["median"] == 40
    assert train["balance"] == 1.0


def test_a_class_with_one_training_image_is_a_warning(tmp_path):
    index = _leaky_index(tmp_path)
    index["train"] = index["train"][:3]  # y keeps one training image
    warnings = validation.validate_index(get_task_class(index["task"]), index)["warnings"]
    assert any(w["kind"] == "rare_class" and "class 'y' has 1 training image" in w["problem"] for w in warnings)


def test_skip_removes_a_class_left_without_training_images(tmp_path):
    save_image(tmp_path / "a" / "ok.png", value=10)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.png").write_bytes(b"garbage")
    save_image(tmp_path / "c" / "ok.png", value=200)
    save_image(tmp_path / "v" / "b.png", value=90)
    save_image(tmp_path / "v" / "c.png", value=160)
    index = {"task": "classification", "format": "imagefolder", "root": str(tmp_path), "classes": ["a", "b", "c"], "problems": [],
             "train": [{"image": "a/ok.png", "label": 0}, {"image": "b/broken.png", "label": 1}, {"image": "c/ok.png", "label": 2}],
             "val": [{"image": "v/b.png", "label": 1}, {"image": "v/c.png", "label": 2}]}
    clean, summary = validation.apply_policy(get_task_class(index["task"]), index, validation.validate_index(get_task_class(index["task"]), index), "skip")
    assert clean["classes"] == ["a", "c"] and summary["removed_classes"] == ["b"]
    assert clean["train"] == [{"image": "a/ok.png", "label": 0}, {"image": "c/ok.png", "label": 1}]
    assert clean["val"] == [{"image": "v/c.png", "label": 1}] and summary["val"] == {"kept": 1, "dropped": 1}


def test_skip_removes_an_untrained_detection_class_and_its_boxes():
    clean = {"task": "detection", "classes": ["car", "dog", "cat"],
             "train": [{"image": "a", "boxes": [[0, 0, 5, 5]], "labels": [2], "iscrowd": [0]}],
             "val": [{"image": "b", "boxes": [[0, 0, 5, 5], [1, 1, 6, 6]], "labels": [0, 2], "iscrowd": [0, 0]}]}
    assert validation._drop_untrained_classes(get_task_class(clean["task"]), clean) == ["car", "dog"]
    assert clean["classes"] == ["cat"] and clean["val"][0]["boxes"] == [[1, 1, 6, 6]] and clean["val"][0]["labels"] == [0]


def test_a_duplicate_coco_image_id_drops_only_the_duplicate_entry(tmp_path):
    for split in ("train", "val"):
        save_image(tmp_path / "images" / split / "a.png")
    content = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}, {"id": 1, "file_name": "a.png", "width": 16, "height": 16}],
               "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    from visionpipe.tasks.detection import DetectionData

    index = formats.read_coco(tmp_path, DetectionData(format="coco"), annotations="boxes")
    index.update(task="detection", format="coco", root=str(tmp_path))
    clean, summary = validation.apply_policy(get_task_class(index["task"]), index, validation.validate_index(get_task_class(index["task"]), index), "skip")
    assert [r["image"] for r in clean["train"]] == ["images/train/a.png"] and summary["train"]["dropped"] == 0


def test_a_mask_without_its_image_is_reported(tmp_path):
    for split in ("train", "val"):
        save_image(tmp_path / split / "images" / "a.png", (8, 8))
        save_image(tmp_path / split / "masks" / "a.png", (8, 8), mode="L", value=0)
    save_image(tmp_path / "train" / "masks" / "orphan.png", (8, 8), mode="L", value=0)
    index = formats.read_mask_folders(tmp_path, ["bg", "fg"])
    assert [(p["split"], Path(p["file"]).name) for p in index["problems"]] == [("train", "orphan.png")]
    assert "mask has no image named orphan" in index["problems"][0]["problem"]


def test_markdown_and_plot(tmp_path):
    index = _leaky_index(tmp_path)
    report = {**validation.validate_index(get_task_class(index["task"]), index), "leakage": "warn"}
    text = quality.markdown(report)
    assert "# Data quality: classification" in text and "Leakage (same or nearly the same image in two splits): 2" in text
    assert "| x | 2 |" in text and "| leakage (exact) | train | `train/x/t1.png` | val | `val/x/v1.png` | 0 | 0.000 |" in text
    assert "| duplicate (exact) | train | `train/y/t3.png` | train | `train/y/t3_copy.png` |" in text
    fig = quality.plot(report)
    assert [a.get_title() for a in fig.axes] == ["Images per class"]


def test_unknown_registry_metric_and_leakage_values_fail_at_parsing():
    with pytest.raises(ConfigError, match=r"classification.registry.metric: unknown metric 'accuracy'.*top1"):
        parse_task_config("classification", task_params("classification", registry={"metric": "accuracy"}))
    assert parse_task_config("segmentation", task_params("segmentation", registry={"metric": "iou/background"})).registry.metric
    with pytest.raises(ConfigError, match="data.leakage"):
        parse_task_config("classification", task_params("classification", data={"leakage": "ignore"}))
    with pytest.raises(ConfigError, match="near_duplicates"):
        parse_task_config("classification", task_params("classification", data={"near_duplicates": {"bits": 3}}))


def test_near_duplicate_parameters_are_honoured(tmp_path):
    index = _leaky_index(tmp_path)
    task_cls = get_task_class("classification")
    cfg = parse_task_config("classification", task_params("classification")).data
    near = lambda **k: [d for d in validation.validate_index(task_cls, index, cfg.model_copy(  # noqa: E731
        update={"near_duplicates": cfg.near_duplicates.model_copy(update=k)}))["quality"]["duplicates"] if d["kind"] == "near"]
    assert len(near()) == 1  # the resized copy v2 of t2
    assert near(max_pixel_difference=0.0) == []  # no pixel may differ: only exact copies are left
    assert cfg.near_duplicates.hash_bits == 4 and cfg.allow_outside_root is False
