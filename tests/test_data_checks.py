"""The smaller data checks of issue 20: YOLO nc vs names, zero-area polygons and masks."""

from __future__ import annotations

import json

import pytest

from support import save_image
from visionpipe.data import formats, validation
from visionpipe.tasks import get_task_class
from visionpipe.errors import DataError
from visionpipe.tasks.detection import DetectionData
from visionpipe.tasks.instance_segmentation import InstanceSegmentationData
from visionpipe.tasks.segmentation import SegmentationData


def test_yolo_nc_disagreeing_with_names_is_an_error_naming_data_yaml(tmp_path):
    for split in ("train", "val"):
        save_image(tmp_path / "images" / split / "a.png", (16, 16))
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnc: 5\nnames: [cat, dog]\n")
    with pytest.raises(DataError, match=r"data.yaml: nc: 5 but 'names' lists 2 class\(es\)\. Make nc the number of names"):
        formats.read_dataset(get_task_class("detection"), tmp_path, DetectionData(format="yolo"))
    (tmp_path / "data.yaml").write_text("train: images/train\nval: images/val\nnc: 2\nnames: {0: cat, 1: dog}\n")
    assert formats.read_dataset(get_task_class("detection"), tmp_path, DetectionData(format="yolo"))["classes"] == ["cat", "dog"]


def _coco_with(root, segmentation, bbox):
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        save_image(root / "images" / split / "a.png", (32, 32))
        content = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
                   "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "segmentation": segmentation, "iscrowd": 0}],
                   "categories": [{"id": 1, "name": "x"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))


@pytest.mark.parametrize("task,cfg", [("instance_segmentation", InstanceSegmentationData), ("segmentation", SegmentationData)])
def test_a_collinear_polygon_is_a_zero_area_finding_and_skip_drops_it(tmp_path, task, cfg):
    _coco_with(tmp_path, [[2, 2, 10, 10, 20, 20]], [2, 2, 18, 18])  # three points on a line, a non-zero bbox
    data = cfg(format="coco")
    index = formats.read_dataset(get_task_class(task), tmp_path, data)
    report = validation.validate_index(get_task_class(index["task"]), index, data)
    assert [f["split"] for f in report["findings"]] == ["train", "val"]
    assert "covers no pixel of the 32x32 image (zero area)" in report["findings"][0]["problem"]
    with pytest.raises(DataError, match="zero area"):
        validation.apply_policy(get_task_class(index["task"]), index, report, "strict")
    with pytest.raises(DataError, match="no usable train images left"):  # skip drops the image (its only object)
        validation.apply_policy(get_task_class(index["task"]), index, report, "skip")
