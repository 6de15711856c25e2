"""The state around a run: its manifest (run.json), the per-task run lock, the MLflow store-creation lock,
outputs of earlier runs moved aside, and MLflow runs left RUNNING by killed processes."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any, Iterable

from filelock import FileLock, Timeout

from visionpipe.engine.checkpoint import load_checkpoint
from visionpipe.errors import TrainingError, VisionpipeError
from visionpipe.files import atomic_write_text

logger = logging.getLogger(__name__)

REPORTING = Path("data/08_reporting")
MANIFEST = "run.json"
PREVIOUS = "previous"
# tags every run of this project carries, so a later run can tell whether its process is still alive
TAG_PID, TAG_HOST, TAG_PROJECT = "visionpipe.pid", "visionpipe.host", "visionpipe.project"


class RunInProgressError(VisionpipeError):
    """Another run of the same task holds the task's lock."""


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


# ---------------------------------------------------------------- files

def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and rename, with the umask's normal permissions."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def manifest_path(task: str, project: Path) -> Path:
    return project / REPORTING / task / MANIFEST


def read_manifest(task: str, project: Path) -> dict | None:
    try:
        return json.loads(manifest_path(task, project).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def move_aside(paths: Iterable[Path], project: Path, dest: Path) -> list[str]:
    """Move the outputs of an earlier run into ``dest`` (their project-relative layout kept), replacing
    what an earlier move left there. Returns the project-relative paths moved."""
    existing = [Path(p) for p in paths if Path(p).exists()]
    if not existing:
        return []
    shutil.rmtree(dest, ignore_errors=True)
    moved = []
    for path in existing:
        try:
            rel = path.resolve().relative_to(project.resolve())
        except ValueError:  # outside the project (an absolute catalog path): left where it is
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        moved.append(rel.as_posix())
    return moved


# ---------------------------------------------------------------- locks

class TaskLock:
    """One run of a task at a time in a project directory; the OS frees the lock when a process dies."""

    def __init__(self, task: str, project: Path):
        self.task = task
        self.path = project / REPORTING / task / ".run.lock"
        self.project = project
        self._lock = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path), timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            self._lock = None
            holder = read_manifest(self.task, self.project) or {}
            pid = holder.get("pid", "unknown")
            raise RunInProgressError(
                f"another run of {self.task} is in progress (pid {pid}); wait for it to finish, or run from another "
                f"project directory (lock: {self.path})"
            ) from None

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


# MLflow's UI opens an experiment with this tag in its "Model training" view (runs, metrics, models) rather
# than the GenAI view (traces, evaluations) it guesses for an untagged one
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def task_experiment(base: str | None, task: str) -> str:
    """The MLflow experiment of one task's runs: ``visionpipe-detection`` (``<base>-<task>``, the base from
    conf/base/mlflow.yml), beside the registered model of the same name; the runs list of one task can then show
    that task's headline metrics as columns."""
    return f"{base or 'visionpipe'}-{task}"


def create_experiment_once(client, name: str, artifact_location: str | None = None, tags: dict | None = None) -> str:
    """The id of experiment ``name``, created when missing; another process creating it at the same moment
    (two runs starting together against a tracking server) is not an error."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def ensure_store(tracking_uri: str, experiment: str | None = None, artifact_location: str | None = None,
                 timeout: float = 300, tags: dict[str, str] | None = None) -> None:
    """Create a SQLite MLflow store (tables, migrations, the experiment) under a file lock, so that two
    processes starting together on a fresh ``mlflow.db`` do not both create its tables."""
    from mlflow import MlflowClient

    if not tracking_uri.startswith("sqlite:///"):
        if experiment:  # a tracking server: no file lock, the database's unique name decides
            create_experiment_once(MlflowClient(tracking_uri), experiment, artifact_location, {**EXPERIMENT_TAGS, **(tags or {})})
        return
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(db) + ".lock", timeout=timeout):
        client = MlflowClient(tracking_uri)  # the SQLAlchemy store creates and migrates the tables here
        if experiment:
            create_experiment_once(client, experiment, artifact_location, {**EXPERIMENT_TAGS, **(tags or {})})


def mark_killed_runs(client, experiment_id: str, project: Path, keep: Iterable[str] = ()) -> list[str]:
    """Runs of this project on this host left RUNNING by a process that no longer exists become KILLED."""
    host = socket.gethostname()
    filter_string = f"attributes.status = 'RUNNING' and tags.`{TAG_PROJECT}` = '{project}'"
    killed = []
    for run in client.search_runs([experiment_id], filter_string=filter_string, max_results=1000):
        tags = run.data.tags
        if run.info.run_id in keep or tags.get(TAG_HOST) != host:
            continue
        try:
            pid = int(tags.get(TAG_PID, ""))
        except ValueError:
            continue
        if not pid_alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")
            killed.append(run.info.run_id)
            logger.warning("MLflow run %s (%s) was left RUNNING by pid %d, which is gone: marked KILLED",
                           run.info.run_id, run.info.run_name, pid)
    return killed


def process_tags(project: Path) -> dict[str, str]:
    return {TAG_PID: str(os.getpid()), TAG_HOST: socket.gethostname(), TAG_PROJECT: str(project)}


# ---------------------------------------------------------------- resume

def checkpoint_run_id(checkpoint: Path) -> str | None:
    """The MLflow run id stored in a training checkpoint (``None`` when absent or unreadable)."""
    if not Path(checkpoint).is_file():
        return None
    try:
        state = load_checkpoint(checkpoint)
    except TrainingError:
        return None  # the trainer reports the bad file with its fix when it tries to resume
    return (state.get("extra") or {}).get("mlflow_run_id")


def checkpoint_extra() -> dict[str, str]:
    """What a training checkpoint keeps besides the weights: the active MLflow run, resumed with it."""
    import mlflow

    run = mlflow.active_run()
    return {"mlflow_run_id": run.info.run_id} if run else {}
