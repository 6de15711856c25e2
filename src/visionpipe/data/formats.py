"""Readers for the formats users already have, all producing one internal index.

The index is a JSON-serialisable dict::

    {"task", "format", "root", "classes", "train": [record, ...], "val": [...], ["test": [...]], "problems": [...]}

``test`` is optional: present when the data's layout has a test split (or ``data.test_fraction`` holds
one out of train); iterate an index's splits with :func:`splits_of`.

with records, paths relative to ``root``:

- classification: ``{"image", "label"}``
- detection: ``{"image", "image_id", "width", "height", "boxes": [[x0, y0, x1, y1]], "labels", "iscrowd"}``
  (labels index ``classes``; boxes in pixels, corners)
- segmentation: ``{"image", "mask"}`` (mask files) or ``{"image", "width", "height", "segments"}``
  (COCO polygons/RLE, rasterised when loaded)

Readers parse; they do not judge. What they cannot parse into a record goes to ``problems`` (each
naming the file) for the validation stage to report or fail on.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import logging
import random
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from visionpipe.data.images import image_size, is_image_file
from visionpipe.errors import DataError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val")
ALL_SPLITS = ("train", "val", "test")  # test is optional: see splits_of


def splits_of(index: dict) -> tuple[str, ...]:
    """The splits an index holds: train and val, and test when the data has one."""
    return tuple(s for s in ALL_SPLITS if s in index)


def _problem(split: str, file: str, problem: str, image: str | None = None) -> dict[str, Any]:
    return {"split": split, "file": file, "image": image, "problem": problem}


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (posix) when it lies under it as written, else its absolute normalised
    form: :func:`confine` then reports (or, when allowed, keeps) every record that resolves outside the root."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return os.path.normpath(path)


def _escape_problem(split: str, path: Path, root: Path, allow_key: str) -> dict | None:
    """A problem when ``path`` is a symbolic link loop, or resolves outside ``root`` (a ``..``, an absolute
    name, or a symbolic link escaping) and ``allow_key`` does not allow it; else None."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return _problem(split, os.fsdecode(path), "symbolic link loop: the file cannot be read or hashed")
        # a missing file is the validation stage's finding, unless its name already leads out of the root
    real = Path(os.path.realpath(path))
    if real == root or root in real.parents:
        return None
    return _problem(split, os.fsdecode(path), f"resolves to {real}, outside data.root {root}; keep the data under "
                    f"data.root, or set {allow_key}: true to read it from there (it is then hashed into the lineage)")


def confine(index: dict, root: Path, allow_outside: bool, allow_key: str = "data.allow_outside_root") -> None:
    """Drop, as problems naming the file and the root, the records whose image or mask is a symbolic link
    loop or resolves outside ``root``; with ``allow_outside`` those outside are kept and listed in
    ``index["outside_root"]`` (absolute paths) for the lineage to hash. Also reports every symbolic link
    loop anywhere under ``root`` (DVC cannot hash a folder that holds one)."""
    root = Path(root)
    outside: list[str] = []
    for split in splits_of(index):
        kept = []
        for rec in index[split]:
            bad = None
            for key in ("image", "mask"):
                if key not in rec or "shard" in rec:
                    continue
                path = root / rec[key]
                problem = _escape_problem(split, path, root, allow_key)
                if problem and "outside data.root" in problem["problem"] and allow_outside:
                    outside.append(os.path.realpath(path))
                    continue
                bad = bad or problem
            if bad:
                index["problems"].append(bad)
            else:
                kept.append(rec)
        index[split] = kept
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if path.is_symlink() and not path.exists():
                try:
                    os.stat(path)
                except OSError as err:
                    if err.errno == errno.ELOOP and not any(p["file"] == os.fsdecode(path) for p in index["problems"]):
                        index["problems"].append(_problem("train", os.fsdecode(path),
                                                          "symbolic link loop: DVC cannot hash the data folder; remove the link"))
    if outside or index.get("outside_root"):
        index["outside_root"] = sorted({*outside, *index.get("outside_root", [])})


