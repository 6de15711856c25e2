"""Fine-tuning recipe pieces the training loop wires in: parameter groups, backbone freezing, EMA,
early stopping and class-frequency weights. Plain functions and small classes, each tested alone."""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Callable, Iterable

import torch
from torch import nn

from visionpipe.ranking import is_better
from visionpipe.errors import ConfigError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- parameter groups

def _no_decay(name: str, p: torch.Tensor) -> bool:
    """Biases and norm/scale vectors get no weight decay (timm's and torchvision's convention)."""
    return p.ndim <= 1 or name.endswith(".bias")


def split_groups(groups: list[dict[str, Any]], backbone_params: set[int], lr: float, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """Split each group into its backbone and head parts; the backbone part's lr is multiplied by
    ``backbone_lr_scale``. A group's ``lr_scale`` (timm's layer decay) becomes an explicit ``lr`` so
    torch's schedulers, which scale each group's own initial lr, keep the ratios."""
    out = []
    for group in groups:
        scale = group.pop("lr_scale", 1.0)
        params = group.pop("params")
        for part, is_backbone in (("backbone", True), ("head", False)):
            chosen = [p for p in params if (id(p) in backbone_params) == is_backbone]
            if chosen:
                factor = scale * (backbone_lr_scale if is_backbone else 1.0)
                out.append({**group, "params": chosen, "lr": lr * factor, "name": part})
    return out


def param_groups(model: nn.Module, backbone: nn.Module | None, cfg) -> list[dict[str, Any]]:
    """Weight-decay / no-decay groups, split into backbone and head (``name`` key) with the
    backbone's lr = ``cfg.lr * cfg.backbone_lr_scale``. Frozen parameters are included: they are
    frozen by ``requires_grad`` for some epochs only, and the optimizer skips tensors without grad."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if _no_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return split_groups(groups, backbone_ids(backbone), cfg.lr, cfg.backbone_lr_scale)


class Members(nn.Module):
    """A view holding existing submodules and parameters of a model by reference (shared, not
    copied): "the backbone" when it is not one submodule, e.g. a timm classifier minus its head."""

    def __init__(self, modules: dict[str, nn.Module], params: dict[str, nn.Parameter]):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name.replace(".", "_"), module)
        for name, p in params.items():
            self.register_parameter(name.replace(".", "_"), p)


def modules_except(model: nn.Module, excluded: str) -> Members:
    """Everything in ``model`` but the submodule at dotted path ``excluded`` (and its parameters)."""
    modules, params = {}, {}

    def visit(module: nn.Module, prefix: str) -> None:
        for name, p in module.named_parameters(recurse=False):
            params[prefix + name] = p
        for name, child in module.named_children():
            path = prefix + name
            if path == excluded:
                continue
            if excluded.startswith(path + "."):
                visit(child, path + ".")
            else:
                modules[path] = child

    visit(model, "")
    return Members(modules, params)


def backbone_ids(backbone: nn.Module | None) -> set[int]:
    return {id(p) for p in backbone.parameters()} if backbone is not None else set()


def check_backbone(backbone: nn.Module | None, cfg, task_name: str) -> None:
    """Backbone settings need a task that says which parameters are its backbone."""
    wants = cfg.freeze_backbone_epochs > 0 or cfg.backbone_lr_scale != 1.0
    if wants and (backbone is None or not any(True for _ in backbone.parameters())):
        raise ConfigError(f"{task_name}.train.freeze_backbone_epochs / backbone_lr_scale: this model has no backbone the task "
                          "can name; set freeze_backbone_epochs: 0 and backbone_lr_scale: 1.0")


# ---------------------------------------------------------------- freezing

def set_frozen(backbone: nn.Module, frozen: bool) -> None:
    """Freeze (no gradients, BatchNorm statistics fixed) or unfreeze the backbone.

    The norm statistics are fixed by putting the backbone in eval mode; call again after each
    ``model.train()``, which sets every submodule back to training mode.
    """
    backbone.requires_grad_(not frozen)
    if frozen:
        backbone.eval()


# ---------------------------------------------------------------- EMA

def build_ema(model: nn.Module, cfg) -> nn.Module | None:
    """timm's ModelEmaV3 over ``model`` when ``train.ema.enabled`` (None otherwise)."""
    if not cfg.ema.enabled:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup)


# ---------------------------------------------------------------- early stopping

class EarlyStopping:
    """Stop when the selection metric has not improved by more than ``min_delta`` for ``patience`` epochs.

    ``reference`` is the best score that counted as an improvement; its state goes into the
    checkpoint so a resumed run stops where an uninterrupted one would.
    """

    def __init__(self, patience: int | None, min_delta: float, greater: bool):
        self.patience, self.min_delta, self.greater = patience, min_delta, greater
        self.reference: float | None = None
        self.reference_epoch = -1

    def step(self, epoch: int, score: float) -> bool:
        """Record ``score`` for ``epoch``; True when training should stop after it."""
        if self.reference is None or (math.isfinite(score) and is_better(score, self._threshold(), self.greater)):
            if math.isfinite(score):
                self.reference, self.reference_epoch = score, epoch
        return self.patience is not None and epoch - self.reference_epoch >= self.patience

    def _threshold(self) -> float:
        return self.reference + self.min_delta if self.greater else self.reference - self.min_delta

    def state_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "reference_epoch": self.reference_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reference, self.reference_epoch = state["reference"], state["reference_epoch"]


# ---------------------------------------------------------------- class balance

def class_counts(labels: Iterable[list[int] | None], num_classes: int) -> list[int]:
    """How many records hold each class (a record counts once per class it holds)."""
    counts = Counter(c for item in labels if item is not None for c in set(item))
    return [counts.get(i, 0) for i in range(num_classes)]


def inverse_frequency(counts: list[int | float]) -> list[float]:
    """Weights proportional to 1 / frequency, normalised to mean 1 over the classes present
    (a class absent from the data gets weight 0: it cannot be learnt from it anyway)."""
    present = [c for c in counts if c > 0]
    if not present:
        raise ConfigError("class_weights: auto needs at least one labelled training example")
    total = sum(present)
    raw = [total / c if c > 0 else 0.0 for c in counts]
    mean = sum(raw) / len(present)
    return [w / mean for w in raw]


def resolve_class_weights(setting, classes: list[str], counts: Callable[[], list[float]], where: str) -> list[float] | None:
    """``class_weights`` setting to one weight per class: null, auto (from ``counts()``) or the list given."""
    if setting is None:
        return None
    if setting == "auto":
        weights = inverse_frequency(counts())
        logger.info("Class weights (inverse frequency): %s", ", ".join(f"{c}={w:.3g}" for c, w in zip(classes, weights)))
        return weights
    if len(setting) != len(classes):
        raise ConfigError(f"{where}: {len(setting)} weights given for {len(classes)} classes {classes}; give one per class, or auto")
    return [float(w) for w in setting]


def balanced_sample_weights(labels: list[list[int] | None], num_classes: int) -> list[float]:
    """Per record, the largest 1 / frequency of the classes it holds, so each class is drawn about
    equally often; records without a label (background images) get the most frequent class's weight."""
    counts = class_counts(labels, num_classes)
    if not any(counts):
        raise ConfigError("data.sampler: balanced needs class labels on the training records")
    floor = 1.0 / max(counts)
    weights = []
    for item in labels:
        present = [counts[c] for c in set(item or []) if counts[c] > 0]
        weights.append(1.0 / min(present) if present else floor)
    return weights
