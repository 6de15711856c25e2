"""A model folder's Predictor on the engine asked for, and its rows: what ``visionpipe predict`` and the pyfunc
share. No MLflow and no pandas here: the CLI on a model folder, or on ONNX Runtime, does not pay their import."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionpipe.serving.bundle import ONNX_FILE, load_bundle
from visionpipe.serving.export import export_bundle
from visionpipe.serving.predictor import Predictor, encode_png, resolve_engine

logger = logging.getLogger(__name__)

# model_config of the logged pyfunc: ``engine`` (auto: ONNX Runtime on CPU when the model carries model.onnx,
# torch on a GPU), ``allow_file_paths`` (read server-local image paths: off unless logged with
# registry.serve_file_paths). A caller overrides them at load time: ``load_model(uri, model_config={...})``.
MODEL_CONFIG_DEFAULTS = {"engine": "auto", "allow_file_paths": False}


def load_predictor(bundle_dir: str | Path, model_config: dict | None = None) -> Predictor:
    """The pyfunc's Predictor on the engine ``model_config`` asks for (see MODEL_CONFIG_DEFAULTS)."""
    config = {**MODEL_CONFIG_DEFAULTS, **(model_config or {})}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    onnx = Path(bundle_dir) / ONNX_FILE
    engine = resolve_engine(str(config["engine"]), onnx, device)
    if engine == "onnx" and not onnx.is_file():  # a version logged before models carried an ONNX model
        onnx = Path(tempfile.mkdtemp(prefix="visionpipe-onnx-")) / ONNX_FILE
        logger.warning("%s was logged without %s: exporting it now for the onnx engine", bundle_dir, ONNX_FILE)
        export_bundle(load_bundle(bundle_dir), onnx)
    predictor = Predictor.from_folder(bundle_dir, engine=engine, onnx=onnx, device=device)
    predictor.allow_paths = bool(config["allow_file_paths"])
    return predictor


def prediction_rows(predictor, images, **params) -> list[dict[str, Any]]:
    """One JSON-ready row per image (the pyfunc's output rows): array values (masks) as base64 PNG under
    ``<key>_png``. ``params`` (the task's ``inference_params``) go to ``Predictor.predict`` as keyword arguments."""
    results = predictor.predict(images, **{k: v for k, v in params.items() if v is not None})
    return [{(f"{k}_png" if isinstance(v, np.ndarray) else k): (encode_png(v) if isinstance(v, np.ndarray) else v) for k, v in r.items()}
            for r in results]
