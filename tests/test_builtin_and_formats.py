"""Built-in data generation and every reader producing the same internal form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import save_image, scene_records, task_params, write_coco_scenes, write_voc_scenes, write_yolo_scenes
from visionpipe.tasks import parse_task_config
from visionpipe.data import builtin, formats
from visionpipe.errors import DataError
from visionpipe.tasks import get_task_class


def _digest(root: Path) -> dict:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_builtin_data_is_deterministic_and_readable(tmp_path, task):
    cfg = parse_task_config(task, task_params(task)).data.builtin.model_dump(exclude={"path"})
    a = builtin.ensure_builtin_dataset(tmp_path / "a", get_task_class(task), cfg)
    b = builtin.ensure_builtin_dataset(tmp_path / "b", get_task_class(task), cfg)
    assert _digest(a) == _digest(b)
    fmt = {"classification": "imagefolder", "detection": "coco", "segmentation": "masks"}[task]
    data_cfg = parse_task_config(task, task_params(task, data={"format": fmt, "classes": get_task_class(task).builtin_classes(cfg["num_classes"])})).data
    index = formats.read_dataset(get_task_class(task), a, data_cfg)
    assert len(index["train"]) == cfg["train_images"] and len(index["val"]) == cfg["val_images"]
    assert index["problems"] == []


def test_builtin_regenerates_only_when_config_changes(tmp_path):
    cfg = parse_task_config("classification", task_params("classification")).data.builtin.model_dump(exclude={"path"})
    root = builtin.ensure_builtin_dataset(tmp_path / "c", get_task_class("classification"), cfg)
    marker = root / ".visionpipe-builtin.json"
    mtime = marker.stat().st_mtime_ns
    builtin.ensure_builtin_dataset(root, get_task_class("classification"), cfg)
    assert marker.stat().st_mtime_ns == mtime
    builtin.ensure_builtin_dataset(root, get_task_class("classification"), {**cfg, "val_images": cfg["val_images"] + 6})
    assert len(list((root / "val").rglob("*.png"))) == cfg["val_images"] + 6
    assert not any(p.name.startswith(".c-") for p in tmp_path.iterdir())  # no temp folder left behind


def test_imagefolder_split_is_stratified_and_seeded(tmp_path):
    for cls, n in (("cat", 10), ("dog", 5)):
        for i in range(n):
            save_image(tmp_path / cls / f"{i}.png")
    a = formats.read_imagefolder(tmp_path, 0.2, seed=3)
    b = formats.read_imagefolder(tmp_path, 0.2, seed=3)
    assert a == b
    val_labels = sorted(r["label"] for r in a["val"])
    assert val_labels == [0, 0, 1]  # 20% of 10 cats, 20% of 5 dogs
    assert a["classes"] == ["cat", "dog"]


@pytest.mark.parametrize("fmt,writer", [("coco", write_coco_scenes), ("voc", write_voc_scenes), ("yolo", write_yolo_scenes)])
def test_detection_formats_load_into_the_same_form(tmp_path, fmt, writer):
    writer(tmp_path)
    cfg = parse_task_config("detection", task_params("detection", data={"root": str(tmp_path), "format": fmt})).data
    index = formats.read_dataset(get_task_class("detection"), tmp_path, cfg)
    assert index["classes"] == ["cat", "dog"]
    assert index["problems"] == []
    for split in ("train", "val"):
        got = sorted((Path(r["image"]).name, tuple(l for l in r["labels"]), tuple(tuple(round(v, 4) for v in b) for b in r["boxes"]))
                     for r in index[split])
        want = sorted((n, tuple(o[0] for o in objs), tuple(tuple(float(v) for v in o[1:]) for o in objs)) for n, w, h, objs in scene_records())
        assert got == want
        assert all((r["width"], r["height"]) == (40, 30) for r in index[split])


def test_masks_format_requires_classes_and_pairs_by_stem(tmp_path):
    for split in ("train", "val"):
        save_image(tmp_path / split / "images" / "x.jpg", (8, 8))
        save_image(tmp_path / split / "masks" / "x.png", (8, 8), mode="L", value=1)
        save_image(tmp_path / split / "images" / "orphan.jpg", (8, 8))
    with pytest.raises(DataError, match="data.classes"):
        formats.read_mask_folders(tmp_path, None)
    index = formats.read_mask_folders(tmp_path, ["bg", "fg"])
    assert [r["mask"] for r in index["train"]] == ["train/masks/x.png"]
    assert any("orphan.jpg" in p["file"] and "no mask" in p["problem"] for p in index["problems"])


def test_coco_json_errors_name_the_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    (tmp_path / "annotations" / "instances_val.json").write_text("{}")
    cfg = parse_task_config("detection", task_params("detection")).data
    with pytest.raises(DataError, match=r"instances_train\.json: invalid JSON"):
        formats.read_dataset(get_task_class("detection"), tmp_path, cfg)


def test_missing_root_is_a_clear_error(tmp_path):
    cfg = parse_task_config("classification", task_params("classification")).data
    with pytest.raises(DataError, match="does not exist"):
        formats.read_dataset(get_task_class("classification"), tmp_path / "nope", cfg)


def test_coco_segmentation_polygons_rasterise(tmp_path):
    import numpy as np

    from visionpipe.tasks.segmentation import rasterize_segments

    record = {"segments": [{"label": 2, "segmentation": [[2, 2, 8, 2, 8, 8, 2, 8]], "iscrowd": 0},
                           {"label": 1, "segmentation": [[0, 0, 1, 0, 1, 1, 0, 1]], "iscrowd": 1}]}
    mask = rasterize_segments(record, 10, 10, 255)
    assert mask[5, 5] == 2 and mask[9, 9] == 0 and mask[0, 0] == 255
    assert set(np.unique(mask)) <= {0, 2, 255}


def test_coco_polygons_feed_segmentation(tmp_path):
    import numpy as np

    from visionpipe.data.images import load_rgb
    from visionpipe.tasks.segmentation import SegmentationTask

    write_coco_scenes(tmp_path)
    for split in ("train", "val"):  # add a polygon to every annotation (the box outline)
        path = tmp_path / "annotations" / f"instances_{split}.json"
        content = json.loads(path.read_text())
        for ann in content["annotations"]:
            x, y, w, h = ann["bbox"]
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        path.write_text(json.dumps(content))
    cfg = parse_task_config("segmentation", task_params("segmentation", data={"root": str(tmp_path), "format": "coco"})).data
    index = formats.read_dataset(get_task_class("segmentation"), tmp_path, cfg)
    assert index["classes"] == ["background", "cat", "dog"]
    rec = next(r for r in index["train"] if r["image"].endswith("a.png"))
    task = SegmentationTask({"task": "segmentation", "classes": index["classes"], "ignore_index": 255, "losses": [{"name": "ce", "weight": 1.0}]})
    tf = SegmentationTask.compose([], 32, (0, 0, 0), (1, 1, 1), train=False)
    _, _, meta = task.make_sample(load_rgb(tmp_path / rec["image"]), rec, tmp_path, tf, 0, for_eval=True)
    mask = meta["mask"].numpy()
    assert mask.shape == (30, 40)
    assert mask[10, 5] == 1 and mask[15, 30] == 2 and mask[29, 0] == 0  # cat box, dog box, background
    assert set(np.unique(mask)) == {0, 1, 2}
    _, train_mask, train_meta = task.make_sample(load_rgb(tmp_path / rec["image"]), rec, tmp_path, tf, 0)
    assert "mask" not in train_meta and train_mask.shape == (32, 32)  # training batches carry only the resized mask
