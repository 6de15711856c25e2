"""What every task shares: the registry, the model spec, and safe pretrained-weight loading."""

from __future__ import annotations

import difflib
import logging
from typing import Any

import torch

from visionpipe.engine.checkpoint import load_weights
from visionpipe.errors import ConfigError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def close_matches(name: str, options: list[str], n: int = 5) -> str:
    found = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    return f" Close matches: {', '.join(found)}." if found else ""


def timm_normalization(model_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from timm's pretrained config for ``model_name`` (ImageNet defaults otherwise)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name.removeprefix("tu-"))
    except Exception:  # unknown or non-timm names fall back to ImageNet statistics
        cfg = None
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean or IMAGENET_MEAN), tuple(cfg.std or IMAGENET_STD)


def load_pretrained(model: torch.nn.Module, path: str, reset_head: bool, block: str) -> None:
    """Load local weights (safetensors or ``torch.load(weights_only=True)``); shape mismatches are errors.

    With ``reset_head`` the mismatching tensors (a classifier sized for other classes) keep their
    fresh initialisation instead.
    """
    state = load_weights(path)
    own = model.state_dict()
    mismatched = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape}
    if mismatched and not reset_head:
        shown = "; ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in list(mismatched.items())[:5])
        raise ConfigError(
            f"{path}: pretrained weights do not fit the model ({shown}). If only the head differs because the number "
            f"of classes changed, set {block}.model.kwargs.reset_head: true to re-initialise it"
        )
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in usable]
    if not usable:
        raise ConfigError(f"{path}: no tensor in the file matches the model's parameter names; is it weights for {block}.model.name?")
    model.load_state_dict(usable, strict=False)
    logger.info("Loaded %d tensors from %s (%d left at initialisation%s)", len(usable), path, len(missing),
                f", head re-initialised: {sorted(mismatched)}" if mismatched else "")


def pop_reset_head(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    kwargs = dict(kwargs)
    return kwargs, bool(kwargs.pop("reset_head", False))
