"""Project hooks, one class per concern (each tested alone in tests/test_hooks.py)."""

from visionpipe.hooks.distributed import DistributedHook
from visionpipe.hooks.experiments import CacheIntegrityHook, DvcExperimentHook
from visionpipe.hooks.imports import FrozenStartupHook
from visionpipe.hooks.mlflow_runs import MlflowRunHook, ProjectMlflowHook
from visionpipe.hooks.run_state import RunStateHook
from visionpipe.hooks.system_metrics import SystemMetricsHook

__all__ = ["CacheIntegrityHook", "DistributedHook", "DvcExperimentHook", "FrozenStartupHook", "MlflowRunHook", "ProjectMlflowHook", "RunStateHook", "SystemMetricsHook"]
