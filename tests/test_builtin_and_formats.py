"""Built-in data generation and every reader producing the same internal form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import save_image, task_params
from visionpipe.config import parse_task_config
from visionpipe.data import builtin, formats
from visionpipe.errors import DataError
from visionpipe.tasks import get_task_class


def _digest(root: Path) -> dict:
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_builtin_data_is_deterministic_and_readable(tmp_path, task):
    cfg = parse_task_config(task, task_params(task)).data.builtin.model_dump(exclude={"path"})
    a = builtin.ensure_builtin_dataset(tmp_path / "a", task, cfg)
    b = builtin.ensure_builtin_dataset(tmp_path / "b", task, cfg)
    assert _digest(a) == _digest(b)
    fmt = {"classification": "imagefolder", "detection": "coco", "segmentation": "masks"}[task]
    data_cfg = parse_task_config(task, task_params(task, data={"format": fmt, "classes": get_task_class(task).builtin_classes(cfg["num_classes"])})).data
    index = formats.read_dataset(task, a, data_cfg)
    assert len(index["train"]) == cfg["train_images"] and len(index["val"]) == cfg["val_images"]
    assert index["problems"] == []


def test_builtin_regenerates_only_when_config_changes(tmp_path):
    cfg = parse_task_config("classification", task_params("classification")).data.builtin.model_dump(exclude={"path"})
    root = builtin.ensure_builtin_dataset(tmp_path / "c", "classification", cfg)
    marker = root / ".visionpipe-builtin.json"
    mtime = marker.stat().st_mtime_ns
    builtin.ensure_builtin_dataset(root, "classification", cfg)
    assert marker.stat().st_mtime_ns == mtime
    builtin.ensure_builtin_dataset(root, "classification", {**cfg, "val_images": cfg["val_images"] + 6})
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


def _scene_records():
    # two images: (file, width, height, [(class, x0, y0, x1, y1)])
    return [("a.png", 40, 30, [(0, 2, 3, 12, 20), (1, 20, 5, 39, 29)]), ("b.png", 40, 30, [(1, 0, 0, 10, 10)])]


def _write_coco(root: Path):
    for split in ("train", "val"):
        images, anns = [], []
        for i, (name, w, h, objs) in enumerate(_scene_records()):
            save_image(root / "images" / split / name, (w, h))
            images.append({"id": i + 10, "file_name": name, "width": w, "height": h})
            for c, x0, y0, x1, y1 in objs:
                anns.append({"id": len(anns) + 1, "image_id": i + 10, "category_id": [3, 7][c], "bbox": [x0, y0, x1 - x0, y1 - y0],
                             "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def _write_voc(root: Path):
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    names = ["cat", "dog"]
    for name, w, h, objs in _scene_records():
        save_image(root / "JPEGImages" / name, (w, h))
        objects = "".join(f"<object><name>{names[c]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                          f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for c, x0, y0, x1, y1 in objs)
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>")
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("a\nb\n")


def _write_yolo(root: Path):
    (root / "classes.txt").write_text("cat\ndog\n")
    for split in ("train", "val"):
        for name, w, h, objs in _scene_records():
            save_image(root / "images" / split / name, (w, h))
            lines = [f"{c} {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}" for c, x0, y0, x1, y1 in objs]
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{Path(name).stem}.txt").write_text("\n".join(lines))


@pytest.mark.parametrize("fmt,writer", [("coco", _write_coco), ("voc", _write_voc), ("yolo", _write_yolo)])
def test_detection_formats_load_into_the_same_form(tmp_path, fmt, writer):
    writer(tmp_path)
    cfg = parse_task_config("detection", task_params("detection", data={"root": str(tmp_path), "format": fmt})).data
    index = formats.read_dataset("detection", tmp_path, cfg)
    assert index["classes"] == ["cat", "dog"]
    assert index["problems"] == []
    for split in ("train", "val"):
        got = sorted((Path(r["image"]).name, tuple(l for l in r["labels"]), tuple(tuple(round(v, 4) for v in b) for b in r["boxes"]))
                     for r in index[split])
        want = sorted((n, tuple(o[0] for o in objs), tuple(tuple(float(v) for v in o[1:]) for o in objs)) for n, w, h, objs in _scene_records())
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
        formats.read_dataset("detection", tmp_path, cfg)


def test_missing_root_is_a_clear_error(tmp_path):
    cfg = parse_task_config("classification", task_params("classification")).data
    with pytest.raises(DataError, match="does not exist"):
        formats.read_dataset("classification", tmp_path / "nope", cfg)


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

    from visionpipe.data import transforms
    from visionpipe.data.images import load_rgb
    from visionpipe.tasks.segmentation import SegmentationTask

    _write_coco(tmp_path)
    for split in ("train", "val"):  # add a polygon to every annotation (the box outline)
        path = tmp_path / "annotations" / f"instances_{split}.json"
        content = json.loads(path.read_text())
        for ann in content["annotations"]:
            x, y, w, h = ann["bbox"]
            ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        path.write_text(json.dumps(content))
    cfg = parse_task_config("segmentation", task_params("segmentation", data={"root": str(tmp_path), "format": "coco"})).data
    index = formats.read_dataset("segmentation", tmp_path, cfg)
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
