"""``visionpipe shard``: turn a dataset in any supported format into WebDataset-style tar shards."""

from __future__ import annotations

from pathlib import Path

import click

from visionpipe.tasks import TASKS, get_task_class
from visionpipe.errors import VisionpipeError
from visionpipe.project import load_task_params


@click.command("shard")
@click.option("--task", type=click.Choice(TASKS), required=True)
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Data root in the task's data.format (imagefolder, coco, voc, yolo, masks).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Folder for the shards and manifest.json.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Samples per shard.")
@click.option("--format", "fmt", default=None, help="Source format; default: <task>.data.format from the parameters.")
@click.option("--validation", type=click.Choice(["strict", "skip"]), default=None,
              help="strict: stop on any bad file; skip: leave bad files out. Default: <task>.data.validation.")
@click.option("--overwrite", is_flag=True, help="Replace shards already in --out.")
@click.option("--env", default=None, help="Kedro configuration environment the parameters come from.")
def shard(task: str, src: Path, out: Path, shard_size: int, fmt: str | None, validation: str | None, overwrite: bool,
          env: str | None) -> None:
    """Read, validate and write SRC as tar shards; train on them with <task>.data.format: shards, data.root: OUT."""
    from visionpipe.stages import shard_dataset  # torch and the task modules load only when the command runs

    task_cls = get_task_class(task)
    try:
        cfg = task_cls.parse_config(load_task_params(task, env))
        updates = {k: v for k, v in (("format", fmt), ("validation", validation)) if v}
        if updates:
            cfg = task_cls.parse_config(cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)}).model_dump())
        manifest = shard_dataset(task_cls, cfg, src, out, shard_size, overwrite)
    except VisionpipeError as err:  # bad data or parameters: one line that says what to do
        raise click.ClickException(f"{type(err).__name__}: {err}") from None
    counts = ", ".join(f"{split} {s['count']} samples in {len(s['shards'])} shards" for split, s in manifest["splits"].items())
    click.echo(f"{task} data from {src} written to {out}: {counts}. Train on it with {task}.data.format=shards, {task}.data.root={out}")