def _require_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DataError(path, f"{what} not found", fix)


def _split_stratified(items: list[Any], key, val_fraction: float, seed: int) -> tuple[list, list]:
    """Split items so every group keeps about ``val_fraction`` in val (at least one when it has two)."""
    groups: dict[Any, list] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    rng = random.Random(seed)
    train, val = [], []
    for group in sorted(groups, key=str):
        members = sorted(groups[group], key=lambda r: r["image"])
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return sorted(train, key=lambda r: r["image"]), sorted(val, key=lambda r: r["image"])


# ---------------------------------------------------------------- classification

def read_imagefolder(root: Path, val_fraction: float, seed: int, classes: list[str] | None = None) -> dict:
    """``root/train/<class>/*`` + ``root/val/<class>/*``, or ``root/<class>/*`` split by ``val_fraction``."""
    _require_dir(root, "data root", "Set classification.data.root to a folder of class folders")
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    problems: list[dict] = []
    if presplit:
        present = (*SPLITS, "test") if (root / "test").is_dir() else SPLITS
        class_dirs = {s: sorted(p for p in (root / s).iterdir() if p.is_dir() and not p.name.startswith(".")) for s in present}
        found = [p.name for p in class_dirs["train"]]
    else:
        class_dirs = {"all": sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))}
        found = [p.name for p in class_dirs["all"]]
    if not found:
        raise DataError(root, "no class folders found", "Lay images out as <root>/<class>/<image> or <root>/train/<class>/<image>")
    classes = list(classes) if classes else found
    class_index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list] = {}
    for split, dirs in class_dirs.items():
        records = []
        for class_dir in dirs:
            files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
            if class_dir.name not in class_index:
                problems.append(
                    _problem(split, str(class_dir), f"class folder '{class_dir.name}' is not in the training classes {classes}")
                )
                for f in files:
                    problems.append(_problem(split, str(f), f"class '{class_dir.name}' absent from train", _rel(f, root)))
                    records.append({"image": _rel(f, root), "label": -1})
                continue
            if not files:
                problems.append(_problem(split, str(class_dir), f"class folder '{class_dir.name}' has no images"))
            records.extend({"image": _rel(f, root), "label": class_index[class_dir.name]} for f in files)
        splits[split] = records
    if not presplit:
        splits["train"], splits["val"] = _split_stratified(splits.pop("all"), lambda r: r["label"], val_fraction, seed)
    return {"classes": classes, **splits, "problems": problems}


# ---------------------------------------------------------------- COCO

def _load_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "annotation file not found", "Point data.train_annotations/val_annotations at COCO instances JSON files")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid JSON ({err})", "Fix or re-export the annotation file") from None
    for key in ("images", "annotations", "categories"):
        if key not in content:
            raise DataError(path, f"missing top-level key '{key}'", "A COCO instances file needs images, annotations and categories")
    return content


