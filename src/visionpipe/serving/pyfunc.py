"""The registered model: an MLflow pyfunc that takes raw images and returns task outputs."""

from __future__ import annotations

import logging

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from visionpipe.errors import DataError
from visionpipe.serving.load import load_predictor, prediction_rows
from visionpipe.serving.predictor import decode_image
from visionpipe.tasks import get_task_class

logger = logging.getLogger(__name__)


def default_params(spec: dict) -> dict:
    """The pyfunc's inference parameters and their defaults (the task's ``inference_params``), logged as the
    signature's params schema, so callers can pass e.g. ``params={"score_threshold": 0.5, "max_detections": 10}``
    to ``predict`` or a serving endpoint."""
    return get_task_class(spec["task"]).inference_params(spec)


def predictions_frame(predictor, images, **params) -> pd.DataFrame:
    """The pyfunc's output for ``images``: one row per image (:func:`visionpipe.serving.load.prediction_rows`)."""
    return pd.DataFrame(prediction_rows(predictor, images, **params))


class VisionPipeModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with an ``image`` column of base64-encoded image bytes (file paths too when the
    model was logged with ``registry.serve_file_paths: true``, or loaded with
    ``model_config={"allow_file_paths": True}``).

    Output, one row per image: classification ``label, score, top_labels, top_scores``; detection
    ``boxes [[x0, y0, x1, y1]], labels, scores`` (after NMS, original pixel coordinates); segmentation
    ``mask_png``: the class-index mask at the image's size, as base64 PNG; instance segmentation ``boxes,
    labels, scores, masks`` (one COCO RLE per instance at the image's size). Each row is the task's
    ``format_result``. The engine is ONNX Runtime on CPU when the model carries model.onnx, else torch
    (``model_config={"engine": "torch"}`` forces torch); both go through the task's one ``postprocess``.
    """

    # Inputs are validated by the logged signature (a string column of paths or base64 images), not by type
    # hints. Without this MLflow warns "Add type hints to the `predict` method" at every import, inside its
    # own catch_warnings block, so a warnings filter cannot silence it.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.predictor = load_predictor(context.artifacts["bundle"], getattr(context, "model_config", None))

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would treat them as a schema
        """``params``: MLflow has already checked them against the logged params schema and filled in defaults."""
        if isinstance(model_input, pd.DataFrame):
            column = "image" if "image" in model_input.columns else model_input.columns[0]
            images = model_input[column].tolist()
        elif isinstance(model_input, dict):
            images = list(model_input["image"])
        else:
            images = list(model_input)
        try:
            arrays = [decode_image(image, allow_paths=self.predictor.allow_paths) for image in images]
        except (ValueError, TypeError, OSError, DataError) as err:  # a bad image: the client's mistake, one line (HTTP 400)
            raise MlflowException(str(err).splitlines()[0], error_code=INVALID_PARAMETER_VALUE) from None
        return predictions_frame(self.predictor, arrays, **(params or {}))
