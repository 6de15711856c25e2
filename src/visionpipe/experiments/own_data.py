"""``visionpipe data add PATH``: a user's data folder into ``data/01_raw/<name>`` under DVC, ready for
``<task>.data.root`` and ``visionpipe reproduce``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from visionpipe.errors import DataError
from visionpipe.files import atomic_folder

RAW = Path("data/01_raw")


def dvc_program() -> str:
    """The ``dvc`` of this environment (beside the running Python), else the one on PATH."""
    beside = Path(sys.executable).with_name("dvc")
    return str(beside) if beside.exists() else "dvc"


def add_data(project: Path, source: Path, name: str | None = None) -> Path:
    """Copy ``source`` to ``data/01_raw/<name>`` (default: its folder name; a folder already there is used in
    place) and ``dvc add`` it; return the folder, relative to ``project``. The copy appears whole or not at all;
    an existing ``data/01_raw/<name>`` is never overwritten."""
    project, source = project.resolve(), source.resolve()
    if not source.is_dir():
        raise DataError(source, "is not a folder", "Pass the folder that holds your images (and annotations)")
    if not (project / ".dvc").is_dir():
        raise DataError(project, "is not a DVC repository", "Run it from a git + DVC clone of the project (`dvc init` once)")
    raw = project / RAW
    if source.parent == raw:
        target = source
    else:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or source.name).strip("-.")
        if not name:
            raise DataError(source, "gives no usable folder name", "Pass --name")
        target = raw / name
        if target.exists():
            raise DataError(target, "already exists", "Choose another --name, or remove it first (`dvc remove` its .dvc file)")
        if raw in source.parents or project / ".dvc" in source.parents:
            raise DataError(source, "lies inside the project's data or DVC folders", "Copy it from outside, or move it to data/01_raw/")
        atomic_folder(target, lambda tmp: shutil.copytree(source, tmp, dirs_exist_ok=True))
    relative = target.relative_to(project)
    proc = subprocess.run([dvc_program(), "add", relative.as_posix()], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise DataError(target, f"dvc add failed: {lines[-1] if lines else proc.returncode}",
                        "Fix what DVC says, then run `dvc add` on the folder yourself")
    return relative