def read_coco(root: Path, data_cfg, annotations: str = "boxes", background: bool = False) -> dict:
    """COCO instances JSON per split. Categories are mapped to contiguous indices in id order.

    ``annotations``: ``boxes`` (records carry boxes/labels/iscrowd), ``segments`` (polygons/RLE
    per object) or ``instances`` (both). ``background``: class index 0 is a background class.
    """
    _require_dir(root, "data root", "Set data.root to a COCO-layout folder")
    ann_files = {"train": data_cfg.train_annotations, "val": data_cfg.val_annotations, "test": data_cfg.test_annotations}
    image_dirs = {"train": data_cfg.train_images, "val": data_cfg.val_images, "test": data_cfg.test_images}
    present = (*SPLITS, "test") if (root / ann_files["test"]).is_file() else SPLITS  # the test split is optional
    outside = [str(p) for p in (Path(os.path.realpath(root / ann_files[s])) for s in present) if root not in p.parents]
    if outside and not getattr(data_cfg, "allow_outside_root", False):
        raise DataError(outside[0], f"annotation file outside data.root {root}",
                        "Keep the annotation files under data.root (so the data's DVC md5 covers them), or set "
                        "data.allow_outside_root: true (they are then hashed into the lineage)")
    contents = {s: _load_json(root / ann_files[s]) for s in present}
    categories = _same_categories(root, ann_files, contents)
    names = [c["name"] for c in categories]
    cat_index = {c["id"]: i for i, c in enumerate(categories)}
    offset = 1 if background else 0
    with_boxes, with_segments = annotations in ("boxes", "instances"), annotations in ("segments", "instances")
    problems: list[dict] = []
    out: dict[str, list] = {}
    for split in present:
        ann_path = root / ann_files[split]
        content = contents[split]
        image_dir = root / image_dirs[split]
        images: dict[int, dict] = {}
        for img in content["images"]:
            rel = _rel(image_dir / img["file_name"], root)
            if img["id"] in images:
                # only this entry is dropped (image None): the first entry with the id, and its file, stay
                problems.append(_problem(split, str(ann_path), f"duplicate image id {img['id']} ({img['file_name']}): entry ignored"))
                continue
            record = {"image": rel, "image_id": int(img["id"]), "width": int(img.get("width", 0)), "height": int(img.get("height", 0))}
            if with_segments:
                record["segments"] = []
            if with_boxes:
                record.update(boxes=[], labels=[], iscrowd=[])
            images[img["id"]] = record
        seen_ann: set = set()
        for ann in content["annotations"]:
            rec = images.get(ann.get("image_id"))
            if ann.get("id") in seen_ann:
                problems.append(_problem(split, str(ann_path), f"duplicate annotation id {ann.get('id')}", rec and rec["image"]))
            seen_ann.add(ann.get("id"))
            if rec is None:
                problems.append(_problem(split, str(ann_path), f"annotation {ann.get('id')} points at missing image id {ann.get('image_id')}"))
                continue
            if ann.get("category_id") not in cat_index:
                problems.append(_problem(split, str(ann_path), f"annotation {ann.get('id')} has unknown category_id {ann.get('category_id')}", rec["image"]))
                continue
            label = cat_index[ann["category_id"]] + offset
            if not with_boxes:
                if ann.get("segmentation"):
                    rec["segments"].append({"label": label, "segmentation": ann["segmentation"], "iscrowd": int(ann.get("iscrowd", 0))})
                continue
            bbox = ann.get("bbox")
            if not bbox or len(bbox) != 4:
                problems.append(_problem(split, str(ann_path), f"annotation {ann.get('id')} has no valid bbox", rec["image"]))
                continue
            x, y, w, h = (float(v) for v in bbox)
            rec["boxes"].append([x, y, x + w, y + h])
            rec["labels"].append(label)
            rec["iscrowd"].append(int(ann.get("iscrowd", 0)))
            if with_segments:  # aligned with boxes: one segmentation (possibly empty) per box
                rec["segments"].append({"label": label, "segmentation": ann.get("segmentation") or [], "iscrowd": int(ann.get("iscrowd", 0))})
        out[split] = sorted(images.values(), key=lambda r: r["image_id"])
    classes = ["background", *names] if background else names
    # the user's category id of each class: predictions.json and ground_truth.json speak these ids
    index = {"classes": classes, "category_ids": [int(c["id"]) for c in categories], **out, "problems": problems}
    if outside:
        index["outside_root"] = outside  # allowed: hashed into the lineage with the images read from outside
    return index


def _same_categories(root: Path, ann_files: dict[str, str], contents: dict[str, dict]) -> list[dict]:
    """Train's categories sorted by id; every other split must list the same (id, name) pairs."""
    train_path = root / ann_files["train"]
    for split, content in contents.items():
        if not content["categories"]:
            raise DataError(root / ann_files[split], "the 'categories' list is empty",
                            "List every category as {\"id\": ..., \"name\": ...}; annotations refer to them by id")
    categories = sorted(contents["train"]["categories"], key=lambda c: c["id"])
    expected = [(int(c["id"]), str(c["name"])) for c in categories]
    for split, content in contents.items():
        found = sorted((int(c["id"]), str(c["name"])) for c in content["categories"])
        if split != "train" and found != expected:
            only_train = sorted(set(expected) - set(found))
            only_here = sorted(set(found) - set(expected))
            raise DataError(root / ann_files[split], f"categories differ from {train_path}: only in train {only_train}, only in {split} {only_here}",
                            "Use the same category ids and names in every split's annotation file")
    return categories


