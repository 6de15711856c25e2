"""Where the project is: the one project-root finder (Kedro's rule: a ``pyproject.toml`` with ``[tool.kedro]``),
the root a run logs to (DVC experiment copies resolve to the real repository), and a task's parameters as
Kedro's config loader resolves them for commands that run outside ``kedro run``."""

from __future__ import annotations

import os
from pathlib import Path


def find_project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding a Kedro project's
    ``pyproject.toml``, or None outside any project."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "[tool.kedro]" in pyproject.read_text(errors="ignore"):
            return folder
    return None


def project_root() -> Path:
    """The project whose store a run logs to: DVC_ROOT when DVC runs the command (``dvc exp run`` in a
    temporary copy under ``.dvc/tmp/exps`` sets it to the real repository), else the nearest Kedro project
    at or above the working directory (:func:`find_project_root`), else the working directory."""
    dvc_root = os.environ.get("DVC_ROOT")
    if dvc_root and Path(dvc_root).is_dir():
        return Path(dvc_root).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        # a temporary experiment copy is itself a project: skip to the repository holding .dvc/tmp/exps
        if folder.name == "exps" and folder.parent.name == "tmp" and folder.parent.parent.name == ".dvc":
            return folder.parent.parent.parent
    return find_project_root(cwd) or cwd


def load_task_params(task: str, env: str | None = None) -> dict:
    """The task's parameter block as Kedro's config loader resolves it (base + local, or ``env``)."""
    from kedro.framework.session import KedroSession  # Kedro's session machinery is slow to import: only when a command needs it
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(Path.cwd())
    with KedroSession.create(project_path=Path.cwd(), env=env) as session:
        return session.load_context().params[task]
