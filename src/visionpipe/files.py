"""Writing files so that nobody sees them half-written: the one atomic writer for files (datasets, checkpoints,
manifests, shards, predictions) and for folders (model bundles, built-in data), with normal permissions."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_permissions(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (always 0600/0700) the mode a plain ``open`` would: 0666 or
    0777 less the umask, so an atomically written file reads like any other (0644/0755 by default)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Write through ``write(tmp_path)`` (a sibling temporary file), fsync, then rename onto ``path``: readers
    see the old file or the whole new one, never part of it; a failing ``write`` leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        normal_permissions(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.tmp-<pid>`` files :func:`atomic_write` left in ``folder`` when its process was
    killed (kill -9, power loss): those whose process is gone. Returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)) or not tmp.is_file():
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` for a text file."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_folder(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Fill a sibling temporary folder through ``write(tmp_folder)`` and swap it in whole for ``path``: an
    interrupted write never leaves a half-written folder that a later run would take for a complete one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.with_name(f".{path.name}.old")
    try:
        write(tmp)
        normal_permissions(tmp, directory=True)  # mkdtemp makes 0700 folders
        for child in tmp.rglob("*"):
            normal_permissions(child, directory=child.is_dir())
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