# ---------------------------------------------------------------- Pascal VOC

def _voc_text(node: ET.Element, tag: str, xml_path: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise DataError(xml_path, f"missing <{tag}>", "Each VOC annotation needs filename, size and object/bndbox entries")
    return child.text.strip()


def read_voc(root: Path, val_fraction: float, seed: int, classes: list[str] | None) -> dict:
    """``root/Annotations/*.xml`` + ``root/JPEGImages``; splits from ``ImageSets/Main/{train,val}.txt``."""
    ann_dir = root / "Annotations"
    _require_dir(ann_dir, "Annotations folder", "A Pascal VOC root holds Annotations/, JPEGImages/ and optionally ImageSets/Main/")
    records, problems, names = [], [], set()
    for i, xml_path in enumerate(sorted(ann_dir.glob("*.xml"))):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            problems.append(_problem("train", str(xml_path), f"invalid XML ({err})"))
            continue
        filename = _voc_text(tree, "filename", xml_path)
        size = tree.find("size")
        width = int(float(_voc_text(size, "width", xml_path))) if size is not None else 0
        height = int(float(_voc_text(size, "height", xml_path))) if size is not None else 0
        rec = {"image": f"JPEGImages/{filename}", "image_id": i + 1, "width": width, "height": height,
               "boxes": [], "labels": [], "iscrowd": [], "_names": [], "_id": xml_path.stem}
        for obj in tree.findall("object"):
            name = _voc_text(obj, "name", xml_path)
            box = obj.find("bndbox")
            if box is None:
                problems.append(_problem("train", str(xml_path), f"object '{name}' has no <bndbox>", rec["image"]))
                continue
            x0, y0, x1, y1 = (float(_voc_text(box, t, xml_path)) for t in ("xmin", "ymin", "xmax", "ymax"))
            rec["boxes"].append([x0 - 1, y0 - 1, x1, y1])  # VOC is 1-based and inclusive
            rec["_names"].append(name)
            difficult = obj.find("difficult")
            rec["iscrowd"].append(int(difficult is not None and (difficult.text or "0").strip() == "1"))
            names.add(name)
        records.append(rec)
    classes = list(classes) if classes else sorted(names)
    class_index = {n: i for i, n in enumerate(classes)}
    for rec in records:
        for name in rec.pop("_names"):
            if name not in class_index:
                problems.append(_problem("train", str(root / "Annotations" / f"{rec['_id']}.xml"), f"class '{name}' is not in data.classes", rec["image"]))
                rec["labels"].append(-1)
            else:
                rec["labels"].append(class_index[name])
    sets = root / "ImageSets" / "Main"
    if (sets / "train.txt").is_file() and (sets / "val.txt").is_file():
        present = (*SPLITS, "test") if (sets / "test.txt").is_file() else SPLITS
        ids = {s: {line.split()[0] for line in (sets / f"{s}.txt").read_text().splitlines() if line.strip()} for s in present}
        splits = {s: [r for r in records if r["_id"] in ids[s]] for s in present}
    else:
        splits = dict(zip(SPLITS, _split_stratified(records, lambda r: r["labels"][0] if r["labels"] else -1, val_fraction, seed)))
    for recs in splits.values():
        for r in recs:
            r.pop("_id", None)
    return {"classes": classes, **splits, "problems": problems}


# ---------------------------------------------------------------- YOLO

def _yolo_yaml(root: Path) -> tuple[Path | None, dict]:
    """The Ultralytics dataset file (``data.yaml`` or ``dataset.yaml``) in ``root``, parsed, or (None, {})."""
    for name in ("data.yaml", "dataset.yaml"):
        path = root / name
        if path.is_file():
            try:
                content = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as err:
                raise DataError(path, f"invalid YAML ({err})", "Fix the file; see Ultralytics' dataset YAML format") from None
            if not isinstance(content, dict):
                raise DataError(path, "not a mapping", "A YOLO data.yaml holds path, train, val, [test] and names")
            return path, content
    return None, {}


def _yolo_nc(path: Path | None, content: dict) -> None:
    """Ultralytics' ``nc`` must count the ``names``: a disagreement is an error naming the file."""
    nc, names = content.get("nc"), content.get("names")
    if path is None or nc is None or not isinstance(names, (list, dict)):
        return
    if not isinstance(nc, int) or nc != len(names):
        raise DataError(path, f"nc: {nc!r} but 'names' lists {len(names)} class(es)",
                        "Make nc the number of names (or remove nc: the names are enough)")


def _yolo_classes(root: Path, classes: list[str] | None) -> list[str]:
    _yolo_nc(*_yolo_yaml(root))
    if classes:
        return list(classes)
    if (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    path, content = _yolo_yaml(root)
    names = content.get("names")
    if isinstance(names, dict):  # {0: person, 1: bicycle}: ids in order
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    if path is not None and names is not None:
        raise DataError(path, f"'names' must be a list or a mapping of class id to name, got {names!r}", "Write names: [cat, dog] or names: {0: cat, 1: dog}")
    raise DataError(root, "no class names for YOLO labels", "Add classes.txt (one name a line) or data.yaml with 'names', or set data.classes")


def _yolo_split_images(root: Path, yaml_path: Path | None, content: dict, split: str) -> list[tuple[Path, Path]] | None:
    """(image, label file) pairs of one split, as Ultralytics resolves them: ``path`` (relative to the YAML's
    folder) joined with the split's entry, which is an image folder, a .txt list of images, or a list of those;
    labels sit where the last ``images`` folder of the path is ``labels``. None when the YAML has no such split."""
    entry = content.get(split)
    if yaml_path is None:  # the default layout: images/<split> and labels/<split>
        image_dir = root / "images" / split
        if split == "test" and not image_dir.is_dir():
            return None
        _require_dir(image_dir, f"images/{split} folder", "YOLO data needs images/train and images/val (or a data.yaml naming them)")
        entries = [image_dir]
    elif entry is None:
        if split == "test":
            return None
        raise DataError(yaml_path, f"no '{split}' entry", f"Name the {split} images, e.g. {split}: images/{split}")
    else:
        base = Path(content.get("path") or ".")
        base = base if base.is_absolute() else yaml_path.parent / base
        entries = [base / e for e in (entry if isinstance(entry, list) else [entry])]
    files: list[Path] = []
    for item in entries:
        if item.is_file() and item.suffix == ".txt":  # one image path a line, relative to the list's folder
            lines = [line.strip() for line in item.read_text().splitlines() if line.strip()]
            files.extend(Path(os.path.normpath(Path(line) if Path(line).is_absolute() else item.parent / line)) for line in lines)
        elif item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p)))
        else:
            raise DataError(yaml_path or item, f"{split} images '{item}' not found", "Point the entry at an image folder or a .txt list of images")

    def label_of(image: Path) -> Path:
        parts = list(image.parts)
        if "images" in parts:
            i = len(parts) - 1 - parts[::-1].index("images")
            parts[i] = "labels"
        return Path(*parts).with_suffix(".txt")

    return [(f, label_of(f)) for f in files]


