"""Torch datasets over an index, with augmentation randomness fixed by (seed, epoch, sample index).

Seeding each sample's transform from (seed, epoch, index) makes augmentation independent of worker
count and order, so a resumed or distributed run sees exactly the augmentations a plain run sees.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from visionpipe.data.sampling import MosaicDonors, sample_seed
from visionpipe.data.shards import load_record_rgb


class IndexDataset(Dataset):
    """Items are ``make_sample(pixels, record, root, transform, i, for_eval=...)`` for each record of one split.

    ``for_eval`` asks the task for what evaluation needs beyond the training sample (segmentation:
    the mask at its original size), which training batches should not carry.
    """

    def __init__(self, index: dict, split: str, transform, make_sample: Callable, seed: int = 0, max_pixels: int | None = None,
                 for_eval: bool = False, mosaic_epochs: int | None = None):
        """``mosaic_epochs``: albumentations' Mosaic in ``transform`` runs in epochs before this one (None: always)."""
        self.root = Path(index["root"])
        self.records = index[split]
        self.classes = index["classes"]
        self.transform = transform
        self.make_sample = make_sample
        self.seed = seed
        self.max_pixels = max_pixels
        self.for_eval = for_eval
        self.mosaic = MosaicDonors(transform, len(self.records), seed, mosaic_epochs)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[i]
        self.transform.set_random_seed(sample_seed(self.seed, epoch, i))
        pixels = load_record_rgb(self.root, record, max_pixels=self.max_pixels)  # a file, or a tar shard member
        if not self.mosaic.transforms:
            return self.make_sample(pixels, record, self.root, self.transform, i, for_eval=self.for_eval)
        donors = [(load_record_rgb(self.root, self.records[j], max_pixels=self.max_pixels), self.records[j])
                  for j in self.mosaic.donors(i, epoch)]
        return self.make_sample(pixels, record, self.root, self.transform, i, for_eval=self.for_eval, donors=donors)


class EpochSampler(Sampler):
    """DistributedSampler whose indices carry the epoch, so datasets in workers can seed by epoch."""

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1, drop_last: bool = False):
        self.base = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((i, self.epoch) for i in self.base)

    def __len__(self) -> int:
        return len(self.base)


class ShardSampler(Sampler):
    """Every ``world_size``-th index from ``rank``: evaluation shards without padding duplicates."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class BalancedSampler(Sampler):
    """Class-balanced sampling: each epoch draws ``n`` indices with replacement, with probability
    proportional to ``weights`` (see ``engine.recipes.balanced_sample_weights``), from a generator
    seeded by (seed, epoch) so every rank draws the same list; rank r keeps every world_size-th
    index from r. Indices carry the epoch, as in :class:`EpochSampler`."""

    def __init__(self, weights: list[float], seed: int, rank: int = 0, world_size: int = 1):
        self.weights = torch.as_tensor(weights, dtype=torch.double)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = math.ceil(len(weights) / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        drawn = torch.multinomial(self.weights, self.per_rank * self.world_size, replacement=True, generator=gen).tolist()
        return ((i, self.epoch) for i in drawn[self.rank::self.world_size])

    def __len__(self) -> int:
        return self.per_rank
