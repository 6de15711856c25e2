"""Command line: ``kedro run`` runs each task in its own session (one MLflow run per task), and the
``visionpipe`` script adds ``predict`` (torch or ONNX Runtime engine), ``serve`` (MLflow's scoring server) and ``export-onnx``."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click

from visionpipe import console  # the package's import set the quiet defaults (visionpipe/console.py)

# Importing Kedro's CLI configures logging and says so at INFO; outside a project (no conf/logging.yml),
# Kedro's default config would print that line even for `visionpipe --help`.
logging.disable(logging.INFO)
try:
    from kedro.framework.cli.project import run as kedro_run
finally:
    logging.disable(logging.NOTSET)
from kedro.io import DatasetError

from visionpipe.errors import VisionpipeError
from visionpipe.project import find_project_root, load_task_params
from visionpipe.tasks import TASKS, get_task_class
from visionpipe.shard_command import shard

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


def _task_of(name: str, namespaces: list[str]) -> str | None:
    if name in TASKS:
        return name
    return namespaces[0] if len(namespaces) == 1 else None


def _summary_client():
    """An MLflow client on the project's store, or None when there is no store (the summary never creates one)."""
    import mlflow

    from visionpipe.settings import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    return mlflow.MlflowClient(tracking_uri=uri)


def print_summary(name: str, namespaces: list[str], started: float) -> None:
    """The end-of-run table of the task this session ran (nothing for a pipeline spanning several tasks)."""
    from visionpipe.tracking.summary import collect, terminal_lines

    task = _task_of(name, namespaces)
    if task is None or int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 speaks for all
        return
    try:
        lines = terminal_lines(collect(task, name, Path.cwd(), since=started, client=_summary_client()))
    except Exception as err:  # the run succeeded; a summary problem must not turn it into a failure
        logger.warning("No end-of-run summary for %s: %s", task, err)
        return
    click.secho(lines[0], bold=True)
    for line in lines[1:]:
        click.echo(line)


def _run(**kwargs):
    """Run each task in its own Kedro session, so each gets its own MLflow run; print a summary after each."""
    console.set_verbosity(console.verbose_requested(kwargs.pop("verbose", False)))
    names = _expand(kwargs.pop("pipeline"), kwargs.pop("pipelines"))
    scopes = _scopes(names, kwargs.pop("namespaces") or [])
    results = {}
    for name, namespaces in scopes:
        label = f"{name} ({', '.join(namespaces)})" if namespaces else name
        if len(scopes) > 1:
            click.secho(f"=== kedro run --pipelines={label}", fg="cyan")
        started = time.time()
        try:
            results[label] = kedro_run.callback(pipeline=None, pipelines=[name], namespaces=namespaces, **kwargs)
        except VisionpipeError as err:
            # a user-facing error (bad data, bad parameters): its message says what to do, no traceback
            raise click.ClickException(f"{name}: {type(err).__name__}: {err}") from None
        except DatasetError as err:
            # Kedro wraps a dataset's own error; ours (a damaged model folder...) say which file and what to do
            # (``raise ... from None`` in our datasets: a missing input, "run the pipeline that produces it first").
            cause = err.__cause__
            if isinstance(cause, VisionpipeError):
                raise click.ClickException(f"{name}: {type(cause).__name__}: {cause}") from None
            if err.__suppress_context__ and cause is None:
                raise click.ClickException(f"{name}: DatasetError: {err}") from None
            raise
        print_summary(name, namespaces, started)
    return results


run = click.Command(
    name="run",
    params=[*kedro_run.params,
            click.Option(["--verbose", "-v"], is_flag=True, default=False,
                         help=f"Show Kedro's node and catalog lines, kedro-mlflow's and MLflow's (or set {console.VERBOSE_ENV}=1).")],
    callback=_run,
    help=f"Run the pipeline. Without --pipelines, every task ({', '.join(TASKS)}) runs in "
         "turn, each in its own session and MLflow run, and ends with a summary of each.",
)


@click.group(name="visionpipe")
def cli() -> None:
    """visionpipe commands."""


cli.add_command(run)
cli.add_command(shard)