def _yolo_box(parts: list[str], line: str, width: int, height: int, n_classes: int) -> tuple[int, list[float], None] | str:
    """One detection label line ``class cx cy w h`` (normalised): (class, xyxy box in pixels, None), or the problem."""
    try:
        cls, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
    except (ValueError, IndexError):
        return f"cannot parse '{line}' as 'class cx cy w h'"
    if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
        return f"coordinates {cx, cy, w, h} outside [0, 1]"
    if not 0 <= cls < n_classes:
        return f"class {cls} outside 0..{n_classes - 1}"
    return cls, [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], None


def _yolo_polygon(parts: list[str], line: str, width: int, height: int, n_classes: int) -> tuple[int, list[float], list] | str:
    """One segment label line ``class x1 y1 x2 y2 ...`` (a polygon of at least 3 points, normalised, as Ultralytics
    writes): (class, the polygon's bounding box in pixels, the polygon in pixels), or the problem."""
    try:
        cls, coords = int(parts[0]), [float(v) for v in parts[1:]]
    except ValueError:
        return f"cannot parse '{line[:80]}' as 'class x1 y1 x2 y2 x3 y3 ...'"
    if len(coords) < 6 or len(coords) % 2:
        return (f"{len(coords)} coordinates: a polygon needs an even number, at least 6 "
                "(YOLO box labels 'class cx cy w h' are for detection)")
    if not all(0.0 <= v <= 1.0 for v in coords):
        return "polygon coordinates outside [0, 1]"
    if not 0 <= cls < n_classes:
        return f"class {cls} outside 0..{n_classes - 1}"
    xs, ys = [v * width for v in coords[0::2]], [v * height for v in coords[1::2]]
    return cls, [min(xs), min(ys), max(xs), max(ys)], [round(c, 3) for xy in zip(xs, ys) for c in xy]


