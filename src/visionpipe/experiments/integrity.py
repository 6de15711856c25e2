"""Rehash DVC-tracked files against what dvc.lock / ``.dvc`` files record, with DVC's own hashing.

DVC trusts file metadata: when a cache object is corrupt and the workspace copy is deleted,
``dvc checkout`` restores the corrupt bytes and ``dvc status`` then reports "up to date" (dvc#9641).
These functions hash the content itself (dvc_data, no state database) so a model is never
registered, nor a version reproduced, from bytes other than the ones its md5 names.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from visionpipe.errors import DataError
from visionpipe.project import project_root

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackedPath:
    """A path DVC records, the md5 recorded for it, and where that record lives."""

    path: Path
    md5: str
    source: str  # "dvc.lock (stage builtin_data@classification)" or "data/01_raw/mine.dvc"


def _outs(entries) -> list[dict]:
    return [e for e in entries or [] if isinstance(e, dict) and e.get("path") and e.get("md5")]


def lock_records(project: str | Path) -> list[TrackedPath]:
    """Every output dvc.lock records, with its stage."""
    project = Path(project).resolve()
    lock = project / "dvc.lock"
    if not lock.is_file():
        return []
    return [TrackedPath(project / out["path"], out["md5"], f"dvc.lock (stage {stage})")
            for stage, body in ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).items()
            for out in _outs(body.get("outs"))]


def record_for(path: str | Path, project: str | Path) -> TrackedPath | None:
    """The DVC record of exactly ``path``: a ``<path>.dvc`` file beside it (``dvc add``) or an out in
    dvc.lock; None when DVC does not track it."""
    project, path = Path(project).resolve(), Path(path).resolve()
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        for out in _outs((yaml.safe_load(dvc_file.read_text()) or {}).get("outs")):
            if (dvc_file.parent / out["path"]).resolve() == path:
                rel = dvc_file.relative_to(project).as_posix() if dvc_file.is_relative_to(project) else str(dvc_file)
                return TrackedPath(path, out["md5"], rel)
    return next((t for t in lock_records(project) if t.path.resolve() == path), None)


def content_hash(path: str | Path):
    """DVC's md5 of ``path`` from its bytes alone (``<md5>.dir`` for a folder) and, for a folder, the
    per-file md5s keyed by relative path."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as tmp:
        odb = HashFileDB(fs, tmp)  # no state database: every file is read and hashed
        _, _, obj = build(odb, str(Path(path).resolve()), fs, "md5", dry_run=True)
    files = {"/".join(key): hi.value for key, (_, hi) in obj.iteritems()} if obj.hash_info.isdir else {}
    return obj.hash_info.value, files


def _cache_objects(project: Path) -> Path:
    """The project's DVC object folder (``.dvc/cache/files/md5`` unless ``cache.dir`` moves it)."""
    try:
        from dvc.repo import Repo

        with Repo(str(project)) as repo:
            return Path(repo.cache.local.path)
    except Exception:  # not a DVC repository, or DVC unable to read its config: the default place
        return project / ".dvc" / "cache" / "files" / "md5"


def _recorded_files(project: Path, dir_md5: str) -> dict[str, str] | None:
    """The per-file md5s a ``.dir`` manifest in the local cache records (None when it is not cached)."""
    manifest = _cache_objects(project) / dir_md5[:2] / dir_md5[2:]
    if not manifest.is_file():
        return None
    try:
        return {entry["relpath"]: entry["md5"] for entry in json.loads(manifest.read_text())}
    except (ValueError, KeyError, TypeError):
        return None


def _fix(record: TrackedPath, project: Path) -> str:
    rel = record.path.relative_to(project).as_posix() if record.path.is_relative_to(project) else str(record.path)
    return (f"If you did not change it on purpose, the DVC cache holds corrupt bytes: delete the bad cache object "
            f"(`dvc cache dir` shows where) and run `dvc pull {rel}` from a good remote, or `dvc checkout --relink {rel}` "
            f"once the cache is repaired. If you changed it on purpose, record it (`dvc commit`, `dvc add` or `dvc repro`).")


def verify(record: TrackedPath, project: str | Path) -> None:
    """Raise DataError naming the file when ``record.path``'s content does not hash to ``record.md5``."""
    project = Path(project).resolve()
    if not record.path.exists():
        raise DataError(record.path, f"tracked by {record.source} but missing; run `dvc checkout` or `dvc pull`")
    actual, files = content_hash(record.path)
    if actual == record.md5:
        logger.debug("%s matches %s (%s)", record.path, record.source, actual)
        return
    detail = f"content md5 {actual}, {record.source} records {record.md5}"
    expected_files = _recorded_files(project, record.md5) if record.md5.endswith(".dir") else None
    if expected_files is not None:
        bad = sorted(k for k in expected_files.keys() | files.keys() if expected_files.get(k) != files.get(k))
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        detail = f"{len(bad)} file(s) differ from {record.source}: {shown} ({record.path})"
    raise DataError(record.path, detail, _fix(record, project))


def verify_paths(paths, project: str | Path) -> list[TrackedPath]:
    """Verify every DVC-tracked path among ``paths`` (untracked ones are skipped); return those checked."""
    project = Path(project).resolve()
    checked = []
    for path in paths:
        record = record_for(path, project)
        if record is None:
            logger.debug("%s is not tracked by DVC: nothing to verify", path)
            continue
        verify(record, project)
        checked.append(record)
    return checked


def verify_task_data(data_root: str | Path, project: str | Path | None = None) -> TrackedPath | None:
    """Before registering: the data the task read must hash to the md5 DVC recorded for it."""
    project = Path(project or project_root()).resolve()
    checked = verify_paths([Path(data_root) if Path(data_root).is_absolute() else project / data_root], project)
    if checked:
        logger.info("Data %s verified against %s", checked[0].path, checked[0].source)
    return checked[0] if checked else None
