"""Exact and near duplicates at scale: a perceptual hash proposes pairs, the pixels decide.

Each image gets a :class:`Signature`: the md5 of its bytes (exact copies), two 64-bit DCT perceptual
hashes (pHash, as in Zauner 2010 and the ``imagehash`` library) - one of the whole frame, one of the
content box inside a uniform border, so a copy cropped inside its border hashes alike - and a small
grey thumbnail (at most :data:`THUMB_SIDE` pixels a side, aspect kept) with the original size.

Candidate pairs are every pair whose hashes differ by at most ``hash_bits`` bits, found with
multi-index hashing (Norouzi et al., "Fast search in Hamming space with multi-index hashing", 2012):
the 64 bits are cut into ``hash_bits + 1`` chunks, and by the pigeonhole principle two hashes within
``hash_bits`` share at least one chunk exactly, so only pairs that share a chunk value are compared.
The work is the number of pairs that share a chunk, not n^2.

A candidate is reported only when its pixels agree (:func:`pixel_difference`): the two thumbnails,
aligned as a resized copy (same frame) or as a crop (the smaller image found inside the larger at the
same scale, by normalised cross-correlation), normalised for brightness and contrast and slightly
blurred (re-encoding noise), may differ nowhere by more than ``max_pixel_difference`` of the range.
Distinct photographs of one subject (two handwritten ones) differ somewhere by much more. Pairs whose
thumbnails have one shape (most) are compared in bulk as numpy arrays; a blank image (no contrast to
normalise) is compared by its grey level. docs/benchmarks.md (section 11) has the MNIST figures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from visionpipe.files import atomic_write

logger = logging.getLogger(__name__)

THUMB_SIDE = 48  # longest side of the grey thumbnail kept per image for the pixel check (~2 KB an image)
HASH_BITS = 4  # candidate pairs: pHash distance at most this many bits (of 64)
MAX_PIXEL_DIFFERENCE = 0.09  # confirmed: no pixel of the aligned, normalised thumbnails differs by more (0..1)
MIN_CROP_SHARE = 0.8  # a crop keeps at least this share of each side of the original
FLAT_SPAN = 16.0  # grey levels between the 1st and 99th percentile below which an image is blank
RESAMPLED_SCALE = 0.75  # images of different sizes are also compared at 3/4 of the smaller one's size


@dataclass(frozen=True, slots=True, eq=False)
class Signature:
    """What duplicate search keeps of one image: content md5, two pHashes, thumbnail and original size."""

    md5: str
    hashes: tuple[int, int]  # pHash of the whole frame, pHash of the content box
    thumb: np.ndarray  # uint8 grey, at most THUMB_SIDE a side
    size: tuple[int, int]  # (width, height) of the original


def file_md5(path) -> str:
    """md5 of a file's bytes, read in blocks."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _resize(a: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width * height < a.shape[0] * a.shape[1]
    return cv2.resize(a, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """Grey uint8 copy of ``pixels`` (H x W x 3 or H x W) at most THUMB_SIDE a side, aspect ratio kept."""
    grey = np.asarray(Image.fromarray(pixels).convert("L")) if pixels.ndim == 3 else np.asarray(pixels, dtype=np.uint8)
    h, w = grey.shape
    scale = THUMB_SIDE / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(grey)
    return _resize(grey, max(1, round(w * scale)), max(1, round(h * scale)))


def content_box(grey: np.ndarray) -> np.ndarray:
    """``grey`` without its uniform border (rows/columns within a fifth of the contrast of the border's
    median): a digit on a blank page, a photo on a mat. Unchanged when there is no such border."""
    g = grey.astype(np.float32)
    ring = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    lo, hi = np.percentile(g, (1, 99))
    differs = np.abs(g - np.median(ring)) > max(10.0, 0.2 * float(hi - lo))
    rows, cols = np.nonzero(differs.any(axis=1))[0], np.nonzero(differs.any(axis=0))[0]
    if rows.size < 2 or cols.size < 2:
        return grey
    return grey[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def phash(grey: np.ndarray) -> int:
    """64-bit DCT perceptual hash: 32x32 grey, its 8x8 lowest frequencies, one bit each above their median."""
    small = _resize(grey.astype(np.float32), 32, 32)
    low = cv2.dct(small)[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def signature(pixels: np.ndarray, md5: str) -> Signature:
    """The duplicate-search signature of decoded ``pixels`` whose bytes hash to ``md5``."""
    thumb = thumbnail(pixels)
    return Signature(md5, (phash(thumb), phash(content_box(thumb))), thumb, (int(pixels.shape[1]), int(pixels.shape[0])))


class SignatureCache:
    """Signatures of image files kept between runs in one ``.npz``, so a re-run decodes and hashes only the
    files that are new or changed (DVC users re-run a task's pipeline after every parameter change; decoding is
    most of validation's time). A file is unchanged when its size, inode, mtime and ctime (nanoseconds) are:
    DVC's own rule for not re-hashing a file, plus the ctime, which no tool sets back; ``max_pixels`` (the
    decoding limit) is part of the key. A file that fails to decode is never cached: it is checked again.

    ``get`` and ``put`` are safe from several threads. ``save`` keeps the entries asked for or added in this
    run (a deleted file drops out) and writes atomically; an unreadable cache file is ignored and replaced.
    Read with ``allow_pickle=False``: the file holds arrays and strings only."""

    VERSION = 1

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path is not None else None
        self._old: dict[str, Signature] = {}
        self._used: dict[str, Signature] = {}
        self._lock = threading.Lock()
        self.hits = 0
        if self.path is not None and self.path.is_file():
            try:
                self._old = self._load(self.path)
            except Exception as err:  # a damaged or older cache is only slower: rebuilt by this run
                logger.warning("Ignoring the validation cache %s (%s): every image is decoded again", self.path, err)

    @staticmethod
    def key(path: str | os.PathLike, max_pixels: int | None) -> str:
        st = os.stat(path)
        return f"{os.fspath(path)}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}|{max_pixels}"

    def get(self, key: str) -> Signature | None:
        sig = self._old.get(key)
        if sig is not None:
            with self._lock:
                self._used[key] = sig
                self.hits += 1
        return sig

    def put(self, key: str, sig: Signature) -> None:
        with self._lock:
            self._used[key] = sig

    def save(self) -> None:
        if self.path is None:
            return
        keys = list(self._used)
        sigs = [self._used[k] for k in keys]
        arrays = {
            "version": np.array(self.VERSION),
            "keys": np.array(keys, dtype=str),
            "md5": np.array([s.md5 for s in sigs], dtype=str),
            "hashes": np.array([s.hashes for s in sigs], dtype=np.uint64).reshape(-1, 2),
            "sizes": np.array([s.size for s in sigs], dtype=np.int64).reshape(-1, 2),
            "shapes": np.array([s.thumb.shape for s in sigs], dtype=np.int64).reshape(-1, 2),
            "thumbs": np.concatenate([s.thumb.ravel() for s in sigs]) if sigs else np.zeros(0, np.uint8),
        }

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(self.path, write)

    @classmethod
    def _load(cls, path: Path) -> dict[str, Signature]:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != cls.VERSION:
                raise ValueError(f"version {int(z['version'])}, expected {cls.VERSION}")
            keys, md5, hashes, sizes, shapes, thumbs = (z[k] for k in ("keys", "md5", "hashes", "sizes", "shapes", "thumbs"))
        ends = np.cumsum(shapes[:, 0] * shapes[:, 1])
        if ends.size and ends[-1] != thumbs.size:
            raise ValueError("thumbnails do not match their shapes")
        out = {}
        for k, m, (h0, h1), (w, h), (th, tw), end in zip(keys.tolist(), md5.tolist(), hashes.tolist(), sizes.tolist(),
                                                          shapes.tolist(), ends.tolist()):
            out[k] = Signature(m, (int(h0), int(h1)), thumbs[end - th * tw:end].reshape(th, tw), (int(w), int(h)))
        return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bit distances between 64-bit hashes, elementwise."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def _chunks(bits: int, parts: int) -> list[tuple[int, int]]:
    """(shift, width) of ``parts`` nearly equal chunks of a ``bits``-bit word."""
    widths = [bits // parts + (1 if k < bits % parts else 0) for k in range(parts)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def candidate_pairs(hashes: np.ndarray, max_bits: int) -> np.ndarray:
    """Every pair (i, j), i < j, of 64-bit ``hashes`` within ``max_bits`` bits, by multi-index hashing;
    an (m, 2) int64 array sorted by (i, j). Work grows with the pairs that share a chunk, not with n^2."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = hashes.size
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    parts = min(max_bits + 1, 64)
    found = []
    for shift, width in _chunks(64, parts):
        key = (hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(key, kind="stable")
        sk = key[order]
        active = np.arange(n - 1)  # positions whose group may still hold a partner d places further on
        d = 1
        while active.size:
            active = active[active + d < n]
            active = active[sk[active + d] == sk[active]]  # sorted: once a group ends, it ends for larger d too
            if not active.size:
                break
            i, j = order[active], order[active + d]
            close = hamming(hashes[i], hashes[j]) <= max_bits
            found.append(np.stack([np.minimum(i, j)[close], np.maximum(i, j)[close]], axis=1))
            d += 1
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])  # a pair sharing several chunks is found once per chunk
    return np.stack([codes // n, codes % n], axis=1)


def _normalise(a: np.ndarray) -> np.ndarray:
    """``a`` scaled so its 1st and 99th percentiles are 0 and 1 (brightness and contrast removed)."""
    a = a.astype(np.float32)
    flat = a.ravel()
    k = (int(0.01 * (flat.size - 1)), int(0.99 * (flat.size - 1)))
    lo, hi = np.partition(flat, k)[list(k)]  # np.percentile costs 10x more, and this runs for every candidate pair
    span = float(hi - lo)
    if span < FLAT_SPAN:  # a blank image has no contrast to normalise: its level itself is what it shows
        return a / 255.0
    return (a - lo) / span


def _prepared(a: np.ndarray) -> np.ndarray:
    """``a`` normalised and blurred by about one stroke width (re-encoding and resampling noise is finer)."""
    return cv2.GaussianBlur(_normalise(a), (0, 0), max(0.6, min(a.shape) / 28))


def _compare(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.abs(_prepared(p) - _prepared(q)).max())


def pixel_difference(a: Signature, b: Signature) -> float:
    """Largest difference (0..1 of each image's range) between the thumbnails of ``a`` and ``b`` aligned
    as a resized copy, or as a light crop of one another (the smaller found in the larger at one scale)."""
    ta, tb = a.thumb, b.thumb
    h, w = (ta if ta.size <= tb.size else tb).shape
    sizes = [(h, w)]
    if ta.shape != tb.shape:  # resampled: also compared below the smaller size, where neither keeps detail the other lost
        sizes.append((max(4, round(h * RESAMPLED_SCALE)), max(4, round(w * RESAMPLED_SCALE))))
    pairs = [(ta if ta.shape == size else _resize(ta, size[1], size[0]), tb if tb.shape == size else _resize(tb, size[1], size[0]))
             for size in sizes]
    for big, small in ((a, b), (b, a)):
        (bw, bh), (sw, sh) = big.size, small.size
        if (sw, sh) == (bw, bh) or not (MIN_CROP_SHARE * bw <= sw <= bw and MIN_CROP_SHARE * bh <= sh <= bh):
            continue
        density = big.thumb.shape[1] / bw  # thumbnail pixels per original pixel of the bigger image
        w, h = max(1, round(sw * density)), max(1, round(sh * density))
        if w > big.thumb.shape[1] or h > big.thumb.shape[0] or min(w, h) < 4:
            continue
        template = _resize(small.thumb, w, h).astype(np.float32)
        scores = cv2.matchTemplate(big.thumb.astype(np.float32), template, cv2.TM_CCOEFF_NORMED)
        _, _, _, (x, y) = cv2.minMaxLoc(scores)
        pairs.append((big.thumb[y:y + h, x:x + w], template))
    return min(_compare(p, q) for p, q in pairs)


def _same_frame(sigs: Sequence[Signature], pairs: np.ndarray, max_difference: float, chunk: int = 8192) -> np.ndarray:
    """The difference of each candidate pair (rows of ``pairs``, (m, 2)) whose thumbnails have one shape, compared
    in bulk as the same frame: decided when they agree, or when the originals have one size too (no crop to look
    for); NaN for the pairs left to :func:`pixel_difference`. Vectorised: built-in data has tens of thousands of
    candidate pairs (simple shapes hash alike)."""
    out = np.full(len(pairs), np.nan)
    if not len(pairs):
        return out
    shapes = np.array([s.thumb.shape for s in sigs], dtype=np.int64)
    sizes = np.array([s.size for s in sigs], dtype=np.int64)
    a, b = shapes[pairs[:, 0]], shapes[pairs[:, 1]]
    same = np.flatnonzero((a == b).all(axis=1))
    groups = np.unique(a[same], axis=0, return_inverse=True)[1].ravel() if same.size else np.zeros(0, np.int64)
    for g in range(int(groups.max()) + 1 if groups.size else 0):
        where = same[groups == g]  # rows of ``pairs`` whose thumbnails have this shape
        members, rows = np.unique(pairs[where], return_inverse=True)
        rows = rows.reshape(-1, 2)
        ready = np.stack([_prepared(sigs[k].thumb) for k in members.tolist()]).reshape(len(members), -1)
        for start in range(0, len(where), chunk):
            part, idx = where[start:start + chunk], rows[start:start + chunk]
            diffs = np.abs(ready[idx[:, 0]] - ready[idx[:, 1]]).max(axis=1).astype(np.float64)
            decided = (diffs <= max_difference) | (sizes[pairs[part, 0]] == sizes[pairs[part, 1]]).all(axis=1)
            out[part[decided]] = diffs[decided]
    return out


def find(signatures: Sequence[Signature | None], hash_bits: int = HASH_BITS, max_pixel_difference: float = MAX_PIXEL_DIFFERENCE,
         workers: int = 2) -> list[dict]:
    """Duplicate pairs among ``signatures`` (None: an unreadable image, skipped): ``{"i", "j", "kind"
    ("exact" | "near"), "bits", "difference"}``, exact copies grouped by md5 (each copy paired with the
    first), near ones confirmed at the pixel level. Sorted by (i, j)."""
    live = [k for k, s in enumerate(signatures) if s is not None]
    sigs = [signatures[k] for k in live]
    out: list[dict] = []
    first: dict[str, int] = {}
    for k, s in enumerate(sigs):
        if s.md5 in first:
            out.append({"i": live[first[s.md5]], "j": live[k], "kind": "exact", "bits": 0, "difference": 0.0})
        else:
            first[s.md5] = k
    content = np.array([first[s.md5] for s in sigs], dtype=np.int64)  # one id per distinct md5
    hashes = np.array([s.hashes for s in sigs], dtype=np.uint64).reshape(-1, 2)
    pairs = [candidate_pairs(hashes[:, h], hash_bits) for h in (0, 1)]
    both = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    n = max(len(sigs), 1)
    codes = np.unique(both[:, 0] * n + both[:, 1]) if both.size else np.zeros(0, dtype=np.int64)
    todo = np.stack([codes // n, codes % n], axis=1)
    todo = todo[content[todo[:, 0]] != content[todo[:, 1]]]  # exact copies are paired above
    diffs = _same_frame(sigs, todo, max_pixel_difference)  # most pairs, decided in bulk
    rest = [tuple(pair) for pair in todo[np.isnan(diffs)].tolist()]

    def check(pair):
        return pixel_difference(sigs[pair[0]], sigs[pair[1]])

    if len(rest) > 64 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # OpenCV releases the GIL
            diffs[np.isnan(diffs)] = list(pool.map(check, rest))
    elif rest:
        diffs[np.isnan(diffs)] = [check(pair) for pair in rest]
    near = np.flatnonzero(diffs <= max_pixel_difference)
    i, j = todo[near, 0], todo[near, 1]
    bits = np.minimum(hamming(hashes[i, 0], hashes[j, 0]), hamming(hashes[i, 1], hashes[j, 1]))
    for a, b, d, diff in zip(i.tolist(), j.tolist(), bits.tolist(), diffs[near].tolist()):
        out.append({"i": live[a], "j": live[b], "kind": "near", "bits": int(d), "difference": round(diff, 4)})
    return sorted(out, key=lambda d: (d["i"], d["j"]))
