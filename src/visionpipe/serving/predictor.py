"""Run a trained model on raw images: the preprocessing and post-processing the pyfunc model ships."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from visionpipe.data.images import load_rgb, to_rgb
from visionpipe.serving.bundle import load_bundle
from visionpipe.tasks import get_task


def decode_image(item: Any) -> np.ndarray:
    """A path, base64-encoded image bytes, raw bytes, PIL image or HxWx3 array, as an RGB uint8 array."""
    if isinstance(item, np.ndarray):
        array = item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
        return np.ascontiguousarray(array[..., :3].astype(np.uint8))
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (bytes, bytearray)):
        return to_rgb(Image.open(io.BytesIO(item)))
    if isinstance(item, (str, Path)):
        text = str(item)
        try:
            is_file = len(text) < 4096 and Path(text).is_file()
        except OSError:  # a long base64 string is no file name
            is_file = False
        if is_file:
            return load_rgb(text)
        try:
            return to_rgb(Image.open(io.BytesIO(base64.b64decode(text, validate=True))))
        except Exception:
            raise ValueError(f"{text[:80]!r} is neither an existing image file nor base64-encoded image bytes") from None
    raise TypeError(f"Cannot read an image from {type(item).__name__}")


def encode_png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Predictor:
    """A trained model with its preprocessing; ``predict`` maps raw images to task outputs.

    Preprocessing, the forward and the post-processing are the task's own (``Task.preprocess``,
    ``forward``, ``postprocess``, ``format_result``): the same path evaluation uses. ``onnx`` runs an
    exported model (``visionpipe export-onnx``) with onnxruntime instead of the torch model.
    """

    def __init__(self, bundle: dict[str, Any], device: str | torch.device = "cpu", batch_size: int = 16, onnx: str | Path | None = None):
        self.spec = bundle["spec"]
        self.task = get_task(self.spec)
        self.device = torch.device(device)
        self.model = self.task.build_model()
        self.model.load_state_dict(bundle["state_dict"])
        self.task.configure(self.model, self.spec["evaluation"])
        self.model.to(self.device).eval()
        self.session = None
        if onnx is not None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        mean, std = self.task.input_normalization(self.spec["mean"], self.spec["std"])
        self.transform = self.task.compose([], self.task.eval_image_size(), mean, std, train=False)
        self.batch_size = batch_size

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs) -> "Predictor":
        return cls(load_bundle(folder), **kwargs)

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """One decoded image to the network's input."""
        return self.task.preprocess(pixels, self.transform)

    @torch.inference_mode()
    def predict_arrays(self, arrays: list[np.ndarray]) -> list[dict[str, Any]]:
        """Postprocessed results (the task's tensors) for decoded HxWx3 images."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start:start + self.batch_size]
            batch = self.task.stack([self.preprocess(a) for a in chunk])
            if self.session is not None:
                outputs = self.task.onnx_forward(self.session, batch)
            else:
                device_batch = [t.to(self.device) for t in batch] if isinstance(batch, list) else batch.to(self.device)
                outputs = self.task.forward(self.model, device_batch)
            out.extend(self.task.postprocess(outputs, [a.shape[:2] for a in chunk]))
        return out

    def predict(self, images: Iterable[Any], **params) -> list[dict[str, Any]]:
        """One result per image (paths, bytes, base64, PIL or arrays), as the task formats it. ``params``: the
        task's inference parameters (``Task.inference_params``, e.g. detection's score_threshold, max_detections)."""
        rows = [self.task.format_result(r) for r in self.predict_arrays([decode_image(i) for i in images])]
        return [self.task.apply_params(row, params) for row in rows] if params else rows
