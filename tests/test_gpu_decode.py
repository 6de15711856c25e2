"""data.decode: gpu, run on the CPU: same evaluation pixels as albumentations, matching augmentation statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import task_params
from visionpipe.tasks import get_task_class, parse_task_config
from visionpipe.data import formats, gpu_decode, transforms
from visionpipe.data.images import load_rgb
from visionpipe.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CPU = torch.device("cpu")


def _photo(seed: int, w: int = 80, h: int = 60) -> np.ndarray:
    """Smooth gradients plus a bright block on the right: JPEG-friendly, and a flip is visible."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([x * 255 / w, y * 255 / h, np.full_like(x, rng.integers(0, 255))], axis=2).astype(np.float64)
    image[:, int(w * 0.7):, :] = 250
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def _jpeg_folder(root: Path, n: int = 6) -> Path:
    """imagefolder data: RGB JPEGs, plus the files that must take the CPU path (PNG, grey, CMYK, EXIF-rotated JPEG)."""
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(_photo(i)).save(root / split / ("a", "b")[i % 2] / f"{i}.jpg", quality=90)
        Image.fromarray(_photo(100)).save(root / split / "a" / "png.png")
        Image.fromarray(_photo(101)).convert("L").save(root / split / "b" / "grey.jpg", quality=90)
        Image.fromarray(_photo(102)).convert("CMYK").save(root / split / "a" / "cmyk.jpg", quality=90)
        exif = Image.Exif()
        exif[0x0112] = 6  # rotated 90 degrees: load_rgb turns it upright
        Image.fromarray(_photo(103)).save(root / split / "b" / "exif.jpg", quality=90, exif=exif)
    return root


def _index(root: Path) -> dict:
    cfg = parse_task_config("classification", task_params("classification", data={"root": str(root)})).data
    return formats.read_dataset(get_task_class("classification"), root, cfg)


def test_payloads_are_bytes_for_plain_jpegs_and_pixels_for_the_rest(tmp_path):
    index = _index(_jpeg_folder(tmp_path / "data"))
    dataset = gpu_decode.EncodedImageDataset(index, "val", train=False)
    kinds = {Path(r["image"]).name: dataset[i][0].ndim for i, r in enumerate(index["val"])}
    assert kinds == {"0.jpg": 1, "1.jpg": 1, "2.jpg": 1, "3.jpg": 1, "4.jpg": 1, "5.jpg": 1, "grey.jpg": 1,
                     "png.png": 3, "cmyk.jpg": 3, "exif.jpg": 3}
    assert tuple(dataset[index["val"].index(next(r for r in index["val"] if r["image"].endswith("exif.jpg")))][0].shape) == (3, 80, 60)


def test_evaluation_transform_matches_albumentations_to_one_grey_level(tmp_path):
    index = _index(_jpeg_folder(tmp_path / "data"))
    reference = transforms.compose([], 48, MEAN, STD, train=False)
    dataset = gpu_decode.EncodedImageDataset(index, "val", train=False)
    device = gpu_decode.DeviceTransform([], 48, MEAN, STD, train=False)
    payloads, labels, indices, epochs, train = gpu_decode.collate_encoded([dataset[i] for i in range(len(dataset))])
    assert train is False and labels.tolist() == [r["label"] for r in index["val"]]
    ours = device(payloads, indices, epochs, CPU)
    theirs = torch.stack([reference(image=load_rgb(Path(index["root"]) / r["image"]))["image"] for r in index["val"]])
    assert ours.shape == theirs.shape == (len(dataset), 3, 48, 48) and ours.dtype == theirs.dtype == torch.float32
    grey_levels = ((ours - theirs) * torch.tensor(STD).view(1, 3, 1, 1) * 255).abs()
    assert grey_levels.max() <= 1.01  # cv2's fixed-point bilinear rounds some pixels the other way; the decoders agree
    assert grey_levels.mean() < 0.25


