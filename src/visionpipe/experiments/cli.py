"""``visionpipe dvc-sync``, ``visionpipe sweep`` and ``visionpipe reproduce``."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from visionpipe.tasks import TASKS
from visionpipe.errors import VisionpipeError

logger = logging.getLogger(__name__)


def _user_errors(func):
    """Turn a user-facing error into one line, without a traceback."""
    from functools import wraps

    @wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except VisionpipeError as err:
            raise click.ClickException(f"{type(err).__name__}: {err}") from None

    return wrapper


@click.command("dvc-sync")
@click.option("--check", is_flag=True, help="Only compare: exit 1 (and print the diff) when dvc.yaml is out of date.")
@click.option("--project", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Project root (holding conf/ and src/).")
@_user_errors
def dvc_sync(check: bool, project: Path) -> None:
    """Write dvc.yaml from the Kedro pipelines, the catalog and the parameters (one stage per task)."""
    from visionpipe.experiments.dvc_sync import sync

    up_to_date, diff = sync(project.resolve(), check=check)
    if up_to_date:
        click.echo("dvc.yaml is up to date with the pipelines")
    elif check:
        click.echo(diff)
        raise click.ClickException("dvc.yaml disagrees with the pipelines: run `visionpipe dvc-sync` and commit it")
    else:
        click.echo(diff)
        click.echo("dvc.yaml written")


@click.command("sweep")
@click.option("--task", type=click.Choice(TASKS), required=True)
@click.option("--grid", "grids", multiple=True,
              help='A parameter of the task block and its values, e.g. "train.lr=[0.001,0.01]"; repeat for more.')
@click.option("--file", "sweep_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A sweep file: YAML mapping {grid: {train.lr: [...]}} or {points: [{train.lr: ...}, ...]}.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Points run at once, each in its own process on its own GPU (CUDA_VISIBLE_DEVICES).")
@click.option("--gpus", default=None, help="GPU ids for the workers, e.g. 0,1,2,3 (default: 0..jobs-1 when --jobs > 1).")
@click.option("--env", default=None, help="Kedro configuration environment.")
@click.option("--name", default=None, help="Name of the parent MLflow run (default sweep-<task>-<time>).")
@_user_errors
def sweep(task, grids, sweep_file, jobs, gpus, env, name) -> None:
    """Train one point per parameter combination as nested MLflow runs; only the best is gated."""
    from visionpipe.experiments.sweep import parse_grid, points_from_file, run_sweep

    points = points_from_file(sweep_file) if sweep_file else []
    if grids:
        points = parse_grid(grids) if not points else [{**a, **b} for a in points for b in parse_grid(grids)]
    if not points:
        raise click.UsageError("give at least one --grid or a --file")
    gpu_ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    summary = run_sweep(Path.cwd(), task, points, jobs=jobs, gpus=gpu_ids, env=env, name=name)
    click.echo(summary.table())


@click.command("reproduce")
@click.argument("model_uri")
@click.option("--tracking-uri", default=None, help="Default: MLFLOW_TRACKING_URI or the project's mlflow.db.")
@click.option("--keep", is_flag=True, help="Keep the temporary worktree (its path is printed).")
@click.option("--tolerance", type=float, default=None,
              help="Largest accepted |recorded - reproduced| per metric (default: 0 on CPU, 1e-3 on GPU).")
@_user_errors
def reproduce(model_uri: str, tracking_uri: str | None, keep: bool, tolerance: float | None) -> None:
    """Re-run the training of a registered version (models:/<name>/<version>) from its commit and data."""
    from visionpipe.experiments.reproduce import reproduce_version
    from visionpipe.project import project_root

    result = reproduce_version(model_uri, project=project_root(), tracking_uri=tracking_uri, keep=keep, tolerance=tolerance)
    click.echo(result.table())
    if not result.matches:
        raise click.ClickException(f"reproduced metrics differ from the recorded ones beyond {result.tolerance}")


COMMANDS = (dvc_sync, sweep, reproduce)
