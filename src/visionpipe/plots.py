"""Figures logged with every run (matplotlib, Agg backend): what a reviewer looks at in MLflow."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from visionpipe.data.shards import load_record_mask, load_record_rgb  # noqa: E402

MAX_IMAGES = 8
IGNORE_INDEX = 255


def class_colours(num_classes: int) -> np.ndarray:
    """One RGB colour (0..1) per class index: class 0 (background) dark grey, then matplotlib's tab10 (tab20
    beyond ten classes); the same colours in overlays, legends and the palette of predicted-mask PNGs."""
    base = plt.get_cmap("tab10" if num_classes <= 11 else "tab20").colors  # tab10's colours are the most distinct
    colours = [(0.15, 0.15, 0.15)] + [base[i % len(base)] for i in range(max(0, num_classes - 1))]
    return np.asarray(colours[:max(1, num_classes)])


def palette_mask(mask: np.ndarray, num_classes: int):
    """A class-index mask as a palette ("P") PNG image: pixel values stay class indices (what tools and
    tests read back), and an image viewer shows each class in its legend colour; the ignore index is white."""
    from PIL import Image

    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:num_classes] = (class_colours(num_classes) * 255).round().astype(np.uint8)
    palette[IGNORE_INDEX] = 255
    image.putpalette(palette.ravel().tolist())
    return image


def _class_legend(fig: plt.Figure, classes: list[str]) -> None:
    from matplotlib.patches import Patch

    colours = class_colours(len(classes))
    handles = [Patch(facecolor=colours[i], edgecolor="none", label=name) for i, name in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(classes), 6), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.0))


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
    """Train and validation loss per epoch (1-based, as in history.csv and the MLflow steps)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for column in ("train_loss", "val_loss"):
        if column in history:
            ax.plot(history["epoch"], history[column], marker="o", label=column)
    ax.set(xlabel="epoch", ylabel="loss", title="Loss curves")
    ax.legend()
    fig.tight_layout()
    return fig


def pr_curves(ev, names: dict[int, str], title: str = "Precision-recall at IoU 0.5") -> plt.Figure:
    """Per-class precision-recall at IoU 0.5 from an evaluated COCOeval ``ev`` (None: no predictions), each class
    labelled ``names[category_id]`` (the user's category ids, which may be sparse) with its AP50."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if ev is not None:
        recall = ev.params.recThrs
        for k, cat_id in enumerate(ev.params.catIds):
            precision = ev.eval["precision"][0, :, k, 0, -1]  # IoU 0.5, all areas, most detections
            valid = precision > -1
            if valid.any():
                ap50 = float(precision[valid].mean())  # COCO's AP at IoU 0.5 for this class
                ax.plot(recall, np.clip(precision, 0, None), label=f"{names.get(cat_id, str(cat_id))} (AP50 {ap50:.3f})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, title="class (AP at IoU 0.5)", title_fontsize=7)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    fig.tight_layout()
    return fig


def _grid(n: int, cols: int = 4, cell: float = 3.0):
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, cell * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes.ravel()


def top_detections(predictions: list[dict], image_id: int, min_score: float, top_k: int) -> list[dict]:
    """The ``top_k`` highest-scoring predictions of one image scoring at least ``min_score``."""
    mine = [p for p in predictions if p["image_id"] == image_id and p["score"] >= min_score]
    return sorted(mine, key=lambda p: -p["score"])[:top_k]


def box_grid(predictions: list[dict], ground_truth: dict, index: dict, min_score: float = 0.3, top_k: int = 5,
             cols: int = 4, cell: float = 3.5) -> plt.Figure:
    """Validation images with true boxes (green) and the ``top_k`` predictions scoring at least ``min_score``
    (red, dashed), each labelled "class score" on a white background so it reads on any image."""
    images = ground_truth["images"][:MAX_IMAGES]
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    fig, axes = _grid(len(images), cols=cols, cell=cell)
    records = {r["image"]: r for r in index.get("val", [])}  # a record may point into a tar shard
    for ax, image in zip(axes, images):
        ax.imshow(load_record_rgb(Path(index["root"]), records.get(image["file_name"], {"image": image["file_name"]})))
        for ann in (a for a in ground_truth["annotations"] if a["image_id"] == image["id"]):
            x, y, w, h = ann["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="lime", lw=1.5))
        shown = top_detections(predictions, image["id"], min_score, top_k)
        for det in shown:
            x, y, w, h = det["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="red", lw=1.2, ls="--"))
            ax.text(x, y, f"{names.get(det['category_id'], '?')} {det['score']:.2f}", color="darkred", fontsize=8,
                    va="bottom", ha="left", clip_on=True,
                    bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
        ax.set_title(f"{Path(image['file_name']).name}: {len(shown)} shown", fontsize=8)
    fig.suptitle(f"true (green) vs predicted (red): top {top_k} per image with score >= {min_score}", fontsize=10)
    fig.tight_layout()
    return fig


def mask_overlays(masks: dict, index: dict) -> plt.Figure:
    """Image, true and predicted masks side by side, coloured by class, with a legend of class names."""
    records = [r for r in index["val"] if Path(r["image"]).stem in masks][:MAX_IMAGES // 2]
    classes = index["classes"]
    fig, axes = _grid(len(records) * 3, cols=3)
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(class_colours(len(classes)))
    root = Path(index["root"])
    for i, rec in enumerate(records):
        image = load_record_rgb(root, rec)
        predicted = masks[Path(rec["image"]).stem]
        predicted = np.asarray(predicted() if callable(predicted) else predicted)  # PartitionedDataset loads lazily
        panels = [("image", image, None), ("predicted", image, predicted)]
        if "mask" in rec:
            panels.insert(1, ("true", image, load_record_mask(root, rec)))
        for j, (title, img, mask) in enumerate(panels):
            ax = axes[i * 3 + j]
            ax.imshow(img)
            if mask is not None:
                hidden = (mask == 0) | (mask >= len(classes))  # background and the ignore index stay see-through
                ax.imshow(np.ma.masked_where(hidden, mask), cmap=cmap, alpha=0.55, vmin=0, vmax=len(classes) - 1,
                          interpolation="nearest")
            ax.set_title(f"{Path(rec['image']).stem}: {title}", fontsize=7)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _class_legend(fig, classes)
    return fig
