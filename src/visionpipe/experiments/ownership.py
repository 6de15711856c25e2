"""Who writes ``data/01_raw/builtin/<task>``: DVC's ``builtin_data@<task>`` stage, once DVC tracks it.

The ingestion node generates the built-in data only where DVC does not track the folder (a plain
``kedro run`` on a fresh clone). Once dvc.lock records it, the stage is its only writer: the node
reads it, and refuses data generated with other ``data.builtin`` parameters instead of silently
rewriting a DVC output (which would make dvc.lock, the lineage tag and the data disagree).
"""

from __future__ import annotations

from pathlib import Path

from visionpipe.data import builtin
from visionpipe.errors import DataError
from visionpipe.experiments.integrity import record_for, verify
from visionpipe.tasks import get_task_class


def builtin_data_for_ingestion(root: str | Path, task, cfg: dict, project: str | Path | None = None) -> Path:
    """The built-in data folder for the ingestion node (``task``: its Task class, or name): generated here only
    when DVC does not own it."""
    task_cls = get_task_class(task)
    task = task_cls.name
    root = Path(root)
    project = Path(project or Path.cwd())  # Kedro runs in the project (or DVC's copy of it)
    record = record_for(root if root.is_absolute() else project / root, project)
    if record is None:
        return builtin.ensure_builtin_dataset(root, task_cls, cfg)
    stage = f"builtin_data@{task}"
    if not root.exists():
        raise DataError(root, f"tracked by {record.source} but absent; run `dvc pull {stage}` (or `dvc repro {stage}`)")
    if not builtin.is_built(root, task, cfg):
        verify(record, project)  # corrupt bytes (a bad cache object) are named as such, not as other parameters
        raise DataError(root, f"is owned by DVC ({record.source}) and was generated with other {task}.data.builtin "
                        f"parameters; run `dvc repro {task}` or `dvc exp run {task}` so the {stage} stage regenerates it")
    return root