def test_training_augmentations_match_albumentations_statistically(tmp_path):
    augment = [{"__class_fullname__": "RandomResizedCrop", "size": [32, 32], "scale": [0.2, 1.0], "p": 1.0},
               {"__class_fullname__": "HorizontalFlip", "p": 0.5}]
    source = _photo(7, w=96, h=72)
    payload = torch.frombuffer(bytearray(_encode(source)), dtype=torch.uint8)
    decoded = load_rgb(tmp_path / "x.jpg", data=_encode(source))
    reference = transforms.compose(augment, 32, MEAN, STD, train=True)
    device = gpu_decode.DeviceTransform(augment, 32, MEAN, STD, train=True, seed=3)
    n = 400
    ours = device([payload] * n, torch.arange(n), torch.zeros(n, dtype=torch.long), CPU)
    theirs = []
    for i in range(n):
        reference.set_random_seed(i)
        theirs.append(reference(image=decoded)["image"])
    theirs = torch.stack(theirs)
    assert ours.shape == theirs.shape == (n, 3, 32, 32)
    low, high = (-torch.tensor(MEAN) / torch.tensor(STD)), ((1 - torch.tensor(MEAN)) / torch.tensor(STD))
    for batch in (ours, theirs):
        per_channel = batch.transpose(0, 1).reshape(3, -1)
        assert (per_channel.min(1).values >= low - 1e-5).all() and (per_channel.max(1).values <= high + 1e-5).all()

    def flipped(batch):  # the bright block is on the right of the photograph
        return (batch[..., :8].mean((1, 2, 3)) > batch[..., -8:].mean((1, 2, 3))).float().mean().item()

    assert flipped(ours) == pytest.approx(flipped(theirs), abs=0.1) and 0.3 < flipped(ours) < 0.7
    # crop scale shows in how much of the bright block a sample holds, and how varied the samples are
    assert ours.mean().item() == pytest.approx(theirs.mean().item(), abs=0.05)
    assert ours.mean((1, 2, 3)).std().item() == pytest.approx(theirs.mean((1, 2, 3)).std().item(), rel=0.15)
    assert ours.std((2, 3)).mean().item() == pytest.approx(theirs.std((2, 3)).mean().item(), rel=0.1)


def _encode(pixels: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_augmentation_is_seeded_by_sample_and_epoch_not_by_batch(tmp_path):
    augment = [{"__class_fullname__": "RandomResizedCrop", "size": [24, 24], "p": 1.0}, {"__class_fullname__": "HorizontalFlip", "p": 0.5}]
    payload = torch.frombuffer(bytearray(_encode(_photo(1))), dtype=torch.uint8)
    device = gpu_decode.DeviceTransform(augment, 24, MEAN, STD, train=True, seed=0)
    together = device([payload] * 4, torch.tensor([0, 1, 2, 3]), torch.zeros(4, dtype=torch.long), CPU)
    alone = device([payload], torch.tensor([2]), torch.zeros(1, dtype=torch.long), CPU)
    torch.testing.assert_close(together[2:3], alone, rtol=0, atol=0)
    next_epoch = device([payload], torch.tensor([2]), torch.ones(1, dtype=torch.long), CPU)
    assert not torch.equal(next_epoch, alone)
    assert not torch.equal(together[0], together[1])


def test_augmentations_without_a_device_version_are_refused_by_name():
    augment = [{"__class_fullname__": "HorizontalFlip", "p": 0.5}, {"__class_fullname__": "RandomBrightnessContrast", "p": 0.5}]
    with pytest.raises(ConfigError, match=r"classification.augment\[1\]: RandomBrightnessContrast has no device version.*decode: cpu"):
        gpu_decode.DeviceTransform(augment, 32, MEAN, STD, train=True)
    with pytest.raises(ConfigError, match=r"segmentation\.data\.decode: unknown key"):  # only classification decodes on the device
        parse_task_config("segmentation", task_params("segmentation", data={"decode": "gpu"}))


@pytest.mark.slow
def test_training_and_evaluation_through_the_device_path(tmp_path, monkeypatch):
    from visionpipe import stages

    monkeypatch.chdir(tmp_path)
    root = _jpeg_folder(tmp_path / "data", n=12)
    augment = [{"__class_fullname__": "RandomResizedCrop", "size": [32, 32], "scale": [0.5, 1.0], "p": 1.0},
               {"__class_fullname__": "HorizontalFlip", "p": 0.5}]
    cfg = {d: parse_task_config("classification", task_params("classification", tmp_path, data={"root": str(root), "decode": d},
                                                               augment=augment, train={"batch_size": 4}))
           for d in ("cpu", "gpu")}
    index = stages.ingest("classification", cfg["gpu"])
    aug = stages.augmentation("classification", cfg["gpu"])
    bundle, history = stages.train("classification", index, aug, cfg["gpu"], callbacks=[])
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"]) and history[0]["images_per_s"] > 0
    on_device, _, _ = stages.evaluate("classification", index, aug, bundle, cfg["gpu"])
    reference, _, _ = stages.evaluate("classification", index, aug, bundle, cfg["cpu"])
    assert on_device["val_images"] == reference["val_images"] == 16
    assert on_device["top1"] == reference["top1"]
    assert on_device["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-2)
