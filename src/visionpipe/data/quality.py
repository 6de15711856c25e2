"""Data quality beyond broken files: the same or nearly the same image in two splits (leakage), duplicates
inside a split, class balance, and for detection the box sizes and objects per image."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from visionpipe.data import duplicates as near
from visionpipe.errors import readable

logger = logging.getLogger(__name__)

MARKDOWN_PAIRS = 1000  # duplicate pairs listed in data_quality.md (validation.json has every one)

def sample_splits(index: dict) -> list[str]:
    """Every key of the index that holds samples (train, val, test, or any other), in a stable order
    (``formats.splits_of`` gives only the known splits present)."""
    names = [k for k, v in index.items() if k != "problems" and isinstance(v, list) and v and isinstance(v[0], dict)
             and "image" in v[0] and "problem" not in v[0]]
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(names, key=lambda n: (order.get(n, 3), n))


def pixels_hash(pixels: np.ndarray) -> str:
    """md5 of decoded pixels: the content hash of an image that is no file of its own (a tar-shard member)."""
    return hashlib.md5(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def duplicates(index: dict, signatures: dict[str, list], hash_bits: int = near.HASH_BITS,
               max_pixel_difference: float = near.MAX_PIXEL_DIFFERENCE, workers: int = 2) -> list[dict[str, Any]]:
    """Exact (same bytes) and near duplicates (perceptual-hash candidates confirmed at the pixel level, see
    visionpipe.data.duplicates) among the images of every split; pairs across splits are leakage.
    ``signatures[split]`` holds each record's Signature (None for an unreadable image)."""
    entries = [(split, rec["image"]) for split in signatures for rec in index[split]]
    sigs = [sig for split in signatures for sig in signatures[split]]
    found = []
    for d in near.find(sigs, hash_bits, max_pixel_difference, workers=workers):
        (s1, i1), (s2, i2) = entries[d["i"]], entries[d["j"]]
        found.append({"kind": d["kind"], "leakage": s1 != s2, "a": {"split": s1, "image": i1}, "b": {"split": s2, "image": i2},
                      "distance": d["bits"], "difference": d["difference"]})
    return found


def statistics(task_cls, index: dict) -> dict[str, Any]:
    """Per-split class counts (images per class, from ``task_cls.record_labels``; objects per class where
    records hold boxes), balance, and for boxes the box-size and objects-per-image distributions."""
    classes = index["classes"]
    stats: dict[str, Any] = {"splits": {}, "classes": classes}
    for split in sample_splits(index):
        recs = index[split]
        entry: dict[str, Any] = {"images": len(recs)}
        labels = [task_cls.record_labels(r) for r in recs]
        if recs and all(item is not None for item in labels):
            images = Counter(label for item in labels for label in set(item))
            entry["images_per_class"] = {c: images.get(i, 0) for i, c in enumerate(classes)}
        if recs and all("boxes" in r for r in recs):
            objects = Counter(label for r in recs for label in r["labels"])
            entry["objects_per_class"] = {c: objects.get(i, 0) for i, c in enumerate(classes)}
            per_image = [len(r["labels"]) for r in recs]
            sizes = [float(np.sqrt(max(b[2] - b[0], 0) * max(b[3] - b[1], 0))) for r in recs for b in r["boxes"]]
            entry["objects_per_image"] = _summary(per_image)
            entry["box_size_px"] = _summary(sizes)  # sqrt(area): COCO small < 32 <= medium < 96 <= large
            entry["box_size_bins"] = {"small": sum(s < 32 for s in sizes), "medium": sum(32 <= s < 96 for s in sizes),
                                      "large": sum(s >= 96 for s in sizes)}
        counts = [v for v in (entry.get("images_per_class") or {}).values()]
        if counts:
            entry["balance"] = round(min(counts) / max(counts), 4) if max(counts) else 0.0  # 1 = balanced
        stats["splits"][split] = entry
    return stats


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    a = np.asarray(values, dtype=float)
    return {"count": int(a.size), "min": float(a.min()), "p25": float(np.percentile(a, 25)), "median": float(np.median(a)),
            "p75": float(np.percentile(a, 75)), "max": float(a.max()), "mean": float(a.mean())}


def warnings_for(index: dict, stats: dict, dups: list[dict]) -> list[dict[str, Any]]:
    """Findings that do not drop files: leakage, duplicates inside a split, classes with fewer than 2 images."""
    out = []
    for d in dups:
        a, b = d["a"], d["b"]
        what = "identical" if d["kind"] == "exact" else (f"nearly identical (perceptual hash {d['distance']} bits apart, "
                                                         f"pixels at most {d.get('difference', 0):.3f} of the range apart)")
        kind = "leakage" if d["leakage"] else "duplicate"
        out.append({"kind": kind, "split": f"{a['split']}/{b['split']}", "file": a["image"], "other": b["image"], "image": None,
                    "problem": f"{what} to {b['image']} ({b['split']} split)"})
    train = stats["splits"].get("train", {}).get("images_per_class") or {}
    for name, count in train.items():
        if 0 < count < 2:
            out.append({"kind": "rare_class", "split": "train", "file": index["root"], "image": None,
                        "problem": f"class '{name}' has {count} training image; at least 2 are needed to learn and check it"})
    for split in (s for s in sample_splits(index) if s != "train"):
        held = stats["splits"].get(split, {}).get("images_per_class")
        if held is None:
            continue
        for name, count in train.items():
            if count > 0 and held.get(name, 0) == 0:
                out.append({"kind": "unscored_class", "split": split, "file": index["root"], "image": None,
                            "problem": f"class '{name}' has {count} training image(s) but none in the {split} split, "
                                       f"so {split} metrics say nothing about it; move some of its images into {split}"})
    return out


