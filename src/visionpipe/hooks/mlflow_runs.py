"""Naming, tagging and closing the MLflow run kedro-mlflow opens for a session."""

from __future__ import annotations

from kedro.framework.hooks import hook_impl

from visionpipe.engine import distributed


class MlflowRunHook:
    """Tags the run with the Kedro run id and the task (from the node namespace), names stage runs
    ``<task>.<stage>``, and closes what kedro-mlflow leaves open so the next session gets its own run."""

    def __init__(self):
        self._outer_run_id: str | None = None
        self._kedro_run_id: str | None = None
        self._tagged_run_id: str | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        import mlflow

        active = mlflow.active_run()
        self._outer_run_id = active.info.run_id if active else None  # a run an orchestrator opened stays open

    @hook_impl
    def before_pipeline_run(self, run_params) -> None:
        self._kedro_run_id = run_params.get("run_id")

    @hook_impl
    def before_node_run(self, node) -> None:
        import mlflow

        run = mlflow.active_run()
        if run is None or run.info.run_id == self._tagged_run_id or not distributed.is_main_process():
            return
        self._tagged_run_id = run.info.run_id
        if self._kedro_run_id:
            mlflow.set_tag("kedro.run_id", self._kedro_run_id)
        task = (node.namespace or "").split(".")[0]
        if task:
            mlflow.set_tag("visionpipe.task", task)
            if run.info.run_name != task:  # a stage pipeline run for one task, e.g. "training"
                mlflow.set_tag("mlflow.runName", f"{task}.{run.info.run_name}")

    def _close_runs(self) -> None:
        """kedro-mlflow re-enters its run at every node; close what is left."""
        import mlflow

        while (run := mlflow.active_run()) is not None and run.info.run_id != self._outer_run_id:
            mlflow.end_run()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._close_runs()
