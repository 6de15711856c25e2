"""Batch composition beyond plain shuffling: aspect-ratio grouped batches and Mosaic donor images.

Aspect-ratio grouping follows torchvision's detection references (``GroupedBatchSampler`` with
``create_aspect_ratio_groups``): images are binned by width/height and each batch is drawn from one
bin, so a batch of variable-size images pads little when the detector batches them.
"""

from __future__ import annotations

import bisect
import random
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from visionpipe.data.images import image_size


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's random draws in one epoch: the same on every worker and every rank."""
    return zlib.crc32(f"{seed}:{epoch}:{index}".encode()) & 0x7FFFFFFF


def aspect_ratios(root: str | Path, records: list[dict]) -> list[float]:
    """width / height of every record (from the record when it says, else the image header)."""
    root = Path(root)
    ratios = []
    for rec in records:
        w, h = rec.get("width") or 0, rec.get("height") or 0
        if not (w and h):
            w, h = image_size(root / rec["image"])
        ratios.append(w / h)
    return ratios


def aspect_ratio_groups(ratios: list[float], factor: int) -> list[int]:
    """Group id of each ratio: bins at ``2 ** linspace(-1, 1, 2 * factor + 1)`` (torchvision's references)."""
    bins = (2 ** np.linspace(-1, 1, 2 * factor + 1)).tolist() if factor > 0 else [1.0]
    return [bisect.bisect_right(bins, r) for r in ratios]


def train_groups(dataset, factor: int) -> list[int] | None:
    """Aspect-ratio group of each sample of an IndexDataset (``train.aspect_ratio_group_factor``; 0: None)."""
    if not factor or not hasattr(dataset, "records"):
        return None
    return aspect_ratio_groups(aspect_ratios(dataset.root, dataset.records), factor)


class GroupedBatchSampler(Sampler):
    """Batches of ``(index, epoch)`` whose indices share a group, drawn in the order ``sampler`` yields.

    As in torchvision's references, an index joins its group's buffer and a full buffer is a batch; the
    leftovers are completed with other indices of the same group (or emitted as they are with
    ``drop_last=False`` when the group is too small), so the epoch keeps ``len(sampler) // batch_size``
    batches at least. ``sampler`` is an :class:`~visionpipe.data.datasets.EpochSampler`.
    """

    def __init__(self, sampler, groups: list[int], batch_size: int, drop_last: bool):
        self.sampler = sampler
        self.groups = groups
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        buffers: dict[int, list] = {}
        emitted = 0
        for item in self.sampler:
            group = self.groups[item[0]]
            buffer = buffers.setdefault(group, [])
            buffer.append(item)
            if len(buffer) == self.batch_size:
                yield list(buffer)
                buffer.clear()
                emitted += 1
        expected = len(self)
        # leftovers, largest groups first; a batch mixes groups only when nothing else can fill it
        leftovers = [item for group in sorted(buffers, key=lambda g: -len(buffers[g])) for item in buffers[group]]
        for start in range(0, len(leftovers), self.batch_size):
            if emitted >= expected:
                break
            chunk = leftovers[start:start + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                break
            yield chunk
            emitted += 1

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class MosaicDonors:
    """Donor images for albumentations' ``Mosaic`` found in a pipeline, chosen per (seed, epoch, index).

    Mosaic takes the other cells' images through ``mosaic_metadata``; without them it fails on the first
    sample. From epoch ``until`` on (``train.close_mosaic_epochs`` before the end) Mosaic is switched
    off (its probability set to 0 in this worker's copy) and no donors are loaded.
    """

    def __init__(self, transform, n_records: int, seed: int, until: int | None):
        import albumentations as A

        self.transforms = [t for t in _walk(transform) if isinstance(t, A.Mosaic)]
        self.probabilities = [t.p for t in self.transforms]
        self.n = n_records
        self.seed = seed
        self.until = until

    def active(self, epoch: int) -> bool:
        """Whether Mosaic runs in ``epoch``."""
        return self.until is None or epoch < self.until

    def donors(self, i: int, epoch: int) -> list[int]:
        """Indices of the other images filling the grid of sample ``i`` (none when Mosaic is off)."""
        on = self.active(epoch)
        for t, p in zip(self.transforms, self.probabilities):
            t.p = p if on else 0.0
        if not on or self.n < 2:
            return []
        count = max(gy * gx for gy, gx in (t.grid_yx for t in self.transforms)) - 1
        rng = random.Random(sample_seed(self.seed + 1, epoch, i))
        others = [j for j in range(self.n) if j != i] if self.n <= 4 * count else None
        if others is not None:
            return [others[rng.randrange(len(others))] for _ in range(count)]
        picks = []
        while len(picks) < count:
            j = rng.randrange(self.n)
            if j != i:
                picks.append(j)
        return picks


def _walk(transform):
    yield transform
    for child in getattr(transform, "transforms", []) or []:
        yield from _walk(child)
