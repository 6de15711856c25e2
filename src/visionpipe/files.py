"""File-mode helpers shared by every atomic writer (datasets, checkpoints, manifests)."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def normal_permissions(path: Path, directory: bool = False) -> None:
    """Give a file made by mkstemp/mkdtemp (always 0600/0700) the mode a plain ``open`` would: 0666 or
    0777 less the umask, so an atomically written file reads like any other (0644/0755 by default)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())