def resolve_store(tracking_uri: str | None, cwd: Path | None = None) -> str:
    """The tracking store ``predict`` reads: ``--tracking-uri``, MLFLOW_TRACKING_URI, or the ``mlflow.db`` of
    the project at or above ``cwd``. A missing SQLite store is an error, never created."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        cwd = Path(cwd or Path.cwd())
        project = find_project_root(cwd)
        if project is None:
            raise click.ClickException(
                f"no visionpipe project at or above {cwd} (a folder with pyproject.toml and conf/base), so no MLflow store "
                "to read. Run from the project, or pass --tracking-uri sqlite:////path/to/project/mlflow.db")
        uri = f"sqlite:///{project / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise click.ClickException(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: train a model first (`kedro run`), or point "
            "--tracking-uri at the store that holds it")
    return uri


MODEL_URI_HELP = "Default: the champion of the registered TASK model a run updated last (the data you trained on latest)."
PREDICT_MODEL_HELP = (MODEL_URI_HELP + " A local folder (a trained model folder such as data/06_models/TASK/model, or a downloaded registered "
                  "model) is read in place: no MLflow store, no MLflow import.")


def _local_model(model_uri: str | None) -> Path | None:
    """``model_uri`` as a local folder (a path or ``file://`` URI to an existing directory), else None."""
    if not model_uri:
        return None
    path = Path(model_uri.removeprefix("file://"))
    return path if path.is_dir() else None


def _model_uri(task: str, model_uri: str | None, tracking_uri: str | None) -> str:
    """``model_uri``, or the champion of the data trained on last (``tracking.lookup.default_model_uri``); sets the store."""
    import mlflow

    uri = resolve_store(tracking_uri)
    mlflow.set_tracking_uri(uri)
    if model_uri is None:
        from visionpipe.tracking.lookup import default_model_uri  # MLflow's client only, not the registration machinery

        model_uri = default_model_uri(task, mlflow.MlflowClient(tracking_uri=uri))
        click.echo(f"model: {model_uri} (the champion of the {task} data trained on last; --model-uri to choose)", err=True)
    return model_uri


def _load_predictor(task: str, model_uri: str, engine: str, workdir: Path, local: Path | None = None):
    """The model's predictor on ``engine``: the local folder ``local`` read in place, else the registered model's
    bundle downloaded into ``workdir`` (only this path imports MLflow)."""
    from visionpipe.serving.bundle import SPEC_FILE
    from visionpipe.serving.load import load_predictor  # no MLflow, no pandas: a model folder never imports them

    if local is None:
        import mlflow

        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(workdir)))
        except Exception as err:  # MlflowException for a missing model or alias
            raise click.ClickException(f"cannot load {model_uri} from {mlflow.get_tracking_uri()}: {str(err).splitlines()[0]}. "
                                       f"Run `kedro run --pipelines={task}` first, or pass --model-uri/--tracking-uri") from None
    specs = sorted(local.rglob(SPEC_FILE))
    if not specs:
        raise click.ClickException(f"{model_uri} is not a visionpipe model (no {SPEC_FILE} inside): pass the model a "
                                   "visionpipe run registered, or a trained model folder")
    try:
        return load_predictor(specs[0].parent, {"engine": engine})
    except VisionpipeError as err:
        raise click.ClickException(str(err)) from None


ENGINE_HELP = ("auto: ONNX Runtime on CPU when the model carries model.onnx (models registered by visionpipe do), torch on a "
               "GPU; torch; onnx (a model logged without one is exported first).")


@cli.command()
@click.option("--task", type=click.Choice(TASKS), required=True)
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder of images (searched recursively).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="JSON Lines file to write: one line per image, written as it goes.")
@click.option("--model-uri", default=None, help=PREDICT_MODEL_HELP)
@click.option("--tracking-uri", default=None,
              help="Default: MLFLOW_TRACKING_URI, else the mlflow.db of the project at or above the current folder.")
@click.option("--engine", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True, help=ENGINE_HELP)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1), help="Images decoded and run at once.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", show_default=True,
              help="skip: list an unreadable image in the output with its error and go on; fail: stop at it.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def predict(task: str, images_dir: Path, output: Path, model_uri: str | None, tracking_uri: str | None, engine: str,
            batch_size: int, on_error: str, progress: bool) -> None:
    """Run a registered model (the champion by default) on a folder of images, batch by batch."""
    import tempfile

    from visionpipe.serving.batch import find_images, predict_folder

    local = _local_model(model_uri)
    if local is None:
        model_uri = _model_uri(task, model_uri, tracking_uri)
    files = find_images(images_dir)
    if not files:
        raise click.ClickException(f"{images_dir}: no images found")
    with tempfile.TemporaryDirectory(prefix="visionpipe-predict-") as tmp:
        predictor = _load_predictor(task, model_uri, engine, Path(tmp), local)
        predictor.batch_size = batch_size
        try:
            summary = predict_folder(predictor, files, images_dir, output, batch_size, on_error, progress)
        except VisionpipeError as err:
            raise click.ClickException(str(err)) from None
    click.echo(f"{summary.written} predictions from {model_uri} ({predictor.engine} engine) written to {output}")
    if summary.failed:
        click.echo(f"{len(summary.failed)} file(s) could not be read (listed in {output} with their error):", err=True)
        for item in summary.failed[:20]:
            click.echo(f"  {item['image']}: {item['error']}", err=True)


