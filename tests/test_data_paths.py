"""Inputs never leave data.root (issue 20): COCO, VOC, YOLO lists and data.yaml, mask folders; symbolic link
loops; non-UTF-8 file names; no registration without lineage when validation is strict."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support import save_image
from visionpipe.data import formats, quality, validation
from visionpipe.tasks import get_task_class
from visionpipe.errors import DataError
from visionpipe.tasks.classification import ClassificationData
from visionpipe.tasks.detection import DetectionData
from visionpipe.tasks.segmentation import SegmentationData
from visionpipe.tracking.lineage import lineage_tags


def _coco(root: Path, names: list[str]) -> None:
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        save_image(root / "images" / split / "ok.png", (16, 16))
        images = [{"id": k + 1, "file_name": n, "width": 16, "height": 16} for k, n in enumerate(["ok.png", *names])]
        anns = [{"id": k + 1, "image_id": k + 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for k in range(len(images))]
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))


def test_coco_names_outside_the_root_are_findings_naming_file_and_root(tmp_path):
    root = tmp_path / "data"
    save_image(tmp_path / "outside.png", (16, 16))
    _coco(root, ["../../../outside.png", str(tmp_path / "outside.png")])
    index = formats.read_dataset(get_task_class("detection"), root, DetectionData(format="coco"))
    assert [r["image"] for r in index["train"]] == ["images/train/ok.png"]  # never read nor trained on
    outside = [p for p in index["problems"] if "outside data.root" in p["problem"]]
    assert len(outside) == 4 and all(str(root) in p["problem"] and "detection.data.allow_outside_root" in p["problem"] for p in outside)
    assert outside[0]["file"] == str(root / "images/train/../../../outside.png")
    with pytest.raises(DataError, match=r"(?s)4 data problem\(s\).*outside.png: resolves to .*outside.png, outside data.root"):
        validation.apply_policy(get_task_class(index["task"]), index, validation.validate_index(get_task_class(index["task"]), index, DetectionData(format="coco")), "strict")


def test_allow_outside_root_keeps_them_and_hashes_them_into_the_lineage(tmp_path):
    root = tmp_path / "data"
    save_image(tmp_path / "outside.png", (16, 16), value=7)
    _coco(root, ["../../../outside.png"])
    index = formats.read_dataset(get_task_class("detection"), root, DetectionData(format="coco", allow_outside_root=True))
    assert index["problems"] == [] and index["outside_root"] == [str(tmp_path / "outside.png")]
    assert len(index["train"]) == 2
    before = lineage_tags(index, project=tmp_path)["data.outside_root_md5"]
    save_image(tmp_path / "outside.png", (16, 16), value=9)
    assert lineage_tags(index, project=tmp_path)["data.outside_root_md5"] != before


def test_voc_yolo_and_mask_paths_outside_the_root(tmp_path):
    save_image(tmp_path / "outside.png", (16, 16))
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations" / "a.xml").write_text("<annotation><filename>../../outside.png</filename><size><width>16</width>"
                                               "<height>16</height></size></annotation>")
    index = formats.read_dataset(get_task_class("detection"), voc, DetectionData(format="voc"))
    assert [p["file"] for p in index["problems"]] == [str(voc / "JPEGImages/../../outside.png")]

    yolo = tmp_path / "yolo"
    save_image(yolo / "images" / "val" / "a.png", (16, 16))
    (yolo / "train.txt").write_text("../outside.png\n")
    (yolo / "data.yaml").write_text(f"train: train.txt\nval: images/val\nnames: [x]\n")
    index = formats.read_dataset(get_task_class("detection"), yolo, DetectionData(format="yolo"))
    assert index["train"] == [] and "outside data.root" in index["problems"][0]["problem"]

    masks = tmp_path / "masks"
    for split in ("train", "val"):
        save_image(masks / split / "images" / "a.png", (8, 8))
        (masks / split / "masks").mkdir(parents=True)
        os.symlink(tmp_path / "outside.png", masks / split / "masks" / "a.png")  # a link escaping the root
    index = formats.read_dataset(get_task_class("segmentation"), masks, SegmentationData(format="masks", classes=["bg", "fg"]))
    assert index["train"] == [] and len(index["problems"]) == 2
    assert index["problems"][0]["file"] == str(masks / "train" / "masks" / "a.png")


def test_a_symlink_loop_is_a_finding_and_strict_registration_needs_lineage(tmp_path):
    for split in ("train", "val"):
        save_image(tmp_path / split / "x" / "a.png")
    os.symlink("self.png", tmp_path / "train" / "x" / "self.png")
    index = formats.read_dataset(get_task_class("classification"), tmp_path, ClassificationData())
    assert [(p["file"], p["problem"][:26]) for p in index["problems"]] == [(str(tmp_path / "train/x/self.png"), "symbolic link loop: DVC ca")]
    with pytest.raises(DataError, match="self.png: symbolic link loop"):
        validation.apply_policy(get_task_class(index["task"]), index, validation.validate_index(get_task_class(index["task"]), index), "strict")
    with pytest.raises(DataError, match="cannot be hashed for the model's lineage"):
        lineage_tags(index, project=tmp_path, strict=True)
    assert lineage_tags(index, project=tmp_path)["data.dvc_md5"] == "unknown"  # skip: registered, said so in the log


def test_non_utf8_file_names_are_read_and_hashed(tmp_path):
    for split in ("train", "val"):
        save_image(tmp_path / split / "x" / "a.png")
    name = os.fsdecode(b"caf\xe9.png")  # latin-1 bytes: not UTF-8
    save_image(tmp_path / "train" / "x" / name, value=30)
    index = formats.read_dataset(get_task_class("classification"), tmp_path, ClassificationData())
    assert f"train/x/{name}" in [r["image"] for r in index["train"]] and index["fingerprint"]
    report = validation.validate_index(get_task_class(index["task"]), index)
    assert report["findings"] == []
    json.dumps(report)  # the report and the index are written as JSON
    # the name in a finding: the report, the terminal line and the strict error are all printable UTF-8
    save_image(tmp_path / "val" / "x" / name, value=30)  # the same picture in val: leakage naming both files
    index = formats.read_dataset(get_task_class("classification"), tmp_path, ClassificationData())
    report = validation.validate_index(get_task_class(index["task"]), index)
    assert quality.markdown({**report, "leakage": "warn"}).encode("utf-8")
    assert all(line.encode("utf-8") for line in validation.summary_lines(report["warnings"], "r.md"))
    with pytest.raises(DataError) as info:
        validation.apply_policy(get_task_class("classification"), index, {**report, "leakage": "error"}, "strict")
    assert "train/x/caf\\xe9.png ~ val/x/caf\\xe9.png" in str(info.value) and str(info.value).encode("utf-8")


def test_a_coco_annotation_file_outside_the_root_is_an_error_or_hashed_when_allowed(tmp_path):
    root = tmp_path / "data"
    _coco(root, [])
    (tmp_path / "train.json").write_text((root / "annotations" / "instances_train.json").read_text())
    data = DetectionData(format="coco", train_annotations="../train.json")
    with pytest.raises(DataError, match=r"train.json: annotation file outside data.root .*data.allow_outside_root: true"):
        formats.read_dataset(get_task_class("detection"), root, data)
    index = formats.read_dataset(get_task_class("detection"), root, data.model_copy(update={"allow_outside_root": True}))
    assert index["outside_root"] == [str(tmp_path / "train.json")]
    assert lineage_tags(index, project=tmp_path)["data.outside_root_md5"]
