"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from __future__ import annotations

import gc
import os

from kedro.config import OmegaConfigLoader

# Kedro imports this module first when a project starts; the hooks below and then the pipeline registry import
# torch, MLflow, timm...: about half a million objects that live as long as the process. Collecting young objects
# every 700 allocations (Python's default) while they are created costs 0.75 of the ~4 CPU-s those imports take on
# 2 cores (docs/benchmarks.md section 12): every 100,000 until the context exists, when FrozenStartupHook restores
# Python's thresholds (hooks/imports.py).
_GC_THRESHOLDS = gc.get_threshold()
gc.set_threshold(max(_GC_THRESHOLDS[0], 100_000), *_GC_THRESHOLDS[1:])

from visionpipe.hooks import (  # noqa: E402  (after the thresholds: these import torch and MLflow)
    CacheIntegrityHook,
    DistributedHook,
    DvcExperimentHook,
    FrozenStartupHook,
    MlflowRunHook,
    ProjectMlflowHook,
    RunStateHook,
    SystemMetricsHook,
)
from visionpipe.project import project_root  # noqa: E402


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a team's tracking server), else the project's embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Beside the embedded store, artifacts go to the project's mlartifacts; a server chooses its own."""
    return None if os.environ.get("MLFLOW_TRACKING_URI") else (project_root() / "mlartifacts").as_uri()


_MAIN_RANK = int(os.environ.get("RANK", "0")) == 0

# kedro-mlflow's plugin hook is replaced by the project's subclass (run-control keys are tags, not params); it is
# registered last so that, as the plugin's would, it runs before the project's hooks. Under torchrun, ranks other
# than 0 must not open MLflow runs: they get no MLflow hook at all.
HOOKS = (FrozenStartupHook(_GC_THRESHOLDS), DistributedHook(), SystemMetricsHook(), MlflowRunHook(), RunStateHook(), DvcExperimentHook(), CacheIntegrityHook(),
         *((ProjectMlflowHook(),) if _MAIN_RANK else ()))

DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow")

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"vp.tracking_uri": tracking_uri, "vp.artifact_root": artifact_root},
}