@cli.command()
@click.option("--task", type=click.Choice(TASKS), required=True)
@click.option("--model-uri", default=None, help=MODEL_URI_HELP)
@click.option("--tracking-uri", default=None,
              help="Default: MLFLOW_TRACKING_URI, else the mlflow.db of the project at or above the current folder.")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to listen on every interface.")
@click.option("--port", default=5001, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Server processes.")
@click.option("--engine", type=click.Choice(["auto", "torch", "onnx"]), default="auto", show_default=True, help=ENGINE_HELP)
def serve(task: str, model_uri: str | None, tracking_uri: str | None, host: str, port: int, workers: int, engine: str) -> None:
    """Serve a registered model over HTTP: `mlflow models serve --env-manager local` in this environment
    (POST base64 images to http://HOST:PORT/invocations; README, "Serving")."""
    import json
    import shutil

    import mlflow

    model_uri = _model_uri(task, model_uri, tracking_uri)
    try:
        mlflow.models.get_model_info(model_uri)  # reads only its MLmodel file: a missing model is one line, not a traceback
    except Exception as err:
        raise click.ClickException(f"cannot load {model_uri} from {mlflow.get_tracking_uri()}: {str(err).splitlines()[0]}. "
                                   f"Run `kedro run --pipelines={task}` first, or pass --model-uri/--tracking-uri") from None
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
           # MLflow starts the scoring server as `uvicorn ...`: this environment's, also when it is not activated
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if engine != "auto":
        env["SERVING_MODEL_CONFIG"] = json.dumps({"engine": engine})  # MLflow's scoring server passes it as model_config
    mlflow_cli = shutil.which("mlflow", path=bin_dir) or shutil.which("mlflow", path=env["PATH"])
    if mlflow_cli is None:
        raise click.ClickException(f"no `mlflow` program in {bin_dir} or on PATH: reinstall the environment (make install)")
    args = [mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", host, "--port", str(port),
            "--workers", str(workers)]
    click.echo(f"serving {model_uri} on http://{host}:{port}/invocations (Ctrl+C stops)", err=True)
    sys.stderr.flush()
    os.execve(mlflow_cli, args, env)


@cli.command("builtin-data")
@click.argument("task", type=click.Choice(TASKS))
@click.option("--env", default=None, help="Kedro configuration environment.")
def builtin_data(task: str, env: str | None) -> None:
    """Generate the built-in dataset of TASK (what `dvc repro` tracks as data/01_raw/builtin/<task>)."""
    from visionpipe.data.builtin import ensure_builtin_dataset

    task_cls = get_task_class(task)
    cfg = task_cls.parse_config(load_task_params(task, env)).data.builtin
    root = ensure_builtin_dataset(Path(cfg.path) / task, task_cls, cfg.model_dump(exclude={"path"}))
    click.echo(f"built-in {task} data in {root}")


@cli.command("export-onnx")
@click.option("--model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="A trained model folder, e.g. data/06_models/classification/model.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def export_onnx_command(model_dir: Path, output: Path) -> None:
    """Export a trained model to ONNX (checked against torch with onnxruntime when installed)."""
    from visionpipe.serving.export import export_onnx

    export_onnx(model_dir, output)
    click.echo(f"ONNX model written to {output}")


from visionpipe.experiments.cli import data, dvc_sync, exps, reproduce, sweep, tracking_server  # noqa: E402 (the experiments commands)

cli.add_command(dvc_sync)
cli.add_command(exps)
cli.add_command(data)
cli.add_command(sweep)
cli.add_command(reproduce)
cli.add_command(tracking_server)


def main() -> None:
    """Entry point of the ``visionpipe`` script (``kedro`` commands stay available through ``kedro``)."""
    from kedro.framework.startup import bootstrap_project

    if (Path.cwd() / "pyproject.toml").is_file() and "run" in sys.argv[1:2]:
        bootstrap_project(Path.cwd())
    cli()
