"""Comparing like with like: the data a score was measured on, and re-scoring a champion on today's data
with its classes matched to today's by name."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch

from visionpipe import stages
from visionpipe.config import ModelConfig
from visionpipe.data.formats import hash_records
from visionpipe.serving.bundle import SPEC_FILE, load_bundle
from visionpipe.tasks import get_task, get_task_class
from visionpipe.tasks.base import OTHER_CLASS

logger = logging.getLogger(__name__)

UNKNOWN_CLASS_BIAS = -1.0e4  # a class the champion never learnt gets a logit it can never win with


def scoring_split(index: dict) -> str:
    """The split that scores a model: ``test`` when the index has a non-empty one (``stages.evaluate`` then adds
    ``test/`` metrics and the gate compares those), else ``val``."""
    return "test" if index.get("test") else "val"


def split_fingerprint(index: dict, split: str) -> str:
    """A hash of one split: its records (files, labels, boxes), the class list, and each file's size."""
    h = hashlib.md5(json.dumps({"split": split, "classes": index["classes"]}, sort_keys=True).encode())
    hash_records(h, Path(index["root"]), index.get(split) or [])
    return h.hexdigest()


def class_layout(shapes_n: dict[str, torch.Size], shapes_n1: dict[str, torch.Size], n: int) -> dict[str, tuple[int, int]]:
    """Which tensors hold one row per class, from the state-dict shapes of the same model built for ``n`` and
    ``n + 1`` classes: ``{key: (anchors, offset)}``, dim 0 being ``anchors * (classes + offset)`` (offset 1
    for a background row)."""
    layout = {}
    for key, shape in shapes_n.items():
        other = shapes_n1.get(key)
        if other is None or tuple(other) == tuple(shape):
            continue
        anchors = other[0] - shape[0]
        layout[key] = (anchors, shape[0] // anchors - n)
    return layout


def remap_state_dict(old_state: dict[str, torch.Tensor], layout: dict[str, tuple[int, int]], old_classes: list[str],
                     new_classes: list[str]) -> dict[str, torch.Tensor]:
    """The champion's weights with every class-sized tensor (``layout``, see class_layout) re-indexed to
    ``new_classes`` by name.

    Rows of classes the champion knows are copied; rows of classes it does not know get zero weights and a
    very negative bias, so it never predicts them and their images count as misses.

    Which tensors are class-sized is found by building the model for two class counts, so it holds for any
    task: classifier heads, segmentation heads, detector class logits (with a background row) and the per-class
    box deltas of two-stage detectors.
    """
    position = {name: i for i, name in enumerate(old_classes)}
    out = dict(old_state)
    for key, (anchors, offset) in layout.items():
        old = old_state[key]
        class_major = "bbox" in key  # box deltas are laid out class by class, logits anchor by anchor
        k_old, k_new = len(old_classes) + offset, len(new_classes) + offset
        # a (classes, anchors, ...) view of the tensor
        src = old.reshape(k_old, anchors, *old.shape[1:]) if class_major else old.reshape(anchors, k_old, *old.shape[1:]).transpose(0, 1)
        dst = torch.zeros((k_new, anchors, *old.shape[1:]), dtype=old.dtype)
        if old.ndim == 1 and not class_major:
            dst.fill_(UNKNOWN_CLASS_BIAS)
        dst[:offset] = src[:offset]  # the background row stays
        for j, name in enumerate(new_classes):
            if name in position:
                dst[j + offset] = src[position[name] + offset]
        dst = dst if class_major else dst.transpose(0, 1)
        out[key] = dst.contiguous().reshape(anchors * k_new, *old.shape[1:])
    return out


def remap_bundle(bundle: dict[str, Any], classes: list[str]) -> dict[str, Any]:
    """The champion bundle as a model over ``classes`` (today's class list), matched by name."""
    spec = {**bundle["spec"], "model": {**bundle["spec"]["model"], "pretrained": False, "pretrained_path": None}}
    old_classes = list(spec["classes"])
    if old_classes == list(classes):
        return bundle

    def shapes(names: list[str]) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in get_task({**spec, "classes": names}).build_model().state_dict().items()}

    layout = class_layout(shapes(old_classes), shapes([*old_classes, "\0probe"]), len(old_classes))
    return {"spec": {**spec, "classes": list(classes)},
            "state_dict": remap_state_dict(bundle["state_dict"], layout, old_classes, list(classes))}


