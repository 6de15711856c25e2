"""The registered model: an MLflow pyfunc that takes raw images and returns task outputs."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


def default_params(spec: dict) -> dict:
    """The pyfunc's inference parameters and their defaults, logged as the signature's params schema, so
    callers can pass ``params={"score_threshold": 0.5, "max_detections": 10}`` to ``predict`` or a serving
    endpoint. Detection only: the defaults are the training run's ``evaluation`` block; a call can raise the
    threshold and lower the cap (the model already dropped what is below the defaults)."""
    # CONTRACT: per-task inference parameters (the lead folds this into the task objects)
    if spec["task"] != "detection":
        return {}
    ev = spec.get("evaluation") or {}
    return {"score_threshold": float(ev.get("score_threshold", 0.05)), "max_detections": int(ev.get("max_detections", 100))}


def predictions_frame(predictor, images, **params) -> pd.DataFrame:
    """The pyfunc's output for ``images``: one row per image, masks as base64 PNG. ``params`` (see
    :func:`default_params`) go to ``Predictor.predict`` as keyword arguments."""
    from visionpipe.inference import encode_png

    results = predictor.predict(images, **{k: v for k, v in params.items() if v is not None})
    if predictor.spec["task"] == "segmentation":
        results = [{"mask_png": encode_png(r["mask"])} for r in results]
    return pd.DataFrame(results)


class VisionPipeModel(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with an ``image`` column (file paths or base64-encoded image bytes).

    Output, one row per image: classification ``label, score, top_labels, top_scores``; detection
    ``boxes [[x0, y0, x1, y1]], labels, scores`` (after NMS, original pixel coordinates); segmentation
    ``mask_png``: the class-index mask at the image's size, as base64 PNG.
    """

    # Inputs are validated by the logged signature (a string column of paths or base64 images), not by type
    # hints. Without this MLflow warns "Add type hints to the `predict` method" at every import, inside its
    # own catch_warnings block, so a warnings filter cannot silence it.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        import torch

        from visionpipe.inference import Predictor

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
