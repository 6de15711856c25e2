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

# Every figure is saved at DPI (Kedro's MatplotlibDataset saves at the figure's dpi), so a size in points is
# size * DPI / 72 pixels in the PNG: TEXT_PT and SMALL_PT keep every label at least MIN_TEXT_PX (12) pixels tall.
DPI = 100
MIN_TEXT_PX = 12
TEXT_PT = 10.5  # 14.6 px: titles, axis labels
SMALL_PT = 9  # 12.5 px: ticks, legends, box and score labels
plt.rcParams.update({
    "figure.dpi": DPI, "savefig.dpi": DPI, "font.size": TEXT_PT, "axes.titlesize": TEXT_PT, "axes.labelsize": TEXT_PT,
    "xtick.labelsize": SMALL_PT, "ytick.labelsize": SMALL_PT, "legend.fontsize": SMALL_PT, "legend.title_fontsize": SMALL_PT,
    "figure.titlesize": TEXT_PT + 1,
})


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


def object_colours(num_classes: int) -> np.ndarray:
    """The colour of each object class (0-based, no background) in box and instance figures: the colours
    segmentation uses for classes 1.. (tab10), so a class reads the same in every figure."""
    return class_colours(num_classes + 1)[1:]


def text_colour(rgb) -> str:
    """Black or white, whichever reads on a background of colour ``rgb`` (0..1), by its luminance."""
    r, g, b = rgb[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _class_legend(fig: plt.Figure, classes: list[str], colours=None, extra: list | None = None) -> None:
    from matplotlib.patches import Patch

    colours = class_colours(len(classes)) if colours is None else colours
    handles = [Patch(facecolor=colours[i], edgecolor="black", linewidth=0.5, label=name) for i, name in enumerate(classes)]
    handles += extra or []
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, bbox_to_anchor=(0.5, 0.0))


def _outlined(width: float = 3.0):
    """Path effect drawing a line over a black one, so a class-coloured outline stands out on any image."""
    from matplotlib import patheffects

    return [patheffects.Stroke(linewidth=width, foreground="black"), patheffects.Normal()]


def count_matrix(matrix: np.ndarray, rows: list[str], columns: list[str], title: str,
                 ylabel: str = "true", xlabel: str = "predicted") -> plt.Figure:
    """A confusion matrix of counts: rows true, columns predicted, each cell's count written in it."""
    matrix = np.asarray(matrix)
    size = max(5.0, 0.55 * len(columns) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(columns)), yticks=range(len(rows)), xticklabels=columns, yticklabels=rows,
           xlabel=xlabel, ylabel=ylabel, title=title)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    if len(columns) <= 30:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, int(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black",
                    fontsize=SMALL_PT)
    fig.tight_layout()
    return fig


def confusion_matrix(predictions: pd.DataFrame, classes: list[str]) -> plt.Figure:
    counts = pd.crosstab(pd.Categorical(predictions["target"], classes), pd.Categorical(predictions["top1"], classes), dropna=False)
    matrix = counts.reindex(index=classes, columns=classes, fill_value=0).to_numpy()
    return count_matrix(matrix, classes, classes, "Confusion matrix (validation)")


def detection_confusion_matrix(matrix: np.ndarray, classes: list[str], conf: float, iou: float) -> plt.Figure:
    """Ultralytics' detection confusion matrix: ``classes`` plus background. Row "background": predictions
    matching no object (false positives); column "background": objects no prediction found (missed)."""
    labels = [*classes, "background"]
    return count_matrix(matrix, labels, labels, f"Confusion matrix (score >= {conf:g}, IoU >= {iou:g})")


def per_class_accuracy(predictions: pd.DataFrame, classes: list[str]) -> plt.Figure:
    correct = (predictions["target"] == predictions["top1"]).groupby(predictions["target"]).mean().reindex(classes)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(classes) + 2), 4))
    ax.bar(classes, correct.fillna(0).to_numpy(), color=object_colours(len(classes)), edgecolor="black", linewidth=0.5)
    ax.set(ylim=(0, 1), ylabel="top-1 accuracy", title="Per-class accuracy (validation)")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    return fig


