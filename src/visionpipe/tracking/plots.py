"""Figures logged with every run (matplotlib, Agg backend): what a reviewer looks at in MLflow."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from visionpipe.data.images import load_mask, load_rgb  # noqa: E402

MAX_IMAGES = 8


def confusion_matrix(predictions: pd.DataFrame, classes: list[str]) -> plt.Figure:
    counts = pd.crosstab(pd.Categorical(predictions["target"], classes), pd.Categorical(predictions["top1"], classes), dropna=False)
    matrix = counts.reindex(index=classes, columns=classes, fill_value=0).to_numpy()
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="Confusion matrix (validation)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    if len(classes) <= 30:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, int(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black", fontsize=8)
    fig.tight_layout()
    return fig


def per_class_accuracy(predictions: pd.DataFrame, classes: list[str]) -> plt.Figure:
    correct = (predictions["target"] == predictions["top1"]).groupby(predictions["target"]).mean().reindex(classes)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(classes) + 2), 3.5))
    ax.bar(classes, correct.fillna(0).to_numpy())
    ax.set(ylim=(0, 1), ylabel="top-1 accuracy", title="Per-class accuracy (validation)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return fig


def loss_curves(history: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for column in ("train_loss", "val_loss"):
        if column in history:
            ax.plot(history["epoch"] + 1, history[column], marker="o", label=column)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss curves")
    ax.legend()
    fig.tight_layout()
    return fig


def pr_curves(predictions: list[dict], ground_truth: dict, classes: list[str]) -> plt.Figure:
    from visionpipe.tasks.detection import coco_evaluate

    _, ev = coco_evaluate(ground_truth, predictions, classes)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}  # the user's category ids
    if ev is not None:
        recall = ev.params.recThrs
        for k, cat_id in enumerate(ev.params.catIds):
            precision = ev.eval["precision"][0, :, k, 0, -1]  # IoU 0.5, all areas, most detections
            if (precision > -1).any():
                ax.plot(recall, np.clip(precision, 0, None), label=names.get(cat_id, str(cat_id)))
        ax.legend(fontsize=7)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall at IoU 0.5")
    fig.tight_layout()
    return fig


def _grid(n: int, cols: int = 4):
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes.ravel()


def box_grid(predictions: list[dict], ground_truth: dict, index: dict, min_score: float = 0.3) -> plt.Figure:
    images = ground_truth["images"][:MAX_IMAGES]
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    fig, axes = _grid(len(images))
    for ax, image in zip(axes, images):
        ax.imshow(load_rgb(Path(index["root"]) / image["file_name"]))
        for ann in (a for a in ground_truth["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="lime", lw=1.5))
        for det in (p for p in predictions if p["image_id"] == image["id"] and p["score"] >= min_score):
            x, y, w, h = det["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="red", lw=1, ls="--"))
            ax.text(x, y, f"{names.get(det['category_id'], '?')} {det['score']:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(Path(image["file_name"]).name, fontsize=7)
    fig.suptitle(f"true (green) vs predicted (red, score >= {min_score})")
    fig.tight_layout()
    return fig


def mask_overlays(masks: dict, index: dict) -> plt.Figure:
    records = [r for r in index["val"] if Path(r["image"]).stem in masks][:MAX_IMAGES // 2]
    fig, axes = _grid(len(records) * 3, cols=3)
    cmap = plt.get_cmap("tab20", max(2, len(index["classes"])))
    root = Path(index["root"])
    for i, rec in enumerate(records):
        image = load_rgb(root / rec["image"])
        predicted = masks[Path(rec["image"]).stem]
        predicted = np.asarray(predicted() if callable(predicted) else predicted)  # PartitionedDataset loads lazily
        panels = [("image", image, None), ("predicted", image, predicted)]
        if "mask" in rec:
            panels.insert(1, ("true", image, load_mask(root / rec["mask"])))
        for j, (title, img, mask) in enumerate(panels):
            ax = axes[i * 3 + j]
            ax.imshow(img)
            if mask is not None:
                ax.imshow(np.ma.masked_where(mask == 0, mask), cmap=cmap, alpha=0.5, vmin=0, vmax=len(index["classes"]) - 1,
                          interpolation="nearest")
            ax.set_title(f"{Path(rec['image']).stem}: {title}", fontsize=7)
    fig.tight_layout()
    return fig
