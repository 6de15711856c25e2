"""ONNX export of trained models, checked against torch with onnxruntime when it is installed."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from visionpipe.inference import Predictor, load_bundle

logger = logging.getLogger(__name__)


def export_onnx(model_dir: str | Path, output: str | Path, check: bool = True) -> Path:
    """Export a trained model folder to ONNX.

    classification/segmentation: input ``images`` (N, 3, S, S), normalised as spec.json says;
    output ``logits``. detection: input ``image`` (3, S, S) scaled to [0, 1] (the model normalises);
    outputs ``boxes`` (x0, y0, x1, y1 in input pixels), ``scores``, ``labels`` (class index + 1), after NMS.
    """
    bundle = load_bundle(model_dir)
    task = bundle["spec"]["task"]
    model = Predictor(bundle).model.eval()
    size = bundle["spec"]["image_size"]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if task == "detection":
            example = torch.rand(3, size, size)
            torch.onnx.export(model, ([example],), str(output), input_names=["image"], output_names=["boxes", "scores", "labels"],
                              opset_version=17, dynamo=False)
        else:
            example = torch.randn(2, 3, size, size)
            torch.onnx.export(model, (example,), str(output), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    if check:
        _check(output, model, task, size)
    return output


def _check(output: Path, model: torch.nn.Module, task: str, size: int) -> None:
    try:
        import onnxruntime as ort
    except ImportError:
        logger.info("onnxruntime not installed: %s exported without a numerical check", output)
        return
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        if task == "detection":
            image = torch.rand(3, size, size)
            got = session.run(None, {"image": image.numpy()})[0]
            want = model([image])[0]["boxes"].numpy()
        else:
            images = torch.randn(3, 3, size, size)
            got = session.run(None, {"images": images.numpy()})[0]
            want = model(images).numpy()
    if got.shape != want.shape or not np.allclose(got, want, atol=1e-3, rtol=1e-3):
        diff = np.abs(got - want).max() if got.shape == want.shape else f"shapes {got.shape} vs {want.shape}"
        raise RuntimeError(f"{output}: onnxruntime output differs from torch ({diff})")
