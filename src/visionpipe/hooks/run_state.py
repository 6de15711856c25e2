"""The state around each run: store creation, the task lock, run.json, earlier outputs moved aside,
killed runs marked KILLED, and ``train.resume`` continuing the checkpoint's MLflow run."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from visionpipe import run_record as rs
from visionpipe.engine import distributed
from visionpipe.engine.checkpoint import load_checkpoint
from visionpipe.hooks.mlflow_runs import is_run_control
from visionpipe.tasks import TASKS
from visionpipe.tracking.callbacks import epoch_metric_name

logger = logging.getLogger(__name__)


def pipeline_tasks(pipeline) -> list[str]:
    """The tasks whose nodes the pipeline holds (from the node namespaces)."""
    found = {(n.namespace or "").split(".")[0] for n in pipeline.nodes}
    return [t for t in TASKS if t in found]


def output_paths(catalog, names) -> list[Path]:
    """Local files/folders behind the named catalog datasets (those without one, e.g. MLflow metrics, are skipped)."""
    paths = []
    for name in sorted(names):
        try:
            dataset = catalog[name]
        except Exception:  # a dataset with no catalog entry is a MemoryDataset: nothing on disk
            continue
        path = getattr(dataset, "_filepath", None) or getattr(dataset, "_path", None)
        if path is not None and getattr(dataset, "_protocol", "file") in ("file", None):
            paths.append(Path(str(path)))
    return paths


def changed_params(logged: dict[str, str], task: str, block: dict) -> list[str]:
    """Parameters of ``block`` whose value differs from the one logged to a run (kedro-mlflow's flattened
    ``<task>.a.b`` names; values longer than MLflow's limit are not compared). Run-control keys (resume,
    device, workers...: ``mlflow_runs.RUN_CONTROL_KEYS``) never count."""

    def flat(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flat(f"{prefix}.{k}", v)
        else:
            yield prefix, str(value)

    return [k for k, v in flat(task, block) if k in logged and len(v) <= 250 and logged[k] != v and not is_run_control(k)]


class RunStateHook:
    """One per session. ``before_pipeline_run`` runs *before* kedro-mlflow's (``tryfirst``) so that the
    store exists and the resumed run id is set before kedro-mlflow starts its run."""

    def __init__(self):
        self._context = None
        self._project: Path | None = None
        self._locks: list[rs.TaskLock] = []
        self._manifests: dict[str, dict[str, Any]] = {}
        self._resume_history: dict[str, list[dict]] = {}
        self._tagged_run_id: str | None = None

    # -------------------------------------------------------------- session start
    @hook_impl(tryfirst=True)
    def after_context_created(self, context) -> None:
        """Create the MLflow store under a file lock before kedro-mlflow reads or creates its experiment."""
        self._context = context
        self._project = Path(context.project_path).resolve()
        self._tagged_run_id = None  # settings.HOOKS is one instance for every session of a process
        self._resume_history = {}
        if not distributed.is_main_process():
            return
        loader = context.config_loader
        if "mlflow" not in loader.config_patterns:
            loader.config_patterns.update({"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]})
        try:
            conf = loader["mlflow"]
        except Exception:  # no mlflow.yml: kedro-mlflow is not configured for this project
            return
        server, tracking = conf.get("server") or {}, conf.get("tracking") or {}
        uri = os.environ.get("MLFLOW_TRACKING_URI") or server.get("mlflow_tracking_uri")
        if not uri:
            return
        experiment = (tracking.get("experiment") or {})
        kwargs = experiment.get("create_experiment_kwargs") or {}
        rs.ensure_store(str(uri), experiment.get("name"), kwargs.get("artifact_location"), tags=kwargs.get("tags"))

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        """Lock each task, write run.json (running), move the outputs of earlier runs aside, mark runs of
        killed processes KILLED, and point kedro-mlflow at the run a resumed checkpoint belongs to."""
        if not distributed.is_main_process() or self._project is None:
            return
        tasks = pipeline_tasks(pipeline)
        try:
            for task in tasks:
                lock = rs.TaskLock(task, self._project)
                lock.acquire()
                self._locks.append(lock)
        except rs.RunInProgressError:
            self._release()
            raise
        if len(tasks) == 1:
            self._use_task_experiment(tasks[0])
        self._mark_killed()
        params = self._context.params if self._context is not None else {}
        for task in tasks:
            self._resume(task, params.get(task) or {})
            report = self._project / rs.REPORTING / task
            previous = rs.read_manifest(task, self._project)
            owned = [p for p in output_paths(catalog, {n for n in pipeline.all_outputs() if n.startswith(f"{task}.")})
                     if p.name != rs.MANIFEST]
            moved = rs.move_aside(owned, self._project, report / rs.PREVIOUS)
            if moved and previous:
                rs.write_json_atomic(report / rs.PREVIOUS / rs.MANIFEST, previous)
            manifest = {
                "task": task, "pipeline": "+".join(run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]),
                "kedro_run_id": run_params.get("run_id") or run_params.get("session_id"), "mlflow_run_id": None,
                "status": "running", "start": rs.now(), "end": None, "pid": os.getpid(), "data_fingerprint": None,
                "previous_outputs": (report / rs.PREVIOUS).relative_to(self._project).as_posix() if moved else None,
            }
            self._manifests[task] = manifest
            rs.write_json_atomic(rs.manifest_path(task, self._project), manifest)

    def _use_task_experiment(self, task: str) -> None:
        """Point kedro-mlflow at the task's own experiment (``visionpipe-<task>``, created with the store lock held)
        before it starts the run; a run an orchestrator opened before the session keeps its experiment."""
        import mlflow

        config = getattr(self._context, "mlflow", None)
        if config is None or mlflow.active_run() is not None:
            return
        try:
            experiment = config.tracking.experiment
            client = config.server._mlflow_client
            name, kwargs = rs.task_experiment(experiment.name, task), experiment.create_experiment_kwargs
        except AttributeError:  # kedro-mlflow disabled or not set up
            return
        uri = getattr(config.server, "mlflow_tracking_uri", None) or mlflow.get_tracking_uri()
        rs.ensure_store(str(uri), name, kwargs.artifact_location, tags=kwargs.tags)
        found = client.get_experiment_by_name(name)
        if found is None:  # a tracking server: it creates the experiment itself
            client.create_experiment(name, artifact_location=kwargs.artifact_location, tags={**rs.EXPERIMENT_TAGS, **(kwargs.tags or {})})
            found = client.get_experiment_by_name(name)
        elif found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        # kedro-mlflow starts its run with experiment_id=tracking.experiment._experiment.experiment_id
        # (kedro_mlflow/framework/hooks/mlflow_hook.py, before_pipeline_run), and re-enters it at each node with
        # mlflow.start_run(run_id), which MLflow refuses unless the active experiment is the run's
        experiment._experiment = found
        mlflow.set_tracking_uri(str(uri))
        mlflow.set_experiment(experiment_id=found.experiment_id)

    def _mark_killed(self) -> None:
        config = getattr(self._context, "mlflow", None)
        try:
            client = config.server._mlflow_client
            experiment_id = config.tracking.experiment._experiment.experiment_id
        except AttributeError:  # kedro-mlflow disabled or not set up
            return
        rs.mark_killed_runs(client, experiment_id, self._project)

    def _resume(self, task: str, block: dict) -> None:
        """With train.resume and a checkpoint that names its MLflow run, kedro-mlflow reopens that run."""
        train = block.get("train") or {}
        config = getattr(self._context, "mlflow", None)
        if not train.get("resume") or config is None:
            return
        checkpoint = Path(train.get("checkpoint_dir") or f"data/06_models/{task}/checkpoints") / "last.pt"
        checkpoint = checkpoint if checkpoint.is_absolute() else self._project / checkpoint
        run_id = rs.checkpoint_run_id(checkpoint)
        if run_id is None:
            return
        try:
            run = config.server._mlflow_client.get_run(run_id)
        except Exception:  # the run was deleted or lives in another store: a new run starts
            logger.warning("%s names MLflow run %s, which this store does not have: logging to a new run", checkpoint, run_id)
            return
        changed = changed_params(run.data.params, task, block)
        if changed:  # MLflow refuses to change a logged parameter, so the continuation gets its own run
            logger.warning("Resuming %s from %s in a new MLflow run: parameters changed since run %s (%s)", task, checkpoint,
                           run_id, ", ".join(changed[:5]))
            return
        config.tracking.run.id = run_id

        self._resume_history[task] = list(load_checkpoint(checkpoint).get("history") or [])
        logger.info("Resuming %s: logging into MLflow run %s (from %s)", task, run_id, checkpoint)

    # -------------------------------------------------------------- first node: the MLflow run is open
    @hook_impl
    def before_node_run(self, node, inputs) -> None:
        import mlflow

        run = mlflow.active_run()
        task = (node.namespace or "").split(".")[0]
        if task in self._manifests:
            index = inputs.get(f"{task}.clean_index") or inputs.get(f"{task}.dataset_index")
            if isinstance(index, dict) and index.get("fingerprint") and not self._manifests[task]["data_fingerprint"]:
                self._manifests[task]["data_fingerprint"] = index["fingerprint"]
                rs.write_json_atomic(rs.manifest_path(task, self._project), self._manifests[task])
        if run is None or run.info.run_id == self._tagged_run_id or not distributed.is_main_process():
            return
        self._tagged_run_id = run.info.run_id
        mlflow.set_tags(rs.process_tags(self._project))
        for name, manifest in self._manifests.items():
            manifest["mlflow_run_id"] = run.info.run_id
            rs.write_json_atomic(rs.manifest_path(name, self._project), manifest)
            if name in self._resume_history:
                self._replay_history(run.info.run_id, self._resume_history.pop(name))

    @staticmethod
    def _replay_history(run_id: str, history: list[dict]) -> None:
        """Epochs the checkpoint holds but the killed process never got to MLflow (async logging dies with
        it) are logged now, so the resumed run's history has no gaps."""
        import mlflow

        client = mlflow.MlflowClient()
        logged = {m.step for m in client.get_metric_history(run_id, epoch_metric_name("train_loss"))}
        for row in history:
            epoch = int(row["epoch"])
            if epoch not in logged:
                values = {epoch_metric_name(k): float(v) for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
                mlflow.log_metrics(values, step=epoch, run_id=run_id)

    # -------------------------------------------------------------- session end
    def _finish(self, status: str, error: BaseException | None = None) -> None:
        for task, manifest in self._manifests.items():
            manifest.update(status=status, end=rs.now())
            if error is not None:
                manifest["error"] = f"{type(error).__name__}: {error}"[:2000]
            if status == "finished":  # every output is now from this run: what was set aside goes
                shutil.rmtree(self._project / rs.REPORTING / task / rs.PREVIOUS, ignore_errors=True)
                manifest["previous_outputs"] = None
            rs.write_json_atomic(rs.manifest_path(task, self._project), manifest)
        self._manifests.clear()
        self._release()

    def _release(self) -> None:
        for lock in self._locks:
            lock.release()
        self._locks.clear()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._finish("finished")

    @hook_impl
    def on_pipeline_error(self, error) -> None:
        self._finish("failed", error)