def markdown(report: dict) -> str:
    """data_quality.md: what a person reads before trusting a score."""
    quality = report.get("quality") or {}
    stats, dups, warns = quality.get("statistics", {}), quality.get("duplicates", []), report.get("warnings", [])
    lines = [f"# Data quality: {report.get('task')}", "", f"Data: `{report.get('root')}` ({report.get('format')})", ""]
    leaks = [d for d in dups if d["leakage"]]
    lines += [f"- Findings that drop files: {len(report.get('findings', []))}",
              f"- Leakage (same or nearly the same image in two splits): {len(leaks)}"
              f"{' - fatal (data.leakage: error)' if leaks and report.get('leakage') == 'error' else ''}",
              f"- Duplicates inside a split: {len(dups) - len(leaks)}", ""]
    for split, entry in (stats.get("splits") or {}).items():
        lines += [f"## {split}: {entry['images']} images", ""]
        per_class = entry.get("images_per_class") or {}
        if per_class:
            objects = entry.get("objects_per_class")
            lines += ["| class | images |" + (" objects |" if objects else ""), "|---|---|" + ("---|" if objects else "")]
            lines += [f"| {c} | {n} |" + (f" {objects[c]} |" if objects else "") for c, n in per_class.items()]
            lines += ["", f"Balance (fewest / most images per class): {entry.get('balance')}", ""]
        if "box_size_px" in entry:
            box, per = entry["box_size_px"], entry["objects_per_image"]
            lines += [f"Objects per image: median {per.get('median', 0):.1f}, max {per.get('max', 0):.0f}. "
                      f"Box size sqrt(area) px: median {box.get('median', 0):.1f} "
                      f"(small {entry['box_size_bins']['small']}, medium {entry['box_size_bins']['medium']}, "
                      f"large {entry['box_size_bins']['large']})", ""]
    if dups:
        shown = sorted(dups, key=lambda d: not d["leakage"])[:MARKDOWN_PAIRS]  # leakage first
        lines += ["## Duplicate pairs", "", "| kind | split | image | split | image | hash bits | pixel difference |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {'leakage' if d['leakage'] else 'duplicate'} ({d['kind']}) | {d['a']['split']} | `{d['a']['image']}` | "
                  f"{d['b']['split']} | `{d['b']['image']}` | {d['distance']} | {d.get('difference', 0):.3f} |" for d in shown]
        if len(dups) > MARKDOWN_PAIRS:
            lines.append(f"\n... and {len(dups) - MARKDOWN_PAIRS} more pairs (validation.json lists them all)")
        lines.append("")
    others = [w for w in warns if w["kind"] not in ("leakage", "duplicate")]
    if others:
        lines += ["## Warnings", ""] + [f"- [{w['kind']}] {w['split']} `{w['file']}`: {w['problem']}" for w in others[:200]]
        if len(others) > 200:
            lines.append(f"- ... and {len(others) - 200} more (validation.json lists them all)")
    return readable("\n".join(lines) + "\n")


def plot(report: dict):
    """Images per class for each split (and box sizes for detection), one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = (report.get("quality") or {}).get("statistics", {}).get("splits", {})
    boxes = {s: e for s, e in splits.items() if "box_size_bins" in e}
    # saved at 100 dpi: 9 pt and more is at least 12 px in the PNG (as plots.py's figures)
    with plt.rc_context({"figure.dpi": 100, "font.size": 10.5, "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9}):
        return _plot_splits(plt, splits, boxes, report)


def _plot_splits(plt, splits: dict, boxes: dict, report: dict):
    fig, axes = plt.subplots(1, 2 if boxes else 1, figsize=(11 if boxes else 7, 4), squeeze=False)
    ax = axes[0][0]
    classes = (report.get("quality") or {}).get("statistics", {}).get("classes", [])
    width = 0.8 / max(1, len(splits))
    for k, (split, entry) in enumerate(splits.items()):
        counts = [(entry.get("images_per_class") or {}).get(c, 0) for c in classes]
        ax.bar(np.arange(len(classes)) + k * width, counts, width, label=split)
    ax.set_xticks(np.arange(len(classes)) + width * (len(splits) - 1) / 2, classes, rotation=45, ha="right")
    ax.set_ylabel("images")
    ax.set_title("Images per class")
    ax.legend()
    if boxes:
        ax = axes[0][1]
        bins = ["small", "medium", "large"]
        for k, (split, entry) in enumerate(boxes.items()):
            ax.bar(np.arange(3) + k * 0.4, [entry["box_size_bins"][b] for b in bins], 0.4, label=split)
        ax.set_xticks(np.arange(3) + 0.2, ["small (<32 px)", "medium", "large (>=96 px)"])
        ax.set_title("Box sizes")
        ax.legend()
    fig.tight_layout()
    return fig
