"""Where a model came from: code commit, data version, parameters."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


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


def lineage_tags(index: dict, project: Path | None = None) -> dict[str, str]:
    tags = git_tags(project)
    tags["data.root"] = index["root"]
    tags["data.format"] = index["format"]
    tags["data.fingerprint"] = index.get("fingerprint", "unknown")
    tags["data.dvc_md5"] = dvc_data_version(index["root"], project) or "untracked"
    return tags
