"""Built-in dataset: coloured shapes on noisy backgrounds, generated offline and deterministically.

One scene renderer serves every task, and each task writes its data (``Task.write_builtin``, with
the writers here) in the on-disk format a user would bring (ImageFolder, COCO JSON, image+mask
folders), so the built-in data exercises the same readers as real data.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from visionpipe.files import atomic_folder

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
_MARKER = ".visionpipe-builtin.json"


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: class index into SHAPES and its tight box (x0, y0, x1, y1), pixels."""

    label: int
    box: tuple[float, float, float, float]


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    return None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    bbox = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(bbox, fill=fill)
    elif shape == "square":
        draw.rectangle(bbox, fill=fill)
    elif shape == "ring":
        draw.ellipse(bbox, outline=fill, width=max(2, int(r / 2.5)))
    elif shape == "cross":
        w = max(1.0, r / 3)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fill)


def render_scene(
    rng: np.random.Generator,
    size: int,
    labels: list[int],
    min_radius: float | None = None,
    max_radius: float | None = None,
) -> tuple[Image.Image, list[SceneObject], np.ndarray, np.ndarray]:
    """Draw one shape per label; return the RGB image, the objects, a class-index mask (0 = background)
    and an instance mask (object ``i`` is value ``i + 1`` where it is visible)."""
    background = rng.integers(0, 90, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (size, size), 0)
    instances = Image.new("L", (size, size), 0)
    draw, mask_draw, instance_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask), ImageDraw.Draw(instances)
    min_r = min_radius or size * 0.12
    max_r = max_radius or size * 0.3
    objects: list[SceneObject] = []
    for label in labels:
        r = float(rng.uniform(min_r, max_r))
        cx, cy = (float(v) for v in rng.uniform(r, size - r, size=2))
        colour = tuple(int(v) for v in rng.integers(120, 256, size=3))
        _draw_shape(draw, SHAPES[label], cx, cy, r, colour)
        _draw_shape(mask_draw, SHAPES[label], cx, cy, r, label + 1)
        _draw_shape(instance_draw, SHAPES[label], cx, cy, r, len(objects) + 1)
        box = (max(0.0, cx - r), max(0.0, cy - r), min(float(size), cx + r + 1), min(float(size), cy + r + 1))
        objects.append(SceneObject(label, box))
    return image, objects, np.asarray(mask, dtype=np.uint8), np.asarray(instances, dtype=np.uint8)


def _fingerprint(task: str, cfg: dict) -> dict:
    return {"task": task, "generator_version": 1, **cfg}


def _already_built(root: Path, fingerprint: dict) -> bool:
    marker = root / _MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == fingerprint
    except (OSError, ValueError):  # unreadable or undecodable (a corrupt copy): not built
        return False


def write_image_folders(root: Path, cfg: dict, rng: np.random.Generator) -> None:
    """One centred shape per image, ``root/<split>/<class>/<image>.png``, classes balanced."""
    classes = SHAPES[: cfg["num_classes"]]
    for split, n in (("train", cfg["train_images"]), ("val", cfg["val_images"])):
        for i in range(n):
            label = i % len(classes)
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            size = cfg["image_size"]
            image, *_ = render_scene(rng, size, [label], min_radius=size * 0.2, max_radius=size * 0.4)
            image.save(folder / f"{split}_{i:05d}.png")


def scenes(rng: np.random.Generator, cfg: dict):
    """(split, i, render_scene(...)) for every image of the built-in train and val splits."""
    for split, n in (("train", cfg["train_images"]), ("val", cfg["val_images"])):
        for i in range(n):
            n_obj = int(rng.integers(cfg["min_objects"], cfg["max_objects"] + 1))
            labels = [int(v) for v in rng.integers(0, cfg["num_classes"], size=n_obj)]
            yield split, i, render_scene(rng, cfg["image_size"], labels)


def write_coco(root: Path, cfg: dict, rng: np.random.Generator, segmentation: bool = False) -> None:
    """COCO instances files (``annotations/instances_<split>.json``) and ``images/<split>/``.

    With ``segmentation`` each annotation also carries the object's visible region as RLE.
    """
    classes = SHAPES[: cfg["num_classes"]]
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(classes)]
    coco = {s: {"images": [], "annotations": [], "categories": categories} for s in ("train", "val")}
    ann_id = 1
    for split, i, (image, objects, _, instances) in scenes(rng, cfg):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        name = f"{split}_{i:05d}.png"
        image.save(root / "images" / split / name)
        image_id = i + 1
        coco[split]["images"].append({"id": image_id, "file_name": name, "width": image.width, "height": image.height})
        for k, obj in enumerate(objects):
            x0, y0, x1, y1 = obj.box
            ann = {"id": ann_id, "image_id": image_id, "category_id": obj.label + 1,
                   "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                   "area": round((x1 - x0) * (y1 - y0), 2), "iscrowd": 0}
            if segmentation:
                from pycocotools import mask as mask_utils

                visible = np.asfortranarray((instances == k + 1).astype(np.uint8))
                if not visible.any():  # fully hidden behind later objects: nothing to annotate
                    continue
                rle = mask_utils.encode(visible)
                ann["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
                ann["area"] = float(mask_utils.area(rle))
                bx, by, bw, bh = (float(v) for v in mask_utils.toBbox(rle))
                ann["bbox"] = [bx, by, bw, bh]
            coco[split]["annotations"].append(ann)
            ann_id += 1
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, content in coco.items():
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))


def write_mask_folders(root: Path, cfg: dict, rng: np.random.Generator) -> None:
    """``root/<split>/images/*.png`` and class-index ``root/<split>/masks/*.png`` (0 = background)."""
    for split, i, (image, _, mask, _) in scenes(rng, cfg):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        image.save(root / split / "images" / f"{split}_{i:05d}.png")
        Image.fromarray(mask, "L").save(root / split / "masks" / f"{split}_{i:05d}.png")


def is_built(root: str | os.PathLike, task: str, cfg: dict) -> bool:
    """Whether ``root`` holds the complete built-in dataset of ``task`` generated with ``cfg``."""
    return _already_built(Path(root), _fingerprint(task, cfg))


def ensure_builtin_dataset(root: str | os.PathLike, task_cls, cfg: dict) -> Path:
    """Generate the built-in dataset of ``task_cls`` (a Task class: its ``write_builtin`` writes the files)
    under ``root`` unless an identical one is there.

    Generation writes to a temporary folder and renames it into place, so an interrupted run never
    leaves a half-written dataset that a later run would mistake for a complete one.
    """
    task = task_cls.name
    if not 1 <= cfg["num_classes"] <= len(SHAPES):
        raise ValueError(f"builtin.num_classes must be between 1 and {len(SHAPES)}, got {cfg['num_classes']}")
    root = Path(root)
    fingerprint = _fingerprint(task, cfg)
    if _already_built(root, fingerprint):
        return root
    logger.info("Generating built-in %s data in %s (%s)", task, root, cfg)

    def write(tmp: Path) -> None:
        task_cls.write_builtin(tmp, cfg, np.random.default_rng(cfg["seed"]))
        (tmp / _MARKER).write_text(json.dumps(fingerprint))

    atomic_folder(root, write)
    return root
