"""``visionpipe dvc-sync``, ``visionpipe sweep`` and ``visionpipe reproduce``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import click

from visionpipe.tasks import TASKS, get_task_class
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
@click.option("--trials", type=int, default=None,
              help="Trials the study runs in all, over every worker (needed with --search; default with a grid: each point once).")
@click.option("--search", "searches", multiple=True,
              help='A searched parameter (Optuna TPE): "train.lr=log[1e-5,1e-2]", "train.weight_decay=float[0,0.1]", '
                   '"train.epochs=int[2,8]" or "model.name=[resnet18,resnet34]"; repeat for more.')
@click.option("--grid", "grids", multiple=True,
              help='A parameter of the task block and its values, e.g. "train.lr=[0.001,0.01]"; repeat for more (grid sampler).')
@click.option("--file", "sweep_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A sweep file: YAML mapping {grid: {train.lr: [...]}} or {points: [{train.lr: ...}, ...]}.")
@click.option("--params", "fixed", default="", help='Keys fixed for every trial, e.g. "data.root=/data/pets,train.epochs=2".')
@click.option("--prune", is_flag=True, help="Report the registry metric each epoch; a median pruner stops hopeless trials.")
@click.option("--storage", default=None,
              help="Optuna storage URL shared by the workers (default: $VISIONPIPE_SWEEP_STORAGE, else data/sweeps/optuna.db).")
@click.option("--name", default=None,
              help="Study name: workers started with the same name and storage join one study "
                   "(also the MLflow parent run's name; default sweep-<task>-<time>).")
@click.option("--heartbeat", type=click.IntRange(min=1), default=60, show_default=True,
              help="Seconds between a running trial's heartbeats; a trial silent for 3 of them is failed and queued again.")
@click.option("--env", default=None, help="Kedro configuration environment.")
@click.option("--jobs", hidden=True, default=None)
@click.option("--gpus", hidden=True, default=None)
@_user_errors
def sweep(task, trials, searches, grids, sweep_file, fixed, prune, storage, name, heartbeat, env, jobs, gpus) -> None:
    """Run (or join) an Optuna study of TASK: one nested MLflow run per trial; only the best is gated.

    More workers join with the same --name and --storage, anywhere (one per GPU: CUDA_VISIBLE_DEVICES=i)."""
    from visionpipe import console
    from visionpipe.experiments.sweep import parse_grid, points_from_file, run_sweep, split_params

    console.set_verbosity(console.verbose_requested())  # quiet as `visionpipe run`; VISIONPIPE_VERBOSE=1 for all
    if jobs is not None or gpus is not None:
        raise click.UsageError("--jobs/--gpus are gone: start one worker per GPU with the same --name, e.g. "
                               "CUDA_VISIBLE_DEVICES=1 visionpipe sweep ... --name NAME &")
    points = points_from_file(sweep_file) if sweep_file else []
    if grids:
        points = parse_grid(grids) if not points else [{**a, **b} for a in points for b in parse_grid(grids)]
    summary = run_sweep(Path.cwd(), task, trials=trials, search=list(searches), points=points or None,
                        fixed=split_params(fixed), prune=prune, storage=storage, name=name, env=env, heartbeat_s=heartbeat)
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


@click.group("tracking-server")
def tracking_server() -> None:
    """A team's MLflow server on PostgreSQL (this machine's server binaries), loopback only."""


@tracking_server.command("start")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Server folder: database, password, artifacts, logs (default: data/server/ of the project).")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="MLflow server worker processes.")
@_user_errors
def tracking_server_start(root: Path | None, workers: int) -> None:
    """Start PostgreSQL and `mlflow server --serve-artifacts` in the background (a second start reuses the data);
    the last two lines are the settings clients export."""
    from visionpipe.experiments.server import SERVER_DIR, start
    from visionpipe.project import project_root

    root = root or project_root() / SERVER_DIR
    server = start(root, workers=workers)
    click.echo(f"MLflow tracking server on PostgreSQL, data in {root} (password: {root / 'password'}, logs: "
               f"{root / 'postgres.log'}, {root / 'mlflow.log'}); stop both with `make tracking-server-stop`.")
    click.echo("Export these (here, or on a machine that reaches this one, e.g. through `ssh -L`):")
    click.echo(f"MLFLOW_TRACKING_URI={server.tracking_uri}")
    click.echo(f"VISIONPIPE_SWEEP_STORAGE={server.sweep_storage}")


@tracking_server.command("stop")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Server folder (default: data/server/ of the project).")
@_user_errors
def tracking_server_stop(root: Path | None) -> None:
    """Stop the MLflow server and PostgreSQL (their data stays for the next start)."""
    from visionpipe.experiments.server import SERVER_DIR, stop
    from visionpipe.project import project_root

    root = root or project_root() / SERVER_DIR
    stopped = stop(root)
    click.echo(f"stopped: {', '.join(stopped)}" if stopped else f"nothing was running from {root}")


COMMANDS = (dvc_sync, sweep, reproduce, tracking_server)


def short_view_drop() -> str:
    """``dvc exp show --drop`` regex of the short experiments table: every column goes but the experiment, its
    date, each task's headline metric (``test/`` too) and the parameters (``--only-changed`` keeps the changed ones)."""
    heads = "|".join(sorted({get_task_class(t).primary_metric for t in TASKS}))
    return rf"^(?!(Experiment|Created|(.*metrics\.json:)?(test/)?({heads})|({'|'.join(TASKS)})\..*)$)"


@click.command("exps", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("dvc_args", nargs=-1, type=click.UNPROCESSED)
def exps(dvc_args: tuple[str, ...]) -> None:
    """The experiments at a glance: `dvc exp show` with only the parameters that differ and each task's headline
    metric (fits 160 columns). Extra arguments go to `dvc exp show` (e.g. -A, --md, --sort-by top1)."""
    dvc = Path(sys.executable).with_name("dvc")
    cmd = [str(dvc) if dvc.exists() else "dvc", "exp", "show", "--no-pager", "--only-changed",
           "--drop", short_view_drop(), *dvc_args]
    raise SystemExit(subprocess.run(cmd).returncode)


@click.group("data")
def data() -> None:
    """Your own data under DVC."""


@data.command("add")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", default=None, help="Folder name under data/01_raw (default: PATH's name).")
@click.option("--project", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Project root (a git + DVC clone).")
@_user_errors
def data_add(path: Path, name: str | None, project: Path) -> None:
    """Copy PATH to data/01_raw/<name> and `dvc add` it (a folder already in data/01_raw is added in place)."""
    from visionpipe.experiments.own_data import add_data

    folder = add_data(project, path, name)
    click.echo(f"{folder} is DVC-tracked: {folder}.dvc (staged in git). Next:\n"
               f"  git commit -m 'data: {folder.name}' {folder}.dvc {folder.parent}/.gitignore\n"
               f"  kedro run --pipelines=<task> --params=<task>.data.root={folder}")
