"""Checks every file and annotation of an index before training; reports each finding by file."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from visionpipe.data import duplicates, quality
from visionpipe.data.formats import ALL_SPLITS, SPLITS, splits_of
from visionpipe.data.shards import load_record_mask, load_record_rgb, member_bytes, verify_member
from visionpipe.errors import DataError, readable

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


def check_mask_file(root: Path, rec: dict, width: int, height: int, classes: list[str], ignore_index: int) -> list[tuple[str, str]]:
    """A record's class-index mask must decode, match the image size and hold only class indices or ignore_index."""
    mask_path = root / rec["shard"] / rec["mask"] if "shard" in rec else root / rec["mask"]
    try:
        mask = load_record_mask(root, rec)
    except DataError as err:
        return [(err.path, err.problem)]
    found = []
    if mask.shape != (height, width):
        found.append((str(mask_path), f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height}"))
    bad = sorted({int(v) for v in set(mask.ravel().tolist()) if not (0 <= v < len(classes) or v == ignore_index)})
    if bad:
        found.append((str(mask_path), f"mask values {bad[:10]} are neither a class index (0..{len(classes) - 1}) nor ignore_index {ignore_index}"))
    return found


def _check_and_sign(task_cls, root: Path, rec: dict, classes: list[str], data_cfg, max_pixels: int,
                    cache: duplicates.SignatureCache | None = None):
    """(problems, duplicate-search Signature or None): the image is decoded once for both, or not at all when
    ``cache`` holds the signature of the unchanged file."""
    sig: list = []
    problems = _check_record(task_cls, root, rec, classes, data_cfg, max_pixels, sig, cache)
    return problems, (sig[0] if sig else None)


def _check_record(task_cls, root: Path, rec: dict, classes: list[str], data_cfg, max_pixels: int,
                  signature: list | None = None, cache: duplicates.SignatureCache | None = None) -> list[tuple[str, str]]:
    """Return (file, problem) pairs for one record; an empty list means it is usable. A readable image's
    duplicate-search signature (content md5, perceptual hashes, thumbnail) is appended to ``signature`` when given.
    With a ``cache`` (and ``signature``), an image file decoded by an earlier run and unchanged since is not
    decoded again: its signature holds its size; the task's record checks run as always."""
    image_path = root / rec["shard"] / rec["image"] if "shard" in rec else root / rec["image"]
    key = sig = None
    try:
        if "shard" not in rec and not image_path.is_file():
            raise DataError(image_path, "image file not found")
        if ("shard" in rec and rec["members"]["image"][1] == 0) or ("shard" not in rec and image_path.stat().st_size == 0):
            raise DataError(image_path, "zero-byte file")
        if cache is not None and signature is not None and "shard" not in rec:
            key = cache.key(image_path, max_pixels)  # taken before reading: a file changed meanwhile misses next time
            sig = cache.get(key)
        if sig is None:
            if "shard" in rec:
                for kind in rec["members"]:
                    verify_member(root, rec, kind, member_bytes(root, rec, kind))
            pixels = load_record_rgb(root, rec, max_pixels=max_pixels)
    except DataError as err:
        return [(err.path, err.problem)]
    if sig is not None:
        width, height = sig.size
    else:
        height, width = pixels.shape[:2]
        if signature is not None:
            digest = duplicates.file_md5(image_path) if "shard" not in rec else quality.pixels_hash(pixels)
            sig = duplicates.signature(pixels, digest)
            if key is not None:
                cache.put(key, sig)
    if signature is not None:
        signature.append(sig)
    return task_cls.check_record(root, rec, width, height, classes, data_cfg)


CHUNK = 64  # records per thread-pool task: one future per image cost more than checking a small one
SMALL_IMAGE_BYTES = 32 * 1024  # median image file size below which records are checked on one thread


def default_workers(root: Path, records: list[dict]) -> int:
    """Threads for checking ``records``: one when their image files are small (median of the first 64 below
    SMALL_IMAGE_BYTES), else up to twice the cores. Decoders release the GIL, so threads pay off on photographs
    (and a second one per core hides file reads); a 32-px PNG decodes faster than a thread takes it over, and
    the per-image Python work holds the GIL: on 2 cores, 2,000 such images took 0.9-1.3 CPU-s on one thread,
    0.9-1.9 on four, and up to 3.5 on a busy machine (docs/benchmarks.md section 12)."""
    sizes = []
    for rec in records[:64]:
        if "shard" in rec:
            sizes.append(rec["members"]["image"][1])
            continue
        try:
            sizes.append((root / rec["image"]).stat().st_size)
        except OSError:  # missing: reported by the check itself
            continue
    if sizes and sorted(sizes)[len(sizes) // 2] < SMALL_IMAGE_BYTES:
        return 1
    return min(8, (os.cpu_count() or 1) * 2)


def validate_index(task_cls, index: dict, data_cfg=None, workers: int | None = None, max_pixels: int | None = None,
                   cache: str | os.PathLike | None = None) -> dict:
    """Check every record with ``task_cls`` (the Task class of the index, handed down by the caller); return a
    report listing each finding (file, problem, split).

    ``data_cfg`` is the task's ``data`` block (its defaults when None); ``max_pixels`` overrides its
    ``max_image_pixels``. ``cache``: a :class:`~visionpipe.data.duplicates.SignatureCache` file, read and
    rewritten, so that unchanged image files are not decoded again (the report is the same with or without it).
    """
    task, root, classes = index["task"], Path(index["root"]), index["classes"]
    if data_cfg is None:
        data_cfg = task_cls.config_model.model_fields["data"].annotation.model_construct(format=index.get("format"))
    max_pixels = max_pixels or data_cfg.max_image_pixels
    findings = [dict(p) for p in index.get("problems", [])]
    workers = workers or default_workers(root, index.get("train") or index.get("val") or [])
    signature_cache = duplicates.SignatureCache(cache) if cache is not None else None
    checked, signatures = {}, {}

    def check_chunk(records: list[dict]) -> list:
        return [_check_and_sign(task_cls, root, r, classes, data_cfg, max_pixels, signature_cache) for r in records]

    for split in dict.fromkeys([*SPLITS, *quality.sample_splits(index)]):  # train, val, and test or others when present
        records = index.get(split) or []
        checked[split] = len(records)
        signatures[split] = []
        chunks = [records[i:i + CHUNK] for i in range(0, len(records), CHUNK)]
        with ThreadPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
            results = (result for part in (pool.map if pool else map)(check_chunk, chunks) for result in part)
            for rec, (problems, sig) in zip(records, results):
                findings += [{"split": split, "file": f, "image": rec["image"], "problem": p} for f, p in problems]
                signatures[split].append(sig)
        if not records:
            findings.append({"split": split, "file": str(root), "image": None, "problem": f"the {split} split has no images"})
    labels = [task_cls.record_labels(r) for r in index["train"]]
    if labels and all(item is not None for item in labels):
        counts = Counter(label for item in labels for label in set(item))
        for i, name in enumerate(classes):
            if counts[i] == 0:
                findings.append({"split": "train", "file": str(root), "image": None, "problem": f"class '{name}' has no training images"})
    if signature_cache is not None:
        signature_cache.save()
        # a first run (nothing reused) says nothing at INFO: the line is news only when a re-run skipped work
        logger.log(logging.INFO if signature_cache.hits else logging.DEBUG,
                   "Validation: %d of %d image(s) unchanged since the last run were not decoded again (cache: %s)",
                   signature_cache.hits, sum(checked.values()), cache)
    near = getattr(data_cfg, "near_duplicates", None)
    dups = quality.duplicates(index, signatures, **(near.model_dump() if near is not None else {}), workers=workers)
    stats = quality.statistics(task_cls, index)
    warnings = quality.warnings_for(index, stats, dups)
    return {"task": task, "root": str(root), "format": index["format"], "checked": checked, "findings": findings,
            "warnings": warnings, "quality": {"statistics": stats, "duplicates": dups}}


def _drop_untrained_classes(task_cls, clean: dict) -> list[str]:
    """After ``skip``, a class left without training images is removed (labels re-indexed by the task's
    ``relabel``): a model output that never saw data is no class. Returns the removed names. Tasks whose
    records do not list their labels (mask files) keep their classes."""
    classes = clean["classes"]
    labels = [task_cls.record_labels(r) for r in clean["train"]]
    if not labels or any(item is None for item in labels):
        return []
    seen = {label for item in labels for label in item}
    removed = [c for i, c in enumerate(classes) if i not in seen]
    if not removed:
        return []
    new_index = {old: new for new, old in enumerate(i for i in range(len(classes)) if i in seen)}
    for split in quality.sample_splits(clean) or SPLITS:
        clean[split] = [r for r in (task_cls.relabel(rec, new_index) for rec in clean[split]) if r is not None]
    clean["classes"] = [c for i, c in enumerate(classes) if i in seen]
    return removed


def report_path(task: str) -> str:
    """Where the readable data-quality report of ``task`` is written (the catalog's ``{task}.data_quality``)."""
    return f"data/08_reporting/{task}/data_quality.md"


def summary_lines(warnings: list[dict], where: str) -> list[str]:
    """One line per warning kind: how many, an example, and the report that lists them all."""
    by_kind: dict[str, list[dict]] = {}
    for w in warnings:
        by_kind.setdefault(w["kind"], []).append(w)
    lines = []
    for kind, items in by_kind.items():
        first = items[0]
        lines.append(readable(f"{len(items)} {kind.replace('_', ' ')} finding(s) (first: {first['file']}: {first['problem']}); "
                              f"all are listed in {where}"))
    return lines


def apply_policy(task_cls, index: dict, report: dict, policy: str) -> tuple[dict, dict]:
    """``strict``: raise on any finding. ``skip``: drop records with findings, then classes left without
    training images. Leakage warnings are fatal when the report says ``leakage: error``. Returns (index, summary)."""
    findings = report["findings"]
    task = index["task"]
    where = report_path(task)
    leaks = [w for w in report.get("warnings", []) if w["kind"] == "leakage"]
    if leaks and report.get("leakage") == "error":
        shown = "; ".join(f"{w['file']} ~ {w['other']}" if w.get("other") else f"{w['file']}: {w['problem']}" for w in leaks[:3])
        raise DataError(report["root"], f"{len(leaks)} image pair(s) leak between splits (first: {shown}{'; ...' if len(leaks) > 3 else ''})",
                        f"Remove the copies so no split sees another's images, or set {task}.data.leakage: warn "
                        f"(every pair is listed in {where})")
    for line in summary_lines(report.get("warnings", []), where):
        logger.warning("Data warning: %s", line)
    if findings and policy == "strict":
        shown = "\n".join(f"  [{f['split']}] {f['file']}: {f['problem']}" for f in findings[:20])
        more = f"\n  ... and {len(findings) - 20} more" if len(findings) > 20 else ""
        raise DataError(
            report["root"],
            f"{len(findings)} data problem(s) found:\n{shown}{more}\n",
            f"Fix the files, or set {task}.data.validation: skip to drop them (the full list is in "
            f"data/08_reporting/{task}/validation.json)",
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
    if findings:
        first = findings[0]
        logger.warning("Skipped %d data problem(s) (first: %s: %s); each is listed in %s", len(findings), readable(first["file"]),
                       readable(first["problem"]), f"data/08_reporting/{task}/validation.json")
    removed = _drop_untrained_classes(task_cls, clean) if policy == "skip" else []
    if removed:
        logger.warning("Removed class(es) %s: no training image left after validation (their validation images are "
                       "dropped too)", removed)
        summary["removed_classes"] = removed
        for split in SPLITS:
            summary[split]["kept"] = len(clean[split])
            summary[split]["dropped"] = len(index[split]) - len(clean[split])
    return clean, summary
