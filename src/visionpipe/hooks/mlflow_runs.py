"""Naming, describing, tagging and closing the MLflow run kedro-mlflow opens for a session."""

from __future__ import annotations

import logging
import re
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook

from visionpipe.engine import distributed
from visionpipe.tracking.lineage import log_data_lineage
from visionpipe.tracking.summary import run_note, save_runs_view

logger = logging.getLogger(__name__)

# kedro-mlflow copies Kedro's run_params into tags: "runner" is a Python object repr and "run_id" repeats
# kedro.run_id under a name that reads like MLflow's own run id.
_NOISE_TAGS = ("run_id",)


# How a run is run, not what it trains: never MLflow params (a param cannot change, and a run killed and restarted
# with train.resume=true, another device or fewer workers must continue the same run). Logged as tags instead.
RUN_CONTROL_KEYS = ("train.resume", "train.device", "train.checkpoint_dir", "train.progress_bar", "train.log_every_n_steps",
                    "data.num_workers")


def is_run_control(name: str) -> bool:
    """Whether a flattened parameter name (``classification.train.resume``) is a run-control key."""
    return any(name == key or name.endswith(f".{key}") for key in RUN_CONTROL_KEYS)


class ProjectMlflowHook(MlflowHook):
    """kedro-mlflow's hook, with run-control keys (RUN_CONTROL_KEYS) logged as tags rather than params, so
    resuming, switching device or worker count never meets MLflow's "changing param values is not allowed".

    kedro-mlflow logs a node's parameters before every node that reads them, one store transaction each: the
    ~60 keys of a task's block went to the store 7 times a run (0.1-0.15 s a node on SQLite, docs/benchmarks.md
    section 12). A key already logged in the active run with the same value is not sent again; a changed value
    still reaches MLflow, which refuses it as before."""

    def __init__(self):
        super().__init__()
        self._logged: set[tuple[str | None, str, str]] = set()  # (run id, name, value) sent to the store

    def _log_param(self, name: str, value: Any) -> None:
        import mlflow

        run = mlflow.active_run()
        sent = (run.info.run_id if run else None, name, str(value))
        if sent in self._logged:
            return None
        if is_run_control(name):
            mlflow.set_tag(name, str(value))
        else:
            super()._log_param(name, value)
        self._logged.add(sent)
        return None


def model_label(params: dict[str, Any]) -> str:
    """``fcos-resnet10t``: the model name and its backbone or encoder, as people call the model."""
    model = params.get("model") or {}
    parts = [model.get("name")] + [model.get(k) for k in ("backbone", "encoder") if model.get(k) and model.get(k) != model.get("name")]
    return "-".join(str(p) for p in parts if p) or "model"


def run_stamp(kedro_run_id: str | None) -> str:
    """``1123-180407`` from Kedro's session id ``2026-11-23T18.04.07.474Z``: tells repeated runs apart, sorts by time."""
    digits = re.findall(r"\d+", kedro_run_id or "")
    if len(digits) >= 6:
        return f"{digits[1]}{digits[2]}-{digits[3]}{digits[4]}{digits[5]}"
    import time

    return time.strftime("%m%d-%H%M%S")


def run_name(task: str, label: str, stage: str | None, kedro_run_id: str | None) -> str:
    """``<task>-<model>-<stamp>``; a stage run adds the stage: ``detection-fcos-resnet10t-training-1123-180407``."""
    return "-".join(p for p in (task, label, stage, run_stamp(kedro_run_id)) if p)


