"""MLflow's system-metrics sampler (CPU, RAM, and GPU through nvidia-ml-py), once per MLflow run."""

from __future__ import annotations

import os

from kedro.framework.hooks import hook_impl

from visionpipe.engine import distributed


class SystemMetricsHook:
    """Started at the first node rather than through MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING: kedro-mlflow
    re-enters its run at every node, which would start one sampler per node."""

    def __init__(self):
        self._monitor = None

    @hook_impl
    def before_node_run(self, node) -> None:
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

    def _stop(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._stop()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._stop()
