"""Where a model came from: code commit, data version, parameters."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from visionpipe.errors import DataError

logger = logging.getLogger(__name__)


def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_tags(cwd: Path | None = None) -> dict[str, str]:
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if commit is None:
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"git.commit": commit, "git.dirty": str(bool(dirty))}


def dvc_data_version(data_root: str | Path, project: Path | None = None) -> str | None:
    """The DVC md5 of ``data_root``: from ``<root>.dvc`` (``dvc add``) or an ``outs`` entry of dvc.lock."""
    project = Path(project or Path.cwd()).resolve()
    root = Path(data_root).resolve()
    dvc_file = root.with_name(root.name + ".dvc")
    if dvc_file.is_file():
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
        if outs and outs[0].get("md5"):
            return outs[0]["md5"]
    lock = project / "dvc.lock"
    if lock.is_file():
        try:
            rel = root.relative_to(project).as_posix()
        except ValueError:
            return None
        for stage in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if out.get("path") == rel and out.get("md5"):
                    return out["md5"]
    return None


def dvc_dir_md5(path: str | Path) -> str:
    """The md5 ``dvc add <path>`` would record for a folder (``<md5>.dir``) or a file, computed with DVC's
    own hashing code (dvc_data), whether or not the folder is tracked by DVC. Nothing is written: the
    objects are built in a throw-away staging area (``dry_run``)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data folder to hash")
    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        _, _, obj = build(HashFileDB(fs, tmp), str(path), fs, "md5", dry_run=True)
    return obj.hash_info.value


_DATA_MD5: dict[tuple[str, float], str] = {}


def data_md5(root: str | Path, project: Path | None = None) -> str:
    """DVC's md5 of the data: the one recorded in ``<root>.dvc`` or dvc.lock when there is one (then
    ``dvc repro`` ran and it was checked), else computed now with DVC's hashing. Cached per process
    by the folder's modification time, so the tag and the dataset input hash the folder once."""
    recorded = dvc_data_version(root, project)
    if recorded:
        return recorded
    key = (str(Path(root).resolve()), Path(root).stat().st_mtime)
    if key not in _DATA_MD5:
        _DATA_MD5[key] = dvc_dir_md5(root)
    return _DATA_MD5[key]


def outside_root_md5(files: list[str]) -> str:
    """One md5 over the paths and content md5s of the files a run read from outside ``data.root``
    (``data.allow_outside_root: true``): DVC's md5 of the root does not cover them."""
    h = hashlib.md5()
    for name in sorted(files):
        digest = hashlib.md5()
        with open(name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        h.update(f"{name}:{digest.hexdigest()}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def lineage_tags(index: dict, project: Path | None = None, strict: bool = False) -> dict[str, str]:
    """Tags that say where a model came from: git commit, data root, format, fingerprint and DVC md5 (and
    the md5 of files read from outside the root, when allowed). ``strict``: data that cannot be hashed is a
    DataError naming the folder, not a warning and an ``unknown`` version."""
    tags = git_tags(project)
    tags["data.root"] = index["root"]
    tags["data.format"] = index["format"]
    tags["data.fingerprint"] = index.get("fingerprint", "unknown")
    try:
        tags["data.dvc_md5"] = data_md5(index["root"], project)
        if index.get("outside_root"):
            tags["data.outside_root_md5"] = outside_root_md5(index["outside_root"])
    except (OSError, RuntimeError) as err:  # data moved away after ingestion, a link loop: say so rather than invent a version
        if strict:
            raise DataError(index["root"], f"cannot be hashed for the model's lineage ({str(err).splitlines()[0][:200]})",
                            "Fix or remove that file so the data has a version, or set data.validation: skip to "
                            "register without one") from None
        logger.warning("Cannot hash %s for data.dvc_md5: %s", index["root"], err)
        tags["data.dvc_md5"] = "unknown"
    tags["data.dvc_tracked"] = str(dvc_data_version(index["root"], project) is not None)
    return tags


def split_sizes(index: dict) -> dict[str, int]:
    """Images per split of a dataset index (train, val, and test when present)."""
    return {split: len(index[split]) for split in ("train", "val", "test") if isinstance(index.get(split), list)}


def dataset_input(index: dict, task: str, project: Path | None = None) -> Any:
    """The data as an MLflow dataset (what the runs list's Dataset column shows): name, digest = DVC md5,
    source = the resolved root, profile = split sizes, classes and format."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    class DataFolder(MetaDataset):
        """A folder of images and labels, known by metadata only (MLflow never reads it)."""

        def __init__(self, profile: dict, **kwargs):
            self._profile = profile
            super().__init__(**kwargs)

        @property
        def profile(self) -> dict:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    root = Path(index["root"]).resolve()
    name = f"{task}-builtin" if index.get("builtin") else f"{task}-{root.name}"
    profile = {**split_sizes(index), "classes": len(index.get("classes", [])), "format": index.get("format")}
    with warnings.catch_warnings():  # two registered local-file source classes both match a plain path
        warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
        source = resolve_dataset_source(str(root))
    return DataFolder(profile=profile, source=source, name=name, digest=data_md5(root, project))


def log_data_lineage(index: dict, task: str, project: Path | None = None) -> None:
    """Log the data to the active MLflow run: the dataset input, the lineage tags and ``data.root`` resolved."""
    import mlflow

    mlflow.set_tags(lineage_tags(index, project))
    mlflow.log_param("data.root", str(Path(index["root"]).resolve()))
    mlflow.log_input(dataset_input(index, task, project), context="training")
