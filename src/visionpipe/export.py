"""ONNX export of trained models, checked with onnxruntime when it is installed."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from visionpipe.errors import ConfigError
from visionpipe.inference import Predictor, load_bundle

logger = logging.getLogger(__name__)


def export_onnx(model_dir: str | Path, output: str | Path, check: bool = True) -> Path:
    """Export the network (input: normalised NCHW float batch) and compare onnxruntime with torch."""
    bundle = load_bundle(model_dir)
    task = bundle["spec"]["task"]
    if task == "detection":
        raise ConfigError("ONNX export covers classification and segmentation; detection models are served through the MLflow pyfunc")
    predictor = Predictor(bundle)
    size = bundle["spec"]["image_size"]
    example = torch.randn(2, 3, size, size)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(predictor.model, (example,), str(output), input_names=["images"], output_names=["logits"],
                      dynamo=False, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17)
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            logger.info("onnxruntime not installed: %s exported without a numerical check", output)
            return output
        session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": example.numpy()})[0]
        with torch.inference_mode():
            want = predictor.model(example).numpy()
        if not np.allclose(got, want, atol=1e-3, rtol=1e-3):
            raise RuntimeError(f"{output}: onnxruntime output differs from torch (max abs diff {np.abs(got - want).max():.3g})")
    return output
