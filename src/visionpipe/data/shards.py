"""WebDataset-style tar shards: write an index into shards, read shards back as an index.

Millions of small files make DVC and file systems slow; a few hundred tar shards of ~1000 samples
each do not. The layout is WebDataset's, so its tools read our shards too::

    <out>/manifest.json                  # task, classes, splits, shards with counts, bytes and sha256
    <out>/train-000000.tar ...           # members <key>.<ext> (the original image bytes, untouched),
    <out>/val-000000.tar ...             # <key>.json (the index record), <key>.cls (classification),
                                         # <key>.mask.png (segmentation mask files)

Reading (``data.format: shards``) scans the tar headers into the ordinary index, each record
keeping its original relative ``image`` path plus where its bytes lie (``shard``, ``members``:
byte offset and size). Samples are then read by offset, straight from the shard: nothing is
extracted, and the samplers the trainer already uses split the samples across DDP ranks
(DistributedSampler) and DataLoader workers (one batch per worker) with no duplicates, with the
same per-sample augmentation seeds as the unsharded data, so results do not change.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from visionpipe.data.formats import SPLITS
from visionpipe.data.images import load_mask, load_rgb
from visionpipe.errors import DataError
from visionpipe.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LAYOUT = "visionpipe-shards/1"
_FIX_REWRITE = "Re-run `visionpipe shard` to rewrite the shards"


# ---------------------------------------------------------------- reading samples

def _read_bytes(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise DataError(path, f"truncated shard: expected {size} bytes at offset {offset}, got {len(data)}", _FIX_REWRITE)
    return data


def member_bytes(root: Path, record: dict, kind: str) -> bytes:
    """The bytes of a record's ``image`` or ``mask`` member, read from its shard by offset."""
    offset, size = record["members"][kind][:2]
    return _read_bytes(Path(root) / record["shard"], offset, size)


def load_record_rgb(root: Path, record: dict, max_pixels: int | None = None) -> np.ndarray:
    """Decode a record's image, from a file under ``root`` or from its shard."""
    root = Path(root)
    if "shard" not in record:
        return load_rgb(root / record["image"], max_pixels=max_pixels)
    return load_rgb(root / record["shard"] / record["image"], max_pixels=max_pixels, data=member_bytes(root, record, "image"))


def load_record_mask(root: Path, record: dict) -> np.ndarray:
    """Decode a record's mask file, from a file under ``root`` or from its shard."""
    root = Path(root)
    if "shard" not in record:
        return load_mask(root / record["mask"])
    return load_mask(root / record["shard"] / record["mask"], data=member_bytes(root, record, "mask"))


# ---------------------------------------------------------------- writing

def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0  # mtime 0: same data, same shard bytes, same DVC hash
    tar.addfile(info, io.BytesIO(data))


def _sample_members(key: str, record: dict, root: Path, task: str) -> list[tuple[str, bytes]]:
    image = root / record["image"]
    members = [(f"{key}{image.suffix.lower()}", image.read_bytes()), (f"{key}.json", json.dumps(record, sort_keys=True).encode())]
    if isinstance(record.get("label"), int):  # an image-level class
        members.append((f"{key}.cls", str(record["label"]).encode()))  # WebDataset's class-label convention
    if "mask" in record:
        members.append((f"{key}.mask{(root / record['mask']).suffix.lower()}", (root / record["mask"]).read_bytes()))
    return members


def _write_shard(path: Path, samples: list[tuple[str, dict]], root: Path, task: str) -> dict:
    """Write one shard through a temporary name; return its manifest entry once it reads back whole."""
    members: dict[str, str] = {}  # member name -> sha256: validation checks each sample's bytes against it

    def write(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for key, record in samples:
                for name, data in _sample_members(key, record, root, task):
                    _add(tar, name, data)
                    members[name] = hashlib.sha256(data).hexdigest()
        keys = {_key(m.name) for m in _scan(tmp)[0]}  # the shard is read back before it is given its real name
        if keys != {key for key, _ in samples}:
            raise DataError(path, f"shard read back with {len(keys)} samples instead of {len(samples)}", "Check the disk and retry")

    atomic_write(path, write)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"name": path.name, "count": len(samples), "bytes": path.stat().st_size, "sha256": digest.hexdigest(), "members": members}


