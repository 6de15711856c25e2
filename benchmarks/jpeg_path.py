"""The real-JPEG path: decode + augmentation images/s per worker, and end-to-end ResNet-50 training images/s.

Needs the ``bench`` extra (``pip install -e ".[bench]"``: scikit-image for the photographs,
simplejpeg for a libjpeg-turbo binding). Three steps, each printing JSON lines:

    # ImageNet-like files: skimage.data photographs re-encoded at about 500x375, quality 90
    python benchmarks/jpeg_path.py build --out data/bench/jpeg --files 10000
    # decode + RandomResizedCrop(224) + flip + normalise, one worker (one process, one thread)
    python benchmarks/jpeg_path.py decode --data data/bench/jpeg --images 500 [--device cuda]
    # visionpipe's own training stage, ResNet-50 at 224 px, data.decode cpu or gpu
    python benchmarks/jpeg_path.py train --data data/bench/jpeg --images 2048 --batch-size 128 --workers 8 --device cuda --decode gpu
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import emit

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry", "retina",
          "grass", "gravel", "brick", "moon")  # the photographs skimage ships (no download)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUGMENT = [{"__class_fullname__": "RandomResizedCrop", "size": [224, 224], "p": 1.0},
           {"__class_fullname__": "HorizontalFlip", "p": 0.5}]


# ---------------------------------------------------------------- build

def build(out: Path, files: int, seed: int = 0) -> None:
    """Write ``files`` JPEGs as ``out/<photo>/<n>.jpg``: random crops of the photographs, 500x375 (a quarter portrait)."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = {}
    for name in PHOTOS:
        pixels = getattr(skimage.data, name)()
        photos[name] = Image.fromarray(np.repeat(pixels[..., None], 3, 2) if pixels.ndim == 2 else pixels[..., :3])
        (out / name).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    total = 0
    for n in range(files):
        name = PHOTOS[n % len(PHOTOS)]
        image = photos[name]
        w, h = image.size
        area = rng.uniform(0.5, 1.0) * w * h
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = min(w, int(round(math.sqrt(area * aspect)))), min(h, int(round(math.sqrt(area / aspect))))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        size = (375, 500) if rng.random() < 0.25 else (500, 375)
        crop = image.resize(size, Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = Image.fromarray(np.clip(np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8))
        path = out / name / f"{n:07d}.jpg"
        crop.save(path, "JPEG", quality=90)
        total += path.stat().st_size
    emit({"benchmark": "jpeg_build", "files": files, "mean_kib": round(total / files / 1024, 1), "seconds": round(time.perf_counter() - start, 1)})


# ---------------------------------------------------------------- decode + augmentation per worker

def _albumentations():
    from visionpipe.data import transforms

    return transforms.compose(AUGMENT, 224, MEAN, STD, train=True)


def _pil_albumentations(paths):
    """visionpipe's data.decode: cpu sample path: load_rgb (PIL) + the albumentations pipeline."""
    from visionpipe.data.images import load_rgb

    tf = _albumentations()
    for p in paths:
        yield tf(image=load_rgb(p))["image"]


def _pil_draft(paths):
    """PIL with a crop-aware draft(): the JPEG is decoded at 1/2, 1/4 or 1/8 scale when the crop stays >= 224 px."""
    import torch
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    mean, std = np.array(MEAN, np.float32) * 255, np.array(STD, np.float32) * 255
    for p in paths:
        with Image.open(p) as image:
            top, left, h, w = RandomResizedCrop.get_params(image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
            factor = max(f for f in (1, 2, 4, 8) if min(h, w) / f >= 224 or f == 1)
            full = image.size
            if factor > 1:
                image.draft("RGB", (math.ceil(full[0] / factor), math.ceil(full[1] / factor)))
            sx, sy = image.size[0] / full[0], image.size[1] / full[1]
            crop = image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR, box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
        if torch.rand(1).item() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield torch.from_numpy(((np.asarray(crop, np.float32) - mean) / std).transpose(2, 0, 1).copy())


def _simplejpeg_albumentations(paths):
    """simplejpeg (libjpeg-turbo) decode + the same albumentations pipeline."""
    import simplejpeg

    tf = _albumentations()
    for p in paths:
        yield tf(image=simplejpeg.decode_jpeg(Path(p).read_bytes(), colorspace="RGB"))["image"]


def _bytes_only(paths):
    """What a worker does under data.decode: gpu (header check included)."""
    from visionpipe.data import gpu_decode

    index = {"root": "/", "classes": ["x"], "train": [{"image": str(p).lstrip("/"), "label": 0} for p in paths]}
    ds = gpu_decode.EncodedImageDataset(index, "train", train=True)
    for i in range(len(ds)):
        yield ds[i][0]


def _device_path(device: str, batch: int):
    """data.decode: gpu's batch transform (decode_jpeg + v2 geometry + normalise) on ``device``, on pre-read bytes."""
    def run(paths):
        import torch

        from visionpipe.data import gpu_decode

        tf = gpu_decode.DeviceTransform(AUGMENT, 224, MEAN, STD, train=True)
        payloads = [torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8) for p in paths]
        for s in range(0, len(payloads), batch):
            chunk = payloads[s:s + batch]
            out = tf(chunk, torch.arange(s, s + len(chunk)), torch.zeros(len(chunk), dtype=torch.long), torch.device(device))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            yield from out
    return run


def decode(data: Path, images: int, device: str, batch: int) -> None:
    """Images/s of each decoder + augmentation, in this one process and thread (= one DataLoader worker)."""
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = sorted(data.rglob("*.jpg"), key=lambda p: p.name)[:images + 16]  # by number: the photographs interleave
    if len(paths) < images + 16:
        raise SystemExit(f"{data}: {len(paths)} JPEGs, need {images + 16}; run the build step with more --files")
    backends = {"pil+albumentations (decode: cpu)": _pil_albumentations, "pil draft() + PIL resize": _pil_draft,
                "bytes only (decode: gpu worker)": _bytes_only, "decode: gpu transform on cpu, batch": _device_path("cpu", batch)}
    try:
        import simplejpeg  # noqa: F401

        backends["simplejpeg+albumentations"] = _simplejpeg_albumentations
    except ImportError:
        pass
    if device.startswith("cuda"):
        backends[f"decode: gpu transform on {device} (nvJPEG), batch"] = _device_path(device, batch)
    for name, fn in backends.items():
        for _ in fn(paths[:16]):  # warm-up
            pass
        start = time.perf_counter()
        n = sum(1 for _ in fn(paths[16:16 + images]))
        elapsed = time.perf_counter() - start
        emit({"benchmark": "jpeg_decode", "path": name, "images": n, "images_per_s": round(n / elapsed, 1),
              **({"batch": batch} if "batch" in name else {})})


# ---------------------------------------------------------------- end-to-end training

def train(data: Path, images: int, batch_size: int, workers: int, device: str, decode_mode: str, model: str, amp: str) -> None:
    """One epoch of visionpipe's training stage on ``images`` JPEGs; prints the loop's images/s."""
    import yaml

    from visionpipe import stages
    from visionpipe.data import formats
    from visionpipe.tasks import get_task_class, parse_task_config

    project = Path(__file__).resolve().parents[1]
    block = yaml.safe_load((project / "conf/base/parameters_classification.yml").read_text())["classification"]
    with tempfile.TemporaryDirectory() as tmp:
        block.update(augment=AUGMENT)
        block["data"].update(root=str(data), num_workers=workers, decode=decode_mode)
        block["model"] = {"name": model, "kwargs": {}}
        block["train"].update(epochs=1, batch_size=batch_size, image_size=224, device=device, amp={"off": False}.get(amp, amp),
                              progress_bar=False, warmup_epochs=0, checkpoint_dir=tmp, deterministic=False)
        cfg = parse_task_config("classification", block)
        index = formats.read_dataset(get_task_class("classification"), data, cfg.data)
        index["train"] = index["train"][:images]
        index["val"] = index["val"][:batch_size]
        bundle, history = stages.train("classification", index, stages.augmentation("classification", cfg), cfg, callbacks=[])
    emit({"benchmark": "jpeg_train", "model": model, "image_size": 224, "decode": decode_mode, "device": device, "workers": workers,
          "batch_size": batch_size, "images": len(index["train"]), "images_per_s": round(history[0]["images_per_s"], 2),
          "epoch_time_s": round(history[0]["epoch_time_s"], 1)})


def main() -> None:
    """Parse the step and run it."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    b = steps.add_parser("build")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--files", type=int, default=10000)
    d = steps.add_parser("decode")
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--images", type=int, default=500)
    d.add_argument("--device", default="cpu")
    d.add_argument("--batch", type=int, default=64)
    t = steps.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument("--images", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--device", default="cpu")
    t.add_argument("--decode", choices=["cpu", "gpu"], default="cpu")
    t.add_argument("--model", default="resnet50")
    t.add_argument("--amp", default="auto", help="auto | bf16 | fp16 | off")
    args = parser.parse_args()
    if args.step == "build":
        build(args.out, args.files)
    elif args.step == "decode":
        decode(args.data, args.images, args.device, args.batch)
    else:
        train(args.data, args.images, args.batch_size, args.workers, args.device, args.decode, args.model, args.amp)


if __name__ == "__main__":
    main()