def read_yolo(root: Path, classes: list[str] | None, segments: bool = False) -> dict:
    """Ultralytics layout: ``data.yaml`` (``path``, ``train``, ``val``, optional ``test``, ``names`` as a list or
    mapping) or, without one, ``root/images/{train,val}/*`` with ``root/labels/{train,val}/<stem>.txt``. A ``test``
    split is read when present. Label lines are boxes ``class cx cy w h`` (normalised), or with ``segments``
    polygons ``class x1 y1 x2 y2 ...`` (instance segmentation: each record also lists its ``segments``, and its
    boxes are the polygons' bounds)."""
    parse = _yolo_polygon if segments else _yolo_box
    _require_dir(root, "data root", "Set data.root to a YOLO dataset folder")
    yaml_path, content = _yolo_yaml(root)
    if yaml_path is None:
        _require_dir(root / "images", "images folder", "A YOLO root holds images/{train,val}/ and labels/{train,val}/, or a data.yaml")
    classes = _yolo_classes(root, classes)
    problems: list[dict] = []
    out: dict[str, list] = {}
    next_id = 1
    for split in (*SPLITS, "test"):
        pairs = _yolo_split_images(root, yaml_path, content, split)
        if pairs is None:
            continue
        records = []
        for img_path, label_path in pairs:
            rel = _rel(img_path, root)  # outside data.root: confine() reports it
            try:
                width, height = image_size(img_path)
            except DataError as err:
                problems.append(_problem(split, str(img_path), err.problem, rel))
                width = height = 0
            rec = {"image": rel, "image_id": next_id, "width": width, "height": height, "boxes": [], "labels": [], "iscrowd": [],
                   **({"segments": []} if segments else {})}
            next_id += 1
            lines = label_path.read_text().splitlines() if label_path.is_file() else []  # no file = no objects
            for n, line in enumerate(lines, 1):
                parts = line.split()
                if not parts:
                    continue
                parsed = parse(parts, line, width, height, len(classes))
                if isinstance(parsed, str):
                    problems.append(_problem(split, f"{label_path}:{n}", parsed, rel))
                    continue
                cls, box, polygon = parsed
                rec["boxes"].append(box)
                rec["labels"].append(cls)
                rec["iscrowd"].append(0)
                if segments:
                    rec["segments"].append({"label": cls, "segmentation": [polygon], "iscrowd": 0})
            records.append(rec)
        out[split] = records
    return {"classes": classes, **out, "problems": problems}


# ---------------------------------------------------------------- image + mask folders

