"""``data.decode: gpu``: workers only read file bytes; JPEGs are decoded in batches on the training device.

On CUDA, ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a whole batch with nvJPEG, and
crop, flip, resize and normalisation run there with ``torchvision.transforms.v2`` on tensors, so the
CPU workers no longer limit a fast GPU. On CPU the same code runs (libjpeg-turbo through
torchvision): that is what the tests exercise.

What is not a plain RGB/grey JPEG (PNG, TIFF, CMYK or EXIF-rotated JPEG, 16-bit...) is decoded on the
CPU in the worker by the usual reader, one file at a time, and joins the batch as pixels.

The albumentations CPU path (``data.decode: cpu``) stays the default and the reference: this path
maps the augmentations it can run on the device (RandomResizedCrop, HorizontalFlip, VerticalFlip,
with their albumentations parameters) and refuses the others by name. Each sample's randomness is
seeded from (seed, epoch, index) exactly as in ``IndexDataset``, so results do not depend on worker
count or batch order; the evaluation transform (resize to the square input, bilinear, no antialias,
then normalise) matches albumentations' ``Resize`` + ``Normalize`` to one grey level (cv2's fixed-point
bilinear rounds differently from torch's on some pixels).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

from visionpipe.data.images import load_rgb
from visionpipe.data.sampling import sample_seed
from visionpipe.data.shards import member_bytes
from visionpipe.data.transforms import build_transform
from visionpipe.errors import ConfigError

logger = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112


def _device_decodable(data: bytes, path: Path, max_pixels: int | None) -> bool:
    """True for a plain RGB or grey JPEG under the pixel limit; anything else takes the CPU reader."""
    if data[:3] != JPEG_MAGIC:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:  # header only: no pixels decoded here
            if max_pixels and image.width * image.height > max_pixels:
                return False  # load_rgb raises the clear error
            return image.format == "JPEG" and image.mode in ("RGB", "L") and image.getexif().get(_EXIF_ORIENTATION, 1) == 1
    except (OSError, ValueError, SyntaxError):
        return False  # load_rgb raises the clear error naming the file


class EncodedImageDataset(Dataset):
    """Classification samples as ``(payload, label, index, epoch, train)``: a JPEG's bytes (1-D uint8) or CPU-decoded CHW pixels.

    ``train`` travels with each sample so the one task adapter the trainer holds applies the
    training or the evaluation transform.
    """

    def __init__(self, index: dict, split: str, train: bool, max_pixels: int | None = None):
        self.root = Path(index["root"])
        self.records = index[split]
        self.classes = index["classes"]
        self.train = train
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int, bool]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[i]
        if "shard" in record:
            path, data = self.root / record["shard"] / record["image"], member_bytes(self.root, record, "image")
        else:
            path = self.root / record["image"]
            data = path.read_bytes()
        if _device_decodable(data, path, self.max_pixels):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), record["label"], i, epoch, self.train
        pixels = load_rgb(path, max_pixels=self.max_pixels, data=data)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))), record["label"], i, epoch, self.train


def collate_encoded(batch: list) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Payloads stay a list (sizes differ until decoded); labels, indices and epochs become tensors."""
    payloads, labels, indices, epochs, train = zip(*batch)
    return (list(payloads), torch.tensor(labels, dtype=torch.long), torch.tensor(indices, dtype=torch.long), torch.tensor(epochs),
            all(train))


def _device_augmentation(spec: dict[str, Any], where: str) -> v2.Transform:
    """One albumentations entry as the torchvision v2 transform doing the same on a tensor."""
    transform = build_transform(spec, where)  # albumentations validates and fills in its defaults
    name = type(transform).__name__
    if name == "RandomResizedCrop":
        out: v2.Transform = v2.RandomResizedCrop(tuple(transform.size), scale=tuple(transform.scale), ratio=tuple(transform.ratio),
                                                 antialias=False)
        return out if transform.p >= 1 else v2.RandomApply([out], p=transform.p)
    if name == "HorizontalFlip":
        return v2.RandomHorizontalFlip(transform.p)
    if name == "VerticalFlip":
        return v2.RandomVerticalFlip(transform.p)
    raise ConfigError(f"{where}: {name} has no device version; data.decode: gpu runs RandomResizedCrop, HorizontalFlip and "
                      "VerticalFlip. Remove it, or set data.decode: cpu to run every albumentations transform on the CPU")