class OutputClassMap(torch.nn.Module):
    """A model over ``old_classes`` answering over ``new_classes`` + OTHER_CLASS, matched by name at the output.

    The champion's per-class logits (dim 1) are copied to the column of the same class today; a class of today's
    data the champion never learnt gets a logit it can never win with; the last column carries the champion's best
    logit among its classes that today's data does not have, so when that is its answer the image (or pixel) is
    predicted as OTHER_CLASS: a miss. A champion that knows none of today's classes therefore scores exactly 0.
    """

    def __init__(self, model: torch.nn.Module, old_classes: list[str], new_classes: list[str]):
        super().__init__()
        self.model = model
        position = {name: i for i, name in enumerate(old_classes)}
        self.register_buffer("source", torch.tensor([position.get(name, -1) for name in new_classes]), persistent=False)
        self.register_buffer("others", torch.tensor([i for i, name in enumerate(old_classes) if name not in set(new_classes)],
                                                    dtype=torch.long), persistent=False)

    def forward(self, images):
        out = self.model(images)
        shape = (out.shape[0], len(self.source) + 1, *out.shape[2:])
        mapped = out.new_full(shape, UNKNOWN_CLASS_BIAS)
        known = self.source >= 0
        mapped[:, :-1][:, known] = out[:, self.source[known]]
        if len(self.others):
            mapped[:, -1] = out[:, self.others].amax(1)
        else:  # the champion has no class beyond today's: the column is never the answer
            mapped[:, -1] = 2 * UNKNOWN_CLASS_BIAS
        return mapped


def classes_note(champion_version: Any, champion_classes: list[str] | None, classes: list[str]) -> str | None:
    """One sentence when the champion was trained on other classes than today's (None when they are the same)."""
    if champion_classes is None or list(champion_classes) == list(classes):
        return None
    shared = [c for c in classes if c in champion_classes]
    theirs = ", ".join(champion_classes[:6]) + (", ..." if len(champion_classes) > 6 else "")
    if set(champion_classes) == set(classes):
        return f"champion v{champion_version} has today's classes in another order ({theirs}): matched by name"
    if not shared:
        return (f"champion v{champion_version} knows none of today's {len(classes)} classes (it was trained on "
                f"{len(champion_classes)}: {theirs}), so it scores 0 on today's data")
    return (f"champion v{champion_version} was trained on other classes ({len(champion_classes)}: {theirs}); it knows "
            f"{len(shared)} of today's {len(classes)}, and images of the others count as misses")


def rescorer(task, index: dict, cfg) -> Callable[[dict[str, Any]], dict[str, float]]:
    """A function scoring any bundle on today's scoring split, with the bundle's own input size and
    normalisation and its classes matched to today's by name (at the output for tasks with per-class
    logits, see ``Task.per_class_logits``; by re-indexing class rows for the others)."""

    def score(bundle: dict[str, Any]) -> dict[str, float]:
        spec = bundle["spec"]
        own = cfg.model_copy(update={
            "model": ModelConfig.model_validate({**spec["model"], "pretrained": False, "pretrained_path": None}),
            "train": cfg.train.model_copy(update={"image_size": spec["image_size"]}),
        })
        classes = list(index["classes"])
        if not get_task_class(task).per_class_logits or list(spec["classes"]) == classes:
            metrics, _, _ = stages.evaluate(task, index, stages.augmentation(task, own), remap_bundle(bundle, classes), own)
            return metrics
        model = get_task(spec).build_for_weights()
        model.load_state_dict(bundle["state_dict"])
        plain = {**spec, "model": {**spec["model"], "pretrained": False, "pretrained_path": None}}
        mapped = {"spec": {**plain, "classes": [*classes, OTHER_CLASS], "class_weights": None}, "state_dict": None}
        metrics, _, _ = stages.evaluate(task, index, stages.augmentation(task, own), mapped, own,
                                        model=OutputClassMap(model, list(spec["classes"]), classes))
        return metrics

    return score


def download_bundle(model_uri: str) -> dict[str, Any]:
    """The bundle (spec.json + model.safetensors) inside a registered pyfunc model."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        specs = sorted(local.rglob(SPEC_FILE))
        if not specs:
            raise FileNotFoundError(f"{model_uri} holds no {SPEC_FILE}")
        return load_bundle(specs[0].parent)
