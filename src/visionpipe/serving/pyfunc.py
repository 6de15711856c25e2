"""The registered model: an MLflow pyfunc that takes raw images and returns task outputs."""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from visionpipe.serving.predictor import Predictor, encode_png
from visionpipe.tasks import get_task_class


def default_params(spec: dict) -> dict:
    """The pyfunc's inference parameters and their defaults (the task's ``inference_params``), logged as the
    signature's params schema, so callers can pass e.g. ``params={"score_threshold": 0.5, "max_detections": 10}``
    to ``predict`` or a serving endpoint."""
    return get_task_class(spec["task"]).inference_params(spec)


def predictions_frame(predictor, images, **params) -> pd.DataFrame:
    """The pyfunc's output for ``images``: one row per image; array values (masks) as base64 PNG under
    ``<key>_png``. ``params`` (see :func:`default_params`) go to ``Predictor.predict`` as keyword arguments."""
    results = predictor.predict(images, **{k: v for k, v in params.items() if v is not None})
    rows = [{(f"{k}_png" if isinstance(v, np.ndarray) else k): (encode_png(v) if isinstance(v, np.ndarray) else v) for k, v in r.items()}
            for r in results]
    return pd.DataFrame(rows)


class VisionPipeModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with an ``image`` column (file paths or base64-encoded image bytes).

    Output, one row per image: classification ``label, score, top_labels, top_scores``; detection
    ``boxes [[x0, y0, x1, y1]], labels, scores`` (after NMS, original pixel coordinates); segmentation
    ``mask_png``: the class-index mask at the image's size, as base64 PNG; instance segmentation ``boxes,
    labels, scores, masks`` (one COCO RLE per instance at the image's size). Each row is the task's
    ``format_result``.
    """

    # Inputs are validated by the logged signature (a string column of paths or base64 images), not by type
    # hints. Without this MLflow warns "Add type hints to the `predict` method" at every import, inside its
    # own catch_warnings block, so a warnings filter cannot silence it.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.predictor = Predictor.from_folder(context.artifacts["bundle"], device="cuda" if torch.cuda.is_available() else "cpu")

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would treat them as a schema
        """``params``: MLflow has already checked them against the logged params schema and filled in defaults."""
        if isinstance(model_input, pd.DataFrame):
            column = "image" if "image" in model_input.columns else model_input.columns[0]
            images = model_input[column].tolist()
        elif isinstance(model_input, dict):
            images = list(model_input["image"])
        else:
            images = list(model_input)
        return predictions_frame(self.predictor, images, **(params or {}))
