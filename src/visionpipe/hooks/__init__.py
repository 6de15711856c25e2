"""Project hooks, one class per concern (each tested alone in tests/test_hooks.py)."""

from visionpipe.hooks.distributed import DistributedHook
from visionpipe.hooks.mlflow_runs import MlflowRunHook
from visionpipe.hooks.run_state import RunStateHook
from visionpipe.hooks.system_metrics import SystemMetricsHook

__all__ = ["DistributedHook", "MlflowRunHook", "RunStateHook", "SystemMetricsHook"]
