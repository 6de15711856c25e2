"""Links MLflow runs to DVC experiments, and checks the DVC cache before a model is registered."""

from __future__ import annotations

import logging
import os

from kedro.framework.hooks import hook_impl

from visionpipe.engine import distributed
from visionpipe.experiments.integrity import verify_task_data

logger = logging.getLogger(__name__)

# set by DVC for every `dvc exp run` (dvc/repo/experiments/queue/base.py), queued or not
EXPERIMENT_ENV = {"DVC_EXP_NAME": "dvc.exp_name", "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev", "DVC_STAGE": "dvc.stage"}


def experiment_tags(environ=None) -> dict[str, str]:
    """The MLflow tags naming the DVC experiment this process runs in (empty outside ``dvc exp run``)."""
    environ = os.environ if environ is None else environ
    if not environ.get("DVC_EXP_NAME"):
        return {}
    return {tag: environ[var] for var, tag in EXPERIMENT_ENV.items() if environ.get(var)}


def dirty_paths(project=None) -> list[str]:
    """Tracked files with uncommitted changes (``git status``), so ``visionpipe reproduce`` can tell
    DVC's own bookkeeping (dvc.lock) from changed code or parameters."""
    import subprocess

    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project, capture_output=True,
                             text=True, check=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(line[3:].split(" -> ")[-1].strip('"') for line in out.splitlines() if len(line) > 3)


class DvcExperimentHook:
    """Tags the session's MLflow run with the DVC experiment name and baseline revision, so the run
    found in the MLflow UI and the row of ``dvc exp show`` name each other; and with the paths that
    differed from the commit (``git.dirty_paths``), which ``visionpipe reproduce`` reads."""

    def __init__(self):
        self._tagged_run_id: str | None = None
        self._project = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._project = context.project_path

    @hook_impl
    def before_node_run(self, node) -> None:
        import mlflow

        run = mlflow.active_run()
        if run is None or run.info.run_id == self._tagged_run_id or not distributed.is_main_process():
            return
        self._tagged_run_id = run.info.run_id
        tags = experiment_tags()
        paths = dirty_paths(self._project)
        if paths:
            tags["git.dirty_paths"] = ",".join(paths)[:5000]
        if tags:
            mlflow.set_tags(tags)


class CacheIntegrityHook:
    """Rehashes the DVC-tracked data the task reads against dvc.lock / ``.dvc`` files right after
    ingestion (before any training time is spent) and again before the registration node runs: a
    corrupt cache object checked out into the workspace fails the run instead of being registered
    under the good version's md5."""

    def __init__(self):
        self._project = None

    @hook_impl
    def after_context_created(self, context) -> None:
        # the project the session runs in (a `dvc exp run` copy under .dvc/tmp/exps has its own dvc.lock)
        self._project = context.project_path

    def _verify(self, datasets: dict) -> None:
        index = next((value for name, value in datasets.items() if name.endswith(("clean_index", "dataset_index"))), None)
        if index is not None and distributed.is_main_process():
            verify_task_data(index["root"], self._project)

    @hook_impl
    def after_node_run(self, node, outputs) -> None:
        if node.name.split(".")[-1] == "ingest_dataset":
            self._verify(outputs)

    @hook_impl
    def before_node_run(self, node, inputs) -> None:
        if node.name.split(".")[-1] == "register_model":
            self._verify(inputs)
