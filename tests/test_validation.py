"""Bad data: every finding names the file; strict fails, skip drops and reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support import save_image
from visionpipe.data import formats, images, validation
from visionpipe.tasks import get_task_class
from visionpipe.errors import DataError


def _findings(index):
    return validation.validate_index(get_task_class(index["task"]), index)["findings"]


def _cls_index(root: Path, records, classes=("a", "b")):
    return {"task": "classification", "format": "imagefolder", "root": str(root), "classes": list(classes),
            "train": records, "val": records, "problems": []}


def test_unreadable_truncated_and_empty_images_are_reported(tmp_path):
    save_image(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "empty.png").write_bytes(b"")
    good = (tmp_path / "a" / "ok.png").read_bytes()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cut.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "b" / "text.jpg").write_text("not an image")
    records = [{"image": "a/ok.png", "label": 0}, {"image": "a/empty.png", "label": 0},
               {"image": "b/cut.png", "label": 1}, {"image": "b/text.jpg", "label": 1}]
    found = {(Path(f["file"]).name, f["split"]) for f in _findings(_cls_index(tmp_path, records))}
    assert {("empty.png", "train"), ("cut.png", "train"), ("text.jpg", "train")} <= found
    assert not any(name == "ok.png" for name, _ in found)
    problems = {Path(f["file"]).name: f["problem"] for f in _findings(_cls_index(tmp_path, records))}
    assert "zero-byte" in problems["empty.png"]
    assert "cannot decode" in problems["text.jpg"]


def test_decompression_bomb_is_refused(tmp_path):
    save_image(tmp_path / "a" / "huge.png", size=(300, 300))
    report = validation.validate_index(get_task_class("classification"), _cls_index(tmp_path, [{"image": "a/huge.png", "label": 0}], ("a",)), max_pixels=10_000)
    assert any("over the limit" in f["problem"] and f["file"].endswith("huge.png") for f in report["findings"])


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "L", "LA", "RGBA"])
def test_unusual_modes_convert_to_rgb(tmp_path, mode):
    path = save_image(tmp_path / f"x_{mode.replace(';', '')}.png" if mode != "CMYK" else tmp_path / "x.jpg", mode=mode)
    pixels = images.load_rgb(path)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    if mode == "I;16":
        assert pixels.max() == round(40000 / 65535 * 255)  # scaled, not clipped to 255


def test_imagefolder_empty_class_and_val_only_class(tmp_path):
    for split in ("train", "val"):
        save_image(tmp_path / split / "cat" / "1.png")
    (tmp_path / "train" / "dog").mkdir()
    save_image(tmp_path / "val" / "bird" / "1.png")
    index = formats.read_imagefolder(tmp_path, 0.2, 0)
    index.update(task="classification", format="imagefolder", root=str(tmp_path))
    problems = [f["problem"] for f in _findings(index)]
    assert any("'dog' has no images" in p for p in problems)
    assert any("'bird'" in p and "not in the training classes" in p for p in problems)
    assert any("class 'dog' has no training images" in p for p in problems)


def _det_index(root, records):
    return {"task": "detection", "format": "coco", "root": str(root), "classes": ["x", "y"], "train": records, "val": records, "problems": []}


def test_bad_boxes_and_missing_images(tmp_path):
    save_image(tmp_path / "i.png", size=(20, 10))
    base = {"image": "i.png", "image_id": 1, "width": 20, "height": 10, "iscrowd": [0]}
    records = [
        {**base, "boxes": [[2, 2, 2, 8]], "labels": [0]},            # zero width
        {**base, "boxes": [[5, 5, 3, 8]], "labels": [0]},            # negative width
        {**base, "boxes": [[0, 0, 30, 8]], "labels": [1]},           # outside the image
        {**base, "boxes": [[0, 0, 5, 5]], "labels": [4]},            # unknown class
        {**base, "image": "gone.png", "boxes": [], "labels": [], "iscrowd": []},
        {**base, "boxes": [[0, 0, 5, 5]], "labels": [0], "width": 99},  # size disagrees with the file
    ]
    problems = [f["problem"] for f in _findings(_det_index(tmp_path, records)) if f["split"] == "train"]
    assert sum("non-positive size" in p for p in problems) == 2
    assert any("outside the 20x10 image" in p for p in problems)
    assert any("label 4" in p for p in problems)
    assert any("image file not found" in p for p in problems)
    assert any("annotation says 99x10" in p for p in problems)


def test_coco_duplicates_and_dangling_annotations(tmp_path):
    save_image(tmp_path / "images" / "train" / "a.png")
    save_image(tmp_path / "images" / "val" / "a.png")
    content = {"images": [{"id": 1, "file_name": "a.png", "width": 16, "height": 16}, {"id": 1, "file_name": "b.png", "width": 16, "height": 16}],
               "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
                               {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
                               {"id": 6, "image_id": 42, "category_id": 1, "bbox": [1, 1, 4, 4]}],
               "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val"):
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    from visionpipe.tasks.detection import DetectionData

    index = formats.read_coco(tmp_path, DetectionData(format="coco"), annotations="boxes")
    problems = [p["problem"] for p in index["problems"]]
    assert any("duplicate image id 1" in p for p in problems)
    assert any("duplicate annotation id 5" in p for p in problems)
    assert any("missing image id 42" in p for p in problems)
    assert all(p["file"].endswith(".json") for p in index["problems"])


def test_yolo_coordinates_outside_unit_range(tmp_path):
    (tmp_path / "classes.txt").write_text("x\n")
    for split in ("train", "val"):
        save_image(tmp_path / "images" / split / "a.png")
        (tmp_path / "labels" / split).mkdir(parents=True)
        (tmp_path / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 1.4 0.5 0.2 0.2\n")
    index = formats.read_yolo(tmp_path, None)
    bad = [p for p in index["problems"] if "outside [0, 1]" in p["problem"]]
    assert len(bad) == 2 and bad[0]["file"].endswith("a.txt:2")


def test_mask_size_and_values(tmp_path):
    for name, size, value in (("ok", (8, 8), 1), ("small", (4, 4), 1), ("bad", (8, 8), 7), ("ignored", (8, 8), 255)):
        save_image(tmp_path / "images" / f"{name}.png", (8, 8))
        save_image(tmp_path / "masks" / f"{name}.png", size, mode="L", value=value)
    records = [{"image": f"images/{n}.png", "mask": f"masks/{n}.png"} for n in ("ok", "small", "bad", "ignored")]
    index = {"task": "segmentation", "format": "masks", "root": str(tmp_path), "classes": ["bg", "fg"], "train": records, "val": records,
             "problems": []}
    findings = [f for f in _findings(index) if f["split"] == "train"]
    by_file = {Path(f["file"]).name: f["problem"] for f in findings}
    assert set(by_file) == {"small.png", "bad.png"}
    assert "mask is 4x4, image is 8x8" in by_file["small.png"]
    assert "[7]" in by_file["bad.png"] and "ignore_index 255" in by_file["bad.png"]


def test_strict_fails_naming_files_and_skip_drops(tmp_path):
    save_image(tmp_path / "a" / "ok.png")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    records = [{"image": "a/ok.png", "label": 0}, {"image": "a/broken.png", "label": 0}]
    index = _cls_index(tmp_path, records, ("a",))
    report = validation.validate_index(get_task_class(index["task"]), index)
    with pytest.raises(DataError) as err:
        validation.apply_policy(get_task_class(index["task"]), index, report, "strict")
    assert "broken.png" in str(err.value) and "validation: skip" in str(err.value)
    clean, summary = validation.apply_policy(get_task_class(index["task"]), index, report, "skip")
    assert [r["image"] for r in clean["train"]] == ["a/ok.png"]
    assert summary["train"] == {"kept": 1, "dropped": 1}


def test_small_image_files_are_checked_on_one_thread_and_photographs_on_several(tmp_path):
    small = [{"image": f"a/{k}.png", "label": 0} for k in range(5)]
    for rec in small:
        save_image(tmp_path / rec["image"])  # a few hundred bytes each
    assert validation.default_workers(tmp_path, small) == 1
    big = [{"image": f"b/{k}.bin", "label": 0} for k in range(5)]
    for rec in big:
        (tmp_path / rec["image"]).parent.mkdir(exist_ok=True)
        (tmp_path / rec["image"]).write_bytes(bytes(validation.SMALL_IMAGE_BYTES))
    assert validation.default_workers(tmp_path, big) >= 2
    assert validation.default_workers(tmp_path, [{"image": "missing.png", "label": 0}]) >= 2  # nothing to go by
    sharded = [{"image": "x.png", "shard": "s-0.tar", "members": {"image": [512, 300]}}]
    assert validation.default_workers(tmp_path, sharded) == 1
    # the same findings either way
    index = _cls_index(tmp_path, small, ("a",))
    assert validation.validate_index(get_task_class("classification"), index, workers=1) == \
        validation.validate_index(get_task_class("classification"), index, workers=4)