class DeviceTransform:
    """Decode a collated batch on ``device`` and apply the geometry per image, then normalise the whole batch."""

    def __init__(self, augment: list[dict[str, Any]], image_size: int, mean, std, train: bool, seed: int = 0, block: str = "classification"):
        steps = [_device_augmentation(spec, f"{block}.augment[{i}]") for i, spec in enumerate(augment)] if train else []
        # bilinear without antialias: what albumentations' Resize (cv2.INTER_LINEAR) does on the CPU path
        self.geometry = v2.Compose([*steps, v2.Resize((image_size, image_size), antialias=False)])
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.seed = seed

    def decode(self, payloads: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """JPEG payloads decoded in one batched call on ``device`` (nvJPEG on CUDA); CPU-decoded pixels moved there."""
        images: list[torch.Tensor] = [p.to(device, non_blocking=True) if p.ndim == 3 else p for p in payloads]
        jpegs = [k for k, p in enumerate(payloads) if p.ndim == 1]
        if jpegs:
            with warnings.catch_warnings():  # torchvision 0.29 points at TorchCodec; decode_jpeg is what runs nvJPEG today
                warnings.filterwarnings("ignore", category=UserWarning, message=".*TorchCodec.*")
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                decoded = decode_jpeg([payloads[k] for k in jpegs], mode=ImageReadMode.RGB, device=device)
            for k, image in zip(jpegs, decoded):
                images[k] = image
        return images

    def __call__(self, payloads: list[torch.Tensor], indices: torch.Tensor, epochs: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A normalised float32 NCHW batch on ``device``."""
        out = []
        for image, i, epoch in zip(self.decode(payloads, device), indices.tolist(), epochs.tolist()):
            with torch.random.fork_rng(devices=[]):  # v2 draws its parameters from the CPU generator
                torch.manual_seed(sample_seed(self.seed, epoch, i))
                out.append(self.geometry(image))
        batch = torch.stack(out).float()
        return (batch - self.mean.to(device)) / self.std.to(device)


class DeviceDecodingTask:
    """The task, with collate and ``to_device`` replaced: batches arrive encoded and are decoded on the device."""

    def __init__(self, task, train_transform: DeviceTransform, eval_transform: DeviceTransform):
        self.task = task
        self.train_transform = train_transform
        self.eval_transform = eval_transform

    def __getattr__(self, name: str):
        return getattr(self.task, name)

    @staticmethod
    def collate(batch: list):
        return collate_encoded(batch)

    def to_device(self, batch, runtime):
        payloads, labels, indices, epochs, train = batch
        transform = self.train_transform if train else self.eval_transform
        images = transform(payloads, indices, epochs, runtime.device)
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        return images.contiguous(memory_format=fmt), labels.to(runtime.device, non_blocking=True), indices


def device_decoding(task_obj, index: dict, aug: dict, cfg, eval_split: str = "val") -> tuple[DeviceDecodingTask, EncodedImageDataset, EncodedImageDataset]:
    """(task adapter, train dataset, val dataset) for ``data.decode: gpu`` (a task's ``datasets``).

    Images and class labels only: segmentation would add the mask to the same v2 geometry
    (``tv_tensors.Mask``), detection its boxes.
    """
    task = task_obj.name
    size, mean, std = aug["image_size"], aug["mean"], aug["std"]
    seed, max_px = cfg.train.seed, cfg.data.max_image_pixels
    adapter = DeviceDecodingTask(task_obj, DeviceTransform(cfg.augment, size, mean, std, train=True, seed=seed, block=task),
                                 DeviceTransform([], size, mean, std, train=False, seed=seed, block=task))
    return adapter, EncodedImageDataset(index, "train", True, max_px), EncodedImageDataset(index, eval_split, False, max_px)
