"""Augmentation pipelines from albumentations' own serialised form (``A.from_dict`` / ``A.to_dict``)."""

from __future__ import annotations

import contextlib
import difflib
import warnings
from typing import Any

import albumentations as A
from albumentations.core.serialization import SERIALIZABLE_REGISTRY
from pydantic import ValidationError

from visionpipe.errors import ConfigError

# Keys of the composed dict that we add ourselves; users list only their augmentations.
BBOX_PARAMS = {"format": "pascal_voc", "label_fields": ["labels"], "clip": True, "min_area": 1.0,
               "min_width": 1.0, "min_height": 1.0, "filter_invalid_bboxes": True}


def _known_transforms() -> list[str]:
    return sorted(SERIALIZABLE_REGISTRY.keys())


def build_transform(spec: dict[str, Any], where: str) -> A.BasicTransform:
    """Build one transform from its serialised dict, with errors that name the entry and suggest names."""
    if not isinstance(spec, dict) or "__class_fullname__" not in spec:
        raise ConfigError(f"{where}: each augmentation needs '__class_fullname__' (e.g. HorizontalFlip), got {spec!r}")
    name = spec["__class_fullname__"]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*not valid for transform.*")
            return A.from_dict({"transform": spec})
    except KeyError:
        close = difflib.get_close_matches(name, _known_transforms(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " See albumentations' list of transforms."
        raise ConfigError(f"{where}: unknown albumentations transform '{name}'.{hint}") from None
    except UserWarning as warn:
        raise ConfigError(f"{where}: {warn}") from None
    except (ValidationError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: invalid arguments for {name}: {err}") from None


def compose(
    augment: list[dict[str, Any]],
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    train: bool,
    block: str = "augment",
    bbox_params: A.BboxParams | None = None,
    resize: list | None = None,
) -> A.Compose:
    """User augmentations (train only), then the resize (``resize`` or a square ``image_size``),
    normalisation and tensor conversion. ``bbox_params`` makes the pipeline box-aware."""
    steps = [build_transform(t, f"{block}.augment[{i}]") for i, t in enumerate(augment)] if train else []
    steps += resize if resize is not None else [A.Resize(image_size, image_size)]
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), A.ToTensorV2()]
    with _no_idle_box_warning():
        return A.Compose(steps, bbox_params=bbox_params)


def box_params() -> A.BboxParams:
    """Boxes as pixel corners with a ``labels`` field; boxes cropped to nothing are dropped."""
    return A.BboxParams(**BBOX_PARAMS)


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Tile (or sliding-window) offsets along one side: steps of ``size * (1 - overlap)``, the last tile flush
    with the end (detection's tiled inference, segmentation's sliding window)."""
    if length <= size:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def to_dict(transform: A.Compose) -> dict[str, Any]:
    """albumentations' serialised form, minus PadIfNeeded's ``padding``: albumentations 2.0 writes that key
    and then warns that it is not valid when reading it back."""
    spec = A.to_dict(transform)

    def clean(node: dict) -> None:
        if node.get("__class_fullname__", "").endswith("PadIfNeeded"):
            node.pop("padding", None)
        for child in node.get("transforms", []) or []:
            clean(child)

    clean(spec["transform"])
    return spec


def from_dict(spec: dict[str, Any]) -> A.Compose:
    """A pipeline from its serialised form (``to_dict``)."""
    with _no_idle_box_warning():
        return A.from_dict(spec)


@contextlib.contextmanager
def _no_idle_box_warning():
    """A box-aware pipeline without a geometric step is normal here (detectors resize inside the model):
    albumentations' "processor for bboxes, but no transform to process it" says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*processor for bboxes, but no transform to process it.*")
        yield
