"""ONNX export of trained models, checked against torch with onnxruntime when it is installed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from visionpipe.serving.bundle import load_bundle
from visionpipe.serving.predictor import Predictor

logger = logging.getLogger(__name__)


def export_onnx(model_dir: str | Path, output: str | Path, check: bool = True) -> Path:
    """Export a trained model folder to ONNX (the task decides inputs and outputs: ``Task.export_onnx``).

    The check runs the same images through the torch model and the ONNX model with the task's own
    pre- and post-processing (``Predictor``) and compares the results.
    """
    bundle = load_bundle(model_dir)
    predictor = Predictor(bundle)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    predictor.task.export_onnx(predictor.model.eval(), output)
    if check:
        _check(output, bundle, predictor)
    return output


def _check(output: Path, bundle: dict, predictor: Predictor) -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
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