def read_mask_folders(root: Path, classes: list[str] | None) -> dict:
    """``root/{train,val}/images/*`` matched by stem with ``root/{train,val}/masks/*.png``."""
    problems: list[dict] = []
    out: dict[str, list] = {}
    for split in (*SPLITS, "test") if (root / "test" / "images").is_dir() else SPLITS:
        img_dir, mask_dir = root / split / "images", root / split / "masks"
        _require_dir(img_dir, f"{split}/images folder", "Mask data needs <root>/train/images, <root>/train/masks, <root>/val/images and <root>/val/masks")
        _require_dir(mask_dir, f"{split}/masks folder", "Mask data needs a masks folder beside each images folder, PNGs named like the images")
        masks = {p.stem: p for p in mask_dir.iterdir() if p.is_file() and is_image_file(p)}
        records = []
        for img in sorted(p for p in img_dir.iterdir() if p.is_file() and is_image_file(p)):
            if img.stem not in masks:
                problems.append(_problem(split, str(img), f"no mask named {img.stem}.png in {mask_dir}", _rel(img, root)))
                continue
            records.append({"image": _rel(img, root), "mask": _rel(masks[img.stem], root)})
        stems = {p.stem for p in img_dir.iterdir() if p.is_file() and is_image_file(p)}
        for stem in sorted(set(masks) - stems):
            problems.append(_problem(split, str(masks[stem]), f"mask has no image named {stem}.* in {img_dir}"))
        out[split] = records
    if not classes:
        raise DataError(root, "data.classes is not set for mask data", "List the class names in parameters_segmentation.yml (index 0 first, usually 'background')")
    return {"classes": list(classes), **out, "problems": problems}


# ---------------------------------------------------------------- dispatch

def read_dataset(task_cls, root: str | Path, data_cfg) -> dict:
    """Read ``root`` in ``data_cfg.format`` into the internal index, with the reader ``task_cls`` (a Task
    class, handed down by the caller) accepts."""
    root = Path(root).resolve()
    if not root.exists():
        raise DataError(root, "data root does not exist", f"Create it or fix {task_cls.name}.data.root (null uses the built-in data)")
    index = task_cls.read(root, data_cfg)
    confine(index, root, getattr(data_cfg, "allow_outside_root", False), f"{task_cls.name}.data.allow_outside_root")
    hold_out_test(index, data_cfg, task_cls.record_labels)
    index.update(task=task_cls.name, format=data_cfg.format, root=str(root))
    index["fingerprint"] = fingerprint(root, index)
    logger.info("Read %s data from %s: %d train, %d val, %s test, %d classes, %d problems",
                data_cfg.format, root, len(index["train"]), len(index["val"]), len(index["test"]) if "test" in index else "no",
                len(index["classes"]), len(index["problems"]))
    return index


def hold_out_test(index: dict, data_cfg, record_labels) -> None:
    """``data.test_fraction``: hold out that share of the train split as the test split (stratified by
    each record's first label, seeded by ``data.split_seed``), unless the data already has a test split."""
    fraction = getattr(data_cfg, "test_fraction", None)
    if not fraction or "test" in index:
        return

    def key(rec):
        labels = record_labels(rec)
        return labels[0] if labels else -1

    index["train"], index["test"] = _split_stratified(index["train"], key, fraction, data_cfg.split_seed + 1)


def fingerprint(root: Path, index: dict) -> str:
    """A content-light hash of the data: every file's path and size, plus the annotations read.

    DVC hashes content; when ``<root>.dvc`` exists its md5 is the data version (see lineage).
    """
    h = hashlib.md5()
    for split in splits_of(index):
        hash_records(h, root, index[split])
    return h.hexdigest()


def hash_records(h, root: Path, records: list[dict]) -> None:
    """Feed each record, and the size of each file it names, into the hash ``h`` (a light content hash)."""
    for rec in records:
        h.update(json.dumps(rec, sort_keys=True).encode())
        for key in ("image", "mask"):
            if key in rec:
                p = root / rec[key]
                h.update(f"{rec[key]}:{p.stat().st_size if p.exists() else -1}".encode("utf-8", "surrogateescape"))  # bytes-safe names
