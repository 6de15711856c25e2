"""Project settings. https://docs.kedro.org/en/stable/kedro_project_setup/settings.html"""

from __future__ import annotations

import os
from pathlib import Path

from kedro.config import OmegaConfigLoader

from visionpipe.hooks import DistributedHook, MlflowRunHook, RunStateHook, SystemMetricsHook


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI when set (a team's tracking server), else the embedded SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Beside the embedded store, artifacts go to ./mlartifacts; a server chooses its own."""
    return None if os.environ.get("MLFLOW_TRACKING_URI") else (Path.cwd() / "mlartifacts").as_uri()


HOOKS = (DistributedHook(), SystemMetricsHook(), MlflowRunHook(), RunStateHook())

# Under torchrun, ranks other than 0 must not open MLflow runs: kedro-mlflow is off for them.
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow") if int(os.environ.get("RANK", "0")) > 0 else ()

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"vp.tracking_uri": tracking_uri, "vp.artifact_root": artifact_root},
}