def write_shards(index: dict, out: str | Path, shard_size: int = 1000, overwrite: bool = False,
                 validation_summary: dict | None = None) -> dict:
    """Write a validated index's samples into ``<out>/<split>-NNNNNN.tar`` shards and ``manifest.json``; return the manifest.

    The manifest is written last, so a run that stops midway leaves no manifest that looks current.
    """
    if shard_size < 1:
        raise DataError(out, f"shard size {shard_size} is not positive", "Pass --shard-size 1 or more (1000 is typical)")
    out, root, task = Path(out), Path(index["root"]), index["task"]
    old = sorted(out.glob("*.tar")) + ([out / MANIFEST] if (out / MANIFEST).exists() else [])
    if old and not overwrite:
        raise DataError(out, f"already holds shards ({len(old)} files)", "Pass --overwrite to replace them, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for path in [*old, *out.glob(".*.tmp*")]:  # the old manifest goes first: half-replaced shards must never look complete
        path.unlink()
    splits: dict[str, Any] = {}
    for split in SPLITS:
        records = index[split]
        shards = []
        for n, start in enumerate(range(0, len(records), shard_size)):
            samples = [(f"{start + i:09d}", rec) for i, rec in enumerate(records[start:start + shard_size])]
            shards.append(_write_shard(out / f"{split}-{n:06d}.tar", samples, root, task))
            logger.info("Wrote %s (%d samples)", shards[-1]["name"], shards[-1]["count"])
        splits[split] = {"count": len(records), "shards": shards}
    manifest = {"layout": LAYOUT, "task": task, "classes": index["classes"], "shard_size": shard_size,
                "source": {"root": str(root), "format": index["format"], "fingerprint": index.get("fingerprint")},
                "validation": validation_summary, "splits": splits}
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


# ---------------------------------------------------------------- reading the index

def _key(name: str) -> str:
    """WebDataset's sample key: the member name up to the first dot of its base name."""
    dot = name.find(".", name.rfind("/") + 1)
    return name if dot < 0 else name[:dot]


def _scan(path: Path, read: tuple[str, ...] = ()) -> tuple[list[tarfile.TarInfo], dict[str, bytes]]:
    """The shard's file members, and the contents of those whose names end with ``read``, in one pass over the file."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            contents = {}
            for m in members:
                if read and m.name.endswith(read):
                    tar.fileobj.seek(m.offset_data)
                    contents[m.name] = tar.fileobj.read(m.size)
            return members, contents
    except FileNotFoundError:
        raise DataError(path, "shard listed in the manifest is missing", f"Restore it (`dvc pull`) or {_FIX_REWRITE.lower()}") from None
    except (tarfile.TarError, OSError) as err:
        raise DataError(path, f"cannot read shard ({err})", _FIX_REWRITE) from None


def verify_member(root: Path, record: dict, kind: str, data: bytes) -> None:
    """A DataError naming the shard and the member when ``data`` (a record's ``image`` or ``mask`` bytes)
    differ from the sha256 ``visionpipe shard`` recorded for it (shards written before member checksums pass)."""
    expected = (record.get("sha256") or {}).get(kind)
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise DataError(Path(root) / record["shard"], f"member {record['members'][kind][2]} does not match the sha256 recorded "
                        "in manifest.json (the shard was changed or damaged after it was written)", _FIX_REWRITE)


def _read_shard(path: Path, checksums: dict[str, str] | None = None) -> list[dict]:
    samples: dict[str, dict] = {}
    found, contents = _scan(path, read=(".json",))
    for m in found:
        key = _key(m.name)
        kind = m.name[len(key) + 1:]
        samples.setdefault(key, {})[kind] = m
    records = []
    for key in sorted(samples):
        members = samples[key]
        if "json" not in members:
            raise DataError(path, f"sample {key} has no {key}.json record", _FIX_REWRITE)
        record = json.loads(contents[members["json"].name])
        image = [m for kind, m in members.items() if kind not in ("json", "cls") and not kind.startswith("mask.")]
        if len(image) != 1:
            raise DataError(path, f"sample {key} has {len(image)} image members, expected 1", _FIX_REWRITE)
        record["shard"] = path.name
        record["members"] = {"image": [image[0].offset_data, image[0].size, image[0].name]}
        mask = [m for kind, m in members.items() if kind.startswith("mask.")]
        if "mask" in record:
            if not mask:
                raise DataError(path, f"sample {key} lists mask {record['mask']} but the shard has no {key}.mask member", _FIX_REWRITE)
            record["members"]["mask"] = [mask[0].offset_data, mask[0].size, mask[0].name]
        if checksums:
            record["sha256"] = {kind: checksums.get(entry[2]) for kind, entry in record["members"].items()}
        records.append(record)
    return records


def read_shards(root: str | Path, task: str, classes: list[str] | None = None) -> dict:
    """Read ``root/manifest.json`` and its shards' headers into the internal index (see visionpipe.data.formats)."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise DataError(path, "no shard manifest", "Point data.root at a folder written by `visionpipe shard`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid JSON ({err})", _FIX_REWRITE) from None
    if manifest.get("layout") != LAYOUT:
        raise DataError(path, f"layout {manifest.get('layout')!r} is not {LAYOUT!r}", _FIX_REWRITE)
    if manifest["task"] != task:
        raise DataError(path, f"shards were written for {manifest['task']}, not {task}", f"Use shards written with --task {task}")
    if classes and list(classes) != manifest["classes"]:
        raise DataError(path, f"data.classes {list(classes)} differ from the classes the shards were written with {manifest['classes']}",
                        "Labels are stored as indices: set data.classes to null, or re-shard with the classes you want")
    index: dict[str, Any] = {"classes": manifest["classes"], "problems": []}
    for split in SPLITS:
        entry = manifest["splits"][split]
        records = []
        for shard in entry["shards"]:
            found = _read_shard(root / shard["name"], shard.get("members"))
            if len(found) != shard["count"]:
                raise DataError(root / shard["name"], f"holds {len(found)} samples, the manifest says {shard['count']}", _FIX_REWRITE)
            records += found
        index[split] = records
    return index
