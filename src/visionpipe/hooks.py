"""Project hooks: system-metrics defaults for MLflow, and the torchrun (DDP) process group."""

from __future__ import annotations

import logging
import os

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from visionpipe.engine import distributed

logger = logging.getLogger(__name__)


class VisionpipeHooks:
    def __init__(self):
        self._monitor = None
        self._outer_run_id = None

    @hook_impl
    def after_context_created(self, context) -> None:
        import mlflow

        active = mlflow.active_run()
        self._outer_run_id = active.info.run_id if active else None  # a run an orchestrator opened stays open
        distributed.init_from_env()

    @hook_impl
    def before_node_run(self, node) -> None:
        """Start MLflow's system-metrics sampler (CPU, RAM, and GPU through nvidia-ml-py) once per run.

        Started here rather than through MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING because kedro-mlflow
        re-enters its run at every node, which would start one sampler per node.
        """
        if self._monitor is not None or os.environ.get("VISIONPIPE_SYSTEM_METRICS", "true").lower() == "false":
            return
        import mlflow
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        run = mlflow.active_run()
        if run is None or not distributed.is_main_process():
            return
        interval = float(os.environ.get("VISIONPIPE_SYSTEM_METRICS_INTERVAL", "5"))
        self._monitor = SystemMetricsMonitor(run.info.run_id, sampling_interval=interval, samples_before_logging=1)
        self._monitor.start()
        if getattr(self, "_kedro_run_id", None):
            mlflow.set_tag("kedro.run_id", self._kedro_run_id)
        task = (node.namespace or "").split(".")[0]
        if task:
            mlflow.set_tag("visionpipe.task", task)
            if run.info.run_name != task:  # a stage pipeline run for one task, e.g. "training"
                mlflow.set_tag("mlflow.runName", f"{task}.{run.info.run_name}")

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        """Under torchrun every rank runs the pipeline; only rank 0 writes files (and MLflow, see settings)."""
        self._kedro_run_id = run_params.get("run_id")
        if distributed.is_main_process():
            return
        for name in pipeline.datasets():
            if not (name.startswith("params:") or name == "parameters"):
                catalog[name] = MemoryDataset()
        logger.info("Rank %d: catalog outputs kept in memory; rank 0 writes them", distributed.rank())

    def _close_runs(self) -> None:
        """kedro-mlflow re-enters its run at every node; close what is left so the next session
        (the next task of `kedro run`) starts a run of its own instead of reusing this one."""
        import mlflow

        while (run := mlflow.active_run()) is not None and run.info.run_id != self._outer_run_id:
            mlflow.end_run()

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._stop_monitor()
        self._close_runs()
        distributed.barrier()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._stop_monitor()
