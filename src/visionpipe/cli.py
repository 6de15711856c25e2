"""Command line: ``kedro run`` runs each task in its own session (one MLflow run per task), and the
``visionpipe`` script adds ``predict`` and ``export-onnx``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click
from kedro.framework.cli.project import run as kedro_run

from visionpipe import TASKS
from visionpipe.errors import VisionpipeError

logger = logging.getLogger(__name__)


def _expand(pipeline: str | None, pipelines: list[str] | None) -> list[str]:
    names = [pipeline] if pipeline else (list(pipelines) if pipelines else ["__default__"])
    out: list[str] = []
    for name in names:
        out += list(TASKS) if name == "__default__" else [name]
    return out


def _scopes(names: list[str], namespaces: list[str]) -> list[tuple[str, list[str]]]:
    """(pipeline, namespaces) per session: a stage pipeline runs once per task unless namespaces are given."""
    from visionpipe.pipeline_registry import STAGES

    out = []
    for name in names:
        if name in STAGES and not namespaces:
            out += [(name, [task]) for task in TASKS]
        else:
            out.append((name, list(namespaces)))
    return out


def _run(**kwargs):
    """Run each task in its own Kedro session, so each gets its own MLflow run."""
    names = _expand(kwargs.pop("pipeline"), kwargs.pop("pipelines"))
    scopes = _scopes(names, kwargs.pop("namespaces") or [])
    results = {}
    for name, namespaces in scopes:
        label = f"{name} ({', '.join(namespaces)})" if namespaces else name
        if len(scopes) > 1:
            click.secho(f"=== kedro run --pipelines={label}", fg="cyan")
        try:
            results[label] = kedro_run.callback(pipeline=None, pipelines=[name], namespaces=namespaces, **kwargs)
        except VisionpipeError as err:
            # a user-facing error (bad data, bad parameters): its message says what to do, no traceback
            raise click.ClickException(f"{name}: {type(err).__name__}: {err}") from None
    return results


run = click.Command(
    name="run",
    params=kedro_run.params,
    callback=_run,
    help=f"Run the pipeline. Without --pipelines, every task ({', '.join(TASKS)}) runs in "
         "turn, each in its own session and MLflow run.",
)


@click.group(name="visionpipe")
def cli() -> None:
    """visionpipe commands."""


cli.add_command(run)


@cli.command()
@click.option("--task", type=click.Choice(TASKS), required=True)
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of images (searched recursively).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="JSON file to write.")
@click.option("--model-uri", default=None, help="Default: models:/visionpipe-<task>@champion.")
@click.option("--tracking-uri", default=None, help="Default: MLFLOW_TRACKING_URI or ./mlflow.db.")
def predict(task: str, images_dir: Path, output: Path, model_uri: str | None, tracking_uri: str | None) -> None:
    """Run a registered model (the champion by default) on a folder of images."""
    import mlflow
    import pandas as pd

    from visionpipe.data.images import is_image_file

    from visionpipe.settings import tracking_uri as default_tracking_uri

    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    model_uri = model_uri or f"models:/visionpipe-{task}@champion"
    files = sorted(p for p in images_dir.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise click.ClickException(f"{images_dir}: no images found")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except Exception as err:  # MlflowException for a missing model or alias
        raise click.ClickException(f"cannot load {model_uri}: {err}. Run `kedro run --pipelines={task}` first") from None
    frame = model.predict(pd.DataFrame({"image": [str(f) for f in files]}))
    records = frame.to_dict(orient="records")
    for f, rec in zip(files, records):
        rec["image"] = str(f.relative_to(images_dir))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps(records, indent=2, default=str))
    os.replace(tmp, output)
    click.echo(f"{len(records)} predictions from {model_uri} written to {output}")


def load_task_params(task: str, env: str | None = None) -> dict:
    """The task's parameter block as Kedro's config loader resolves it (base + local)."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(Path.cwd())
    with KedroSession.create(project_path=Path.cwd(), env=env) as session:
        return session.load_context().params[task]


@cli.command("builtin-data")
@click.argument("task", type=click.Choice(TASKS))
@click.option("--env", default=None, help="Kedro configuration environment.")
def builtin_data(task: str, env: str | None) -> None:
    """Generate the built-in dataset of TASK (what `dvc repro` tracks as data/01_raw/builtin/<task>)."""
    from visionpipe.config import parse_task_config
    from visionpipe.data.builtin import ensure_builtin_dataset

    cfg = parse_task_config(task, load_task_params(task, env)).data.builtin
    root = ensure_builtin_dataset(Path(cfg.path) / task, task, cfg.model_dump(exclude={"path"}))
    click.echo(f"built-in {task} data in {root}")


@cli.command("export-onnx")
@click.option("--model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A trained model folder, e.g. data/06_models/classification/model.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def export_onnx_command(model_dir: Path, output: Path) -> None:
    """Export a trained model to ONNX (checked against torch with onnxruntime when installed)."""
    from visionpipe.export import export_onnx

    export_onnx(model_dir, output)
    click.echo(f"ONNX model written to {output}")


def main() -> None:
    """Entry point of the ``visionpipe`` script (``kedro`` commands stay available through ``kedro``)."""
    from kedro.framework.startup import bootstrap_project

    if (Path.cwd() / "pyproject.toml").is_file() and "run" in sys.argv[1:2]:
        bootstrap_project(Path.cwd())
    cli()