class MlflowRunHook:
    """Names runs ``<task>-<model>-<stamp>``, tags them with the Kedro run id and the task (from the node
    namespace), logs the data as a dataset input once the clean index exists, writes the run description
    at the end, and closes what kedro-mlflow leaves open so the next session gets its own run."""

    def __init__(self):
        self._outer_run_id: str | None = None
        self._kedro_run_id: str | None = None
        self._runner: str | None = None
        self._tagged_run_id: str | None = None
        self._task: str | None = None
        self._decision: dict | None = None
        self._lineage_run_id: str | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        import mlflow

        active = mlflow.active_run()
        self._outer_run_id = active.info.run_id if active else None  # a run an orchestrator opened stays open

    @hook_impl
    def before_pipeline_run(self, run_params) -> None:
        self._kedro_run_id = run_params.get("run_id")
        runner = run_params.get("runner")
        self._runner = runner if isinstance(runner, str) or runner is None else type(runner).__name__
        self._tagged_run_id, self._task, self._decision, self._lineage_run_id = None, None, None, None

    @hook_impl
    def before_node_run(self, node, inputs) -> None:
        import mlflow

        run = mlflow.active_run()
        if run is None or run.info.run_id == self._tagged_run_id or not distributed.is_main_process():
            return
        self._tagged_run_id = run.info.run_id
        tags = {}
        if self._kedro_run_id:
            tags["kedro.run_id"] = self._kedro_run_id
        if self._runner:
            tags["runner"] = self._runner.rsplit(".", 1)[-1].split(" ")[0].lstrip("<")
        task = (node.namespace or "").split(".")[0]
        if task:
            self._task = task
            label = model_label(inputs.get(f"params:{task}") or {})
            stage = None if run.info.run_name == task else run.info.run_name  # a stage pipeline run, e.g. "training"
            tags.update({"visionpipe.task": task, "visionpipe.model_label": label,
                         "mlflow.runName": run_name(task, label, stage, self._kedro_run_id)})
        mlflow.set_tags(tags)
        client = mlflow.MlflowClient()
        for key in _NOISE_TAGS:
            if key in client.get_run(run.info.run_id).data.tags:
                client.delete_tag(run.info.run_id, key)

    def _log_lineage(self, index: dict | None) -> None:
        """Once per run: the data as a dataset input, its DVC md5 and root (when the clean index is first seen:
        written by the validation stage, or read by a stage pipeline such as ``--pipelines=training``)."""
        import mlflow

        run = mlflow.active_run()
        if index is None or run is None or run.info.run_id == self._lineage_run_id:
            return

        self._lineage_run_id = run.info.run_id
        try:
            log_data_lineage(index, self._task)
        except Exception as err:  # lineage must not fail a training run; it is reported instead
            logger.warning("Could not log the data lineage of %s: %s", self._task, err)

    @hook_impl
    def after_node_run(self, node, inputs, outputs) -> None:
        import mlflow

        if mlflow.active_run() is None or not distributed.is_main_process() or not self._task:
            return
        key = f"{self._task}.clean_index"
        self._log_lineage(outputs.get(key, inputs.get(key)))
        decision = outputs.get(f"{self._task}.registration")
        if isinstance(decision, dict):
            self._decision = decision

    def _describe(self) -> None:
        """The run description (MLflow's note) from what the run logged: task, model, data, results, best epoch."""
        import mlflow

        if not (self._tagged_run_id and self._task) or not distributed.is_main_process():
            return
        client = mlflow.MlflowClient()
        run = client.get_run(self._tagged_run_id)
        client.set_tag(run.info.run_id, "mlflow.note.content", run_note(self._task, run.data.tags, run.data.metrics, self._decision))
        try:  # the summary's `compare` link opens it
            save_runs_view(client, run.info.experiment_id, self._task)
        except Exception as err:  # e.g. a tracking server that refuses experiment tags to this user
            logger.warning("Could not save the headline runs view of experiment %s: %s", run.info.experiment_id, err)

    def _close_runs(self) -> None:
        """kedro-mlflow re-enters its run at every node; close what is left."""
        import mlflow

        while (run := mlflow.active_run()) is not None and run.info.run_id != self._outer_run_id:
            mlflow.end_run()

    @hook_impl
    def after_pipeline_run(self) -> None:
        try:
            self._describe()
        except Exception as err:  # a description must not turn a finished run into a failed one
            logger.warning("Could not write the MLflow run description: %s", err)
        self._close_runs()
