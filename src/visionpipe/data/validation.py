"""Checks every file and annotation of an index before training; reports each finding by file."""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from visionpipe.data.formats import ALL_SPLITS, splits_of
from visionpipe.data.images import load_mask, load_rgb
from visionpipe.errors import DataError

logger = logging.getLogger(__name__)

BOX_TOLERANCE = 1.0  # pixels a box may overhang the image before it is an error


def check_boxes(rec: dict, width: int, height: int, classes: list[str]) -> list[str]:
    """Problems with a record's boxes and box labels (for tasks whose records carry boxes)."""
    problems = []
    for box, label in zip(rec["boxes"], rec["labels"]):
        x0, y0, x1, y1 = box
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            problems.append(f"box {[round(v, 2) for v in box]} has non-positive size ({w:.2f}x{h:.2f})")
        elif x0 < -BOX_TOLERANCE or y0 < -BOX_TOLERANCE or x1 > width + BOX_TOLERANCE or y1 > height + BOX_TOLERANCE:
            problems.append(f"box {[round(v, 2) for v in box]} lies outside the {width}x{height} image")
        if not 0 <= label < len(classes):
            problems.append(f"label {label} outside 0..{len(classes) - 1}")
    return problems


def check_annotated_size(rec: dict, image_path: Path, width: int, height: int) -> list[tuple[str, str]]:
    """An annotation file's width/height must match the decoded image."""
    if rec.get("width") and rec.get("height") and (rec["width"], rec["height"]) != (width, height):
        return [(str(image_path), f"annotation says {rec['width']}x{rec['height']}, file is {width}x{height}")]
    return []


def check_mask_file(mask_path: Path, width: int, height: int, classes: list[str], ignore_index: int) -> list[tuple[str, str]]:
    """A class-index mask file must decode, match the image size and hold only class indices or ignore_index."""
    try:
        mask = load_mask(mask_path)
    except DataError as err:
        return [(err.path, err.problem)]
    found = []
    if mask.shape != (height, width):
        found.append((str(mask_path), f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}"))
    bad = sorted({int(v) for v in set(mask.ravel().tolist()) if not (0 <= v < len(classes) or v == ignore_index)})
    if bad:
        found.append((str(mask_path), f"mask values {bad[:10]} are neither a class index (0..{len(classes) - 1}) nor ignore_index {ignore_index}"))
    return found


def _check_record(task_cls, root: Path, rec: dict, classes: list[str], data_cfg, max_pixels: int) -> list[tuple[str, str]]:
    """Return (file, problem) pairs for one record; an empty list means it is usable."""
    image_path = root / rec["image"]
    try:
        if not image_path.is_file():
            raise DataError(image_path, "image file not found")
        if image_path.stat().st_size == 0:
            raise DataError(image_path, "zero-byte file")
        pixels = load_rgb(image_path, max_pixels=max_pixels)
    except DataError as err:
        return [(err.path, err.problem)]
    height, width = pixels.shape[:2]
    return task_cls.check_record(root, rec, width, height, classes, data_cfg)


def validate_index(index: dict, data_cfg=None, workers: int | None = None, max_pixels: int | None = None) -> dict:
    """Check every record; return a report listing each finding (file, problem, split).

    ``data_cfg`` is the task's ``data`` block (its defaults when None); ``max_pixels`` overrides its
    ``max_image_pixels``.
    """
    from visionpipe.tasks import get_task_class

    task, root, classes = index["task"], Path(index["root"]), index["classes"]
    task_cls = get_task_class(task)
    if data_cfg is None:
        data_cfg = task_cls.config_model.model_fields["data"].annotation.model_construct(format=index.get("format"))
    max_pixels = max_pixels or data_cfg.max_image_pixels
    findings = [dict(p) for p in index.get("problems", [])]
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    checked = {}
    for split in splits_of(index):
        records = index[split]
        checked[split] = len(records)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = pool.map(lambda r: _check_record(task_cls, root, r, classes, data_cfg, max_pixels), records)
            for rec, problems in zip(records, results):
                findings += [{"split": split, "file": f, "image": rec["image"], "problem": p} for f, p in problems]
        if not records:
            findings.append({"split": split, "file": str(root), "image": None, "problem": f"the {split} split has no images"})
    labels = [task_cls.record_labels(r) for r in index["train"]]
    if labels and all(item is not None for item in labels):
        counts = Counter(label for item in labels for label in set(item))
        for i, name in enumerate(classes):
            if counts[i] == 0:
                findings.append({"split": "train", "file": str(root), "image": None, "problem": f"class '{name}' has no training images"})
    return {"task": task, "root": str(root), "format": index["format"], "checked": checked, "findings": findings}


def apply_policy(index: dict, report: dict, policy: str) -> tuple[dict, dict]:
    """``strict``: raise on any finding. ``skip``: drop records with findings. Returns (index, summary)."""
    findings = report["findings"]
    if findings and policy == "strict":
        shown = "\n".join(f"  [{f['split']}] {f['file']}: {f['problem']}" for f in findings[:20])
        more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
        raise DataError(
            report["root"],
            f"{len(findings)} data problem(s) found:\n{shown}{more}\n",
            f"Fix the files, or set {index['task']}.data.validation: skip to drop them (the full list is in "
            f"data/08_reporting/{index['task']}/validation.json)",
        )
    bad = {(f["split"], f["image"]) for f in findings if f["image"]}
    clean = {k: v for k, v in index.items() if k not in (*ALL_SPLITS, "problems")}
    summary = {}
    for split in splits_of(index):
        clean[split] = [r for r in index[split] if (split, r["image"]) not in bad]
        summary[split] = {"kept": len(clean[split]), "dropped": len(index[split]) - len(clean[split])}
        if not clean[split]:
            raise DataError(report["root"], f"no usable {split} images left after validation", "See the validation report for what is wrong")
    clean["problems"] = []
    for f in findings:
        logger.warning("Skipped [%s] %s: %s", f["split"], f["file"], f["problem"])
    return clean, summary
