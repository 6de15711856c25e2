"""Predictions over a folder of any size: decode, run and write one batch at a time (memory stays flat),
bad files listed with their error instead of aborting the folder, JSON Lines written as it goes."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from tqdm.auto import tqdm

from visionpipe import console
from visionpipe.data.images import is_image_file, load_rgb
from visionpipe.errors import DataError
from visionpipe.files import atomic_write
from visionpipe.serving.load import prediction_rows

logger = logging.getLogger(__name__)


@dataclass
class PredictSummary:
    written: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    output: Path | None = None


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def find_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def predict_folder(predictor, files: list[Path], root: Path, output: Path, batch_size: int = 16,
                   on_error: Literal["skip", "fail"] = "skip", progress: bool = True) -> PredictSummary:
    """Write one JSON line per image to ``output``: the prediction, or ``{"image", "error"}`` for a file that
    cannot be read (``on_error: skip``). ``fail`` stops at the first bad file with a DataError naming it.

    Lines go to a temporary file beside ``output`` as they are made; the file takes its final name once complete.
    """
    summary = PredictSummary(output=output)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not (progress and console.interactive()), dynamic_ncols=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            for chunk in batches(files, batch_size):
                arrays, names = [], []
                for path in chunk:
                    name = path.relative_to(root).as_posix()
                    try:
                        arrays.append(load_rgb(path))
                        names.append(name)
                    except (DataError, OSError, ValueError) as err:
                        problem = err.problem if isinstance(err, DataError) else str(err)
                        if on_error == "fail":
                            raise DataError(path, f"cannot be read ({problem})",
                                            "Remove or fix it, or pass --on-error skip to list bad files and go on") from None
                        summary.failed.append({"image": name, "error": problem})
                        fh.write(json.dumps({"image": name, "error": problem}) + "\n")
                if arrays:
                    for name, record in zip(names, prediction_rows(predictor, arrays)):
                        fh.write(json.dumps({"image": name, **record}, default=str) + "\n")
                    summary.written += len(arrays)
                fh.flush()
                bar.update(len(chunk))
                del arrays  # the decoded batch is the only images held at once

    try:
        atomic_write(output, write)  # lines are streamed to a temporary file; the output appears whole or not at all
    finally:
        bar.close()
    return summary
