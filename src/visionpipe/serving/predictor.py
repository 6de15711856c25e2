"""Run a trained model on raw images: the preprocessing and post-processing the pyfunc model ships."""

from __future__ import annotations

import base64
import importlib.util
import io
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from visionpipe.data.images import load_rgb, to_rgb
from visionpipe.engine.runtime import cpu_threads
from visionpipe.errors import DataError
from visionpipe.serving.bundle import ONNX_FILE, load_bundle
from visionpipe.tasks import get_task

logger = logging.getLogger(__name__)

ENGINES = ("auto", "torch", "onnx")
NOT_A_PATH_HINT = ("this model reads base64-encoded image bytes only, not files on the server "
                   "(a model logged with registry.serve_file_paths: true also reads server-local paths)")


def decode_image(item: Any, allow_paths: bool = True) -> np.ndarray:
    """A path, base64-encoded image bytes, raw bytes, PIL image or HxWx3 array, as an RGB uint8 array.

    ``allow_paths=False`` (a served model): a string is only ever base64 image bytes; a file name is refused
    with the same message whether or not the file exists, so a client cannot probe the server's files.
    """
    if isinstance(item, np.ndarray):
        array = item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
        return np.ascontiguousarray(array[..., :3].astype(np.uint8))
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, (bytes, bytearray)):
        return to_rgb(Image.open(io.BytesIO(item)))
    if isinstance(item, Path) and not allow_paths:
        raise ValueError(f"{str(item)[:80]!r}: {NOT_A_PATH_HINT}")
    if isinstance(item, (str, Path)):
        text = str(item)
        if allow_paths:
            try:
                is_file = len(text) < 4096 and Path(text).is_file()
            except OSError:  # a long base64 string is no file name
                is_file = False
            if is_file:
                return load_rgb(text)
        try:
            return to_rgb(Image.open(io.BytesIO(base64.b64decode(text, validate=True))))
        except Exception:
            if not allow_paths:
                raise ValueError(f"{text[:80]!r} is not base64-encoded image bytes: {NOT_A_PATH_HINT}") from None
            raise ValueError(f"{text[:80]!r} is neither an existing image file nor base64-encoded image bytes") from None
    raise TypeError(f"Cannot read an image from {type(item).__name__}")


def onnx_session(path: str | Path):
    """An onnxruntime CPU session on ``path`` (all graph optimisations, its warnings off), with training's thread
    rule (cores less one, engine.runtime.cpu_threads) and no spin-waiting between operators: on 2 shared cores
    ONNX Runtime's default (a thread per core, spinning) took 4.6-7.1 ms per detection image against 2.2-3.9 ms
    (docs/benchmarks.md, section 13)."""
    import onnxruntime as ort  # slow optional import: only the ONNX engine needs it

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no "unused initializer" notes on every load
    options.intra_op_num_threads = cpu_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_engine(engine: str, onnx_path: Path | None, device: str | torch.device = "cpu") -> str:
    """``torch`` or ``onnx`` for a requested ``engine`` (``auto``: ONNX Runtime on CPU when the model carries an
    ONNX file and onnxruntime is installed, else torch; on a GPU, torch)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "auto":
        return engine
    on_cpu = torch.device(device).type == "cpu"
    return "onnx" if on_cpu and onnx_path is not None and onnx_path.is_file() and has_onnxruntime() else "torch"


def encode_png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Predictor:
    """A trained model with its preprocessing; ``predict`` maps raw images to task outputs.

    Preprocessing, the forward and the post-processing are the task's own (``Task.preprocess``,
    ``forward``, ``postprocess``, ``format_result``): the same path evaluation uses. ``onnx``: run that
    exported model (``Task.export_onnx``) with onnxruntime instead of the torch model (the torch model is
    then not built); its outputs go through the same ``postprocess``.
    """

    def __init__(self, bundle: dict[str, Any], device: str | torch.device = "cpu", batch_size: int = 16, onnx: str | Path | None = None):
        self.spec = bundle["spec"]
        self.task = get_task(self.spec)
        self.device = torch.device(device)
        self.model = None
        self.session = None
        if onnx is not None:
            self.session = onnx_session(onnx)
        else:
            self.model = self.task.build_for_weights()
            self.model.load_state_dict(bundle["state_dict"])
            self.task.configure(self.model, self.task.evaluation)
            self.model.to(self.device).eval()
            if self.device.type == "cpu":  # training's rules (engine.runtime): cores less one; NHWC (max pooling 23x faster)
                torch.set_num_threads(cpu_threads())
                self.model.to(memory_format=torch.channels_last)
        mean, std = self.task.input_normalization(self.spec["mean"], self.spec["std"])
        self.transform = self.task.compose([], self.task.eval_image_size(), mean, std, train=False)
        self.batch_size = batch_size
        self.allow_paths = True  # the served pyfunc turns this off unless logged with registry.serve_file_paths

    @property
    def engine(self) -> str:
        return "torch" if self.session is None else "onnx"

    @classmethod
    def from_folder(cls, folder: str | Path, engine: str = "torch", onnx: str | Path | None = None, **kwargs) -> "Predictor":
        """The model in ``folder`` (spec.json, model.safetensors and, when logged with one, model.onnx) on the
        engine :func:`resolve_engine` picks; ``onnx``: another ONNX file of this model than ``folder``'s own."""
        folder = Path(folder)
        onnx = Path(onnx) if onnx is not None else folder / ONNX_FILE
        engine = resolve_engine(engine, onnx, kwargs.get("device", "cpu"))
        bundle = load_bundle(folder)
        if engine == "torch":
            return cls(bundle, **kwargs)
        if not onnx.is_file():
            raise DataError(onnx, "not found: this model was logged without an ONNX model",
                            "Export one with `visionpipe export-onnx`, or use the torch engine")
        return cls(bundle, onnx=onnx, **{k: v for k, v in kwargs.items() if k != "device"})

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
        arrays = [decode_image(i, allow_paths=self.allow_paths) for i in images]
        rows = [self.task.format_result(r) for r in self.predict_arrays(arrays)]
        return [self.task.apply_params(row, params) for row in rows] if params else rows
