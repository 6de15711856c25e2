"""One sweep trial, in its worker's process: the task's Kedro pipeline in a session whose project path is
the trial's own folder while the configuration comes from the real project (``conf_source``).

Kedro makes the catalog's relative paths absolute under the project path, so every trial writes its own
``data/02_intermediate ... 08_reporting`` and no two trials clobber each other; the parameters the trial
changes arrive as Kedro runtime parameters (what ``kedro run --params`` sets). The MLflow child run is
opened before the session, so kedro-mlflow logs into it rather than starting its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import mlflow
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from visionpipe import console
from visionpipe.tracking.callbacks import report_to_trial

logger = logging.getLogger(__name__)


def run_point(project: Path, point_dir: Path, task: str, run_id: str, runtime_params: dict, env: str | None = None) -> None:
    """Run the pipeline of ``task`` for one trial, inside the MLflow run ``run_id``; errors propagate."""
    bootstrap_project(project)
    point_dir.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd()
    os.chdir(point_dir)  # parameters holding relative paths (checkpoints) resolve inside the trial too
    status = "FAILED"
    kedro_mlflow_logger = logging.getLogger("kedro_mlflow")
    level = kedro_mlflow_logger.level
    # the run's own experiment (the task's) becomes the active one: MLflow refuses to resume a run in another
    mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
    mlflow.start_run(run_id=run_id)
    try:
        with KedroSession.create(project_path=point_dir, conf_source=str(project / "conf"), env=env,
                                 runtime_params=runtime_params) as session:
            if not console.verbose_requested():
                # kedro-mlflow warns that the run was opened before the session and stays open: the sweep does it on purpose
                kedro_mlflow_logger.setLevel(logging.ERROR)
            session.run(pipeline_names=[task])
        status = "FINISHED"
    finally:
        kedro_mlflow_logger.setLevel(level)
        os.chdir(cwd)
        while mlflow.active_run() is not None:  # kedro-mlflow re-enters the run at every node: close every entry
            mlflow.end_run(status)


@contextlib.contextmanager
def pruning(trial, metric: str):
    """While open, training reports ``metric`` to the Optuna ``trial`` after each epoch and stops with
    ``optuna.TrialPruned`` when the study's pruner says so (nothing when ``trial`` is None)."""
    if trial is None:
        yield
        return
    with report_to_trial(trial, metric):
        yield