def _panels(history: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(title, columns) of each panel of ``results``: the loss (train and val), each named loss term, the
    learning rate, each metric, and one panel per per-class metric (``ap/<class>``) with every class."""
    columns = [c for c in history.columns if c != "epoch" and pd.api.types.is_numeric_dtype(history[c])]
    panels = [("loss", [c for c in ("train_loss", "val_loss") if c in columns])]
    panels += [(f"train {c.removeprefix('train_')}", [c]) for c in columns if c.startswith("train_") and c != "train_loss"]
    panels += [("learning rate", ["lr"])] if "lr" in columns else []
    panels += [(c, [c]) for c in columns if "/" not in c and not c.startswith(("train_", "early_stop")) and c not in ("lr", "val_loss")]
    for prefix in dict.fromkeys(c.split("/")[0] for c in columns if "/" in c):
        panels.append((f"{prefix} per class", [c for c in columns if c.startswith(prefix + "/")]))
    return [(title, cols) for title, cols in panels if cols]


def results(history: pd.DataFrame) -> plt.Figure:
    """Every curve of the run on one figure (Ultralytics' results.png): one panel per loss term, the learning
    rate, each metric and each per-class metric, against the 1-based epoch of history.csv and MLflow."""
    panels = _panels(history)
    cols = min(4, max(1, len(panels)))
    rows = int(np.ceil(len(panels) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (title, cols_) in zip(axes.ravel(), panels):
        per_class = "/" in cols_[0]
        colours = object_colours(len(cols_)) if per_class else None
        for k, column in enumerate(cols_):
            label = column.split("/", 1)[1] if per_class else {"train_loss": "train", "val_loss": "val"}.get(column, None)
            ax.plot(history["epoch"], history[column], marker="o", markersize=3, label=label,
                    color=None if colours is None else colours[k])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if len(cols_) > 1:
            ax.legend()
    fig.tight_layout()
    return fig


def pr_curves(ev, names: dict[int, str], title: str = "Precision-recall at IoU 0.5") -> plt.Figure:
    """Per-class precision-recall at IoU 0.5 from an evaluated COCOeval ``ev`` (None: no predictions), each class
    labelled ``names[category_id]`` (the user's category ids, which may be sparse) with its AP50, in its class colour."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    if ev is not None:
        recall = ev.params.recThrs
        for k, cat_id in enumerate(ev.params.catIds):
            precision = ev.eval["precision"][0, :, k, 0, -1]  # IoU 0.5, all areas, most detections
            valid = precision > -1
            if valid.any():
                ap50 = float(precision[valid].mean())  # COCO's AP at IoU 0.5 for this class
                ax.plot(recall, np.clip(precision, 0, None), label=f"{names.get(cat_id, str(cat_id))} (AP50 {ap50:.3f})",
                        color=object_colours(len(ev.params.catIds))[k], lw=2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="class (AP at IoU 0.5)")
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


def _label_y(placed: list[tuple[float, float]], x: float, y: float, dx: float, dy: float, step: float) -> float:
    """``y`` moved by ``step`` until a label at (x, y) no longer overlaps one already ``placed``."""
    for _ in range(20):
        if not any(abs(x - px) < dx and abs(y - py) < dy for px, py in placed):
            break
        y += step
    placed.append((x, y))
    return y


def box_grid(predictions: list[dict], ground_truth: dict, index: dict, min_score: float = 0.3, top_k: int = 5,
             cols: int = 4, cell: float = 3.6) -> plt.Figure:
    """Validation images with their true boxes (solid, class name below the box) and the ``top_k`` predictions
    scoring at least ``min_score`` (dashed, "class score" above the box), each box in its class's colour, labels
    stacked so that none hides another; a legend of class colours and line styles."""
    from matplotlib.lines import Line2D

    images = ground_truth["images"][:MAX_IMAGES]
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in categories}
    colours = object_colours(len(categories))
    colour = {c["id"]: colours[k] for k, c in enumerate(categories)}
    fig, axes = _grid(len(images), cols=cols, cell=cell)
    records = {r["image"]: r for r in index.get("val", [])}  # a record may point into a tar shard
    label_px = SMALL_PT * DPI / 72 * 1.5  # a label's height with its padding, in figure pixels
    for ax, image in zip(axes, images):
        pixels = load_record_rgb(Path(index["root"]), records.get(image["file_name"], {"image": image["file_name"]}))
        ax.imshow(pixels)
        h, w = pixels.shape[:2]
        scale = max(h, w) / (cell * DPI * 0.85)  # image pixels per figure pixel
        dy, dx = label_px * scale, 6 * label_px * scale
        placed: list[tuple[float, float]] = []
        truth = [a for a in ground_truth["annotations"] if a["image_id"] == image["id"]]
        for ann in truth:
            x, y, bw, bh = ann["bbox"]
            c = colour.get(ann["category_id"], (1, 1, 1))
            ax.add_patch(plt.Rectangle((x, y), bw, bh, fill=False, edgecolor=c, lw=2.2, path_effects=_outlined(4)))
            ly = _label_y(placed, x, min(y + bh, h - dy), dx, dy, -dy)
            ax.text(x, ly, names.get(ann["category_id"], "?"), color=text_colour(c), fontsize=SMALL_PT, va="top", ha="left",
                    clip_on=True, bbox={"facecolor": c, "alpha": 0.9, "edgecolor": "black", "linewidth": 0.6, "pad": 1.5})
        shown = top_detections(predictions, image["id"], min_score, top_k)
        for det in shown:
            x, y, bw, bh = det["bbox"]
            c = colour.get(det["category_id"], (1, 1, 1))
            ax.add_patch(plt.Rectangle((x, y), bw, bh, fill=False, edgecolor=c, lw=2, ls=(0, (4, 2)), path_effects=_outlined(3.5)))
            ly = _label_y(placed, x, max(y, dy), dx, dy, dy)
            ax.text(x, ly, f"{names.get(det['category_id'], '?')} {det['score']:.2f}", color="black", fontsize=SMALL_PT,
                    va="bottom", ha="left", clip_on=True,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": c, "linewidth": 1.5, "pad": 1.5})
        ax.set_title(f"{Path(image['file_name']).stem}: {len(truth)} true, {len(shown)} predicted")
    styles = [Line2D([], [], color="black", lw=2, label="true"),
              Line2D([], [], color="black", lw=2, ls=(0, (4, 2)), label=f"predicted (top {top_k}, score >= {min_score:g})")]
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _class_legend(fig, [c["name"] for c in categories], colours, styles)
    return fig


def mask_overlays(masks: dict, index: dict) -> plt.Figure:
    """Image, true and predicted masks side by side, coloured by class, with a legend of class names."""
    records = [r for r in index["val"] if Path(r["image"]).stem in masks][:MAX_IMAGES // 2]
    classes = index["classes"]
    fig, axes = _grid(len(records) * 3, cols=3, cell=3.6)
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
                ax.imshow(np.ma.masked_where(hidden, mask), cmap=cmap, alpha=0.45, vmin=0, vmax=len(classes) - 1,
                          interpolation="nearest")
                colours = class_colours(len(classes))
                for k in np.unique(mask):  # each class region outlined in its colour over black: reads on any image
                    if 0 < k < len(classes):
                        ax.contour(mask == k, levels=[0.5], colors=[colours[k]], linewidths=1.8,
                                   path_effects=_outlined(3.2))
            ax.set_title(f"{Path(rec['image']).stem}: {title}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _class_legend(fig, classes)
    return fig
