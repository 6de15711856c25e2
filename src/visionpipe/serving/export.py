"""ONNX export of trained models, checked against torch with onnxruntime when it is installed."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipe.serving.bundle import load_bundle
from visionpipe.serving.predictor import Predictor, has_onnxruntime

logger = logging.getLogger(__name__)


def export_onnx(model_dir: str | Path, output: str | Path, check: bool = True) -> Path:
    """Export a trained model folder to ONNX (the task decides inputs and outputs: ``Task.export_onnx``).

    The check runs the same images through the torch model and the ONNX model with the task's own
    pre- and post-processing (``Predictor``) and compares the results.
    """
    return export_bundle(load_bundle(model_dir), output, check)


def export_bundle(bundle: dict[str, Any], output: str | Path, check: bool = True, predictor: Predictor | None = None) -> Path:
    """Export a model bundle (spec + state dict) to ``output``; see :func:`export_onnx`. The file appears
    complete or not at all (written beside, then renamed). ``predictor``: the bundle's torch Predictor when the
    caller has one already (registration), so the model is not built twice."""
    predictor = predictor if predictor is not None and predictor.model is not None else Predictor(bundle)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    try:
        with warnings.catch_warnings():
            # the tracer's notes on data-dependent shapes and torchvision's tensor copies: the graph handles them
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            predictor.task.export_onnx(predictor.model.eval(), partial)
        if check:
            _check(partial, bundle, predictor)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def _check(output: Path, bundle: dict, predictor: Predictor) -> None:
    if not has_onnxruntime():
        logger.info("onnxruntime not installed: %s exported without a numerical check", output)
        return
    rng = np.random.default_rng(0)
    size = bundle["spec"]["image_size"]
    # non-square, both orientations, shorter side at image_size: a detector's own resize then has scale 1. At
    # other scales onnxruntime's Resize samples at the requested scale where torch samples at the recomputed
    # one (output size / input size): scores differ by ~1e-3, enough to reorder near-tied detections
    shapes = [(size, size), (size, size + 8), (size + 16, size)]
    images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]
    # one image per call, as the ONNX model runs: a detector pads a batch to its largest image, which moves
    # the scores of the others by a little
    want = [predictor.predict_arrays([image])[0] for image in images]
    got = Predictor(bundle, onnx=output).predict_arrays(images)
    for w, g in zip(want, got):
        problem = predictor.task.compare_results(w, g)
        if problem:
            raise RuntimeError(f"{output}: onnxruntime output differs from torch: {problem}")
