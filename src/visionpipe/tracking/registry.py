"""Log the pyfunc model, register it, and move the champion alias only when the new version is better."""

from __future__ import annotations

import logging
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import visionpipe
from visionpipe.comparison import is_better
from visionpipe.inference import Predictor, encode_png, save_bundle
from visionpipe.tracking.pyfunc import default_params, predictions_frame

logger = logging.getLogger(__name__)

_REQUIREMENTS = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations", "safetensors",
                 "pycocotools", "torchmetrics", "pandas", "pillow", "numpy", "mlflow")


def pip_requirements() -> list[str]:
    reqs = []
    for name in _REQUIREMENTS:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


def example_image(spec: dict[str, Any]) -> str:
    rng = np.random.default_rng(0)
    size = spec["image_size"]
    return encode_png(rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8))


def log_pyfunc_model(bundle: dict[str, Any], name: str = "model") -> Any:
    """Log the bundle as a pyfunc model (weights, spec and visionpipe's code inside) to the active run."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        save_bundle(bundle, folder)
        example = pd.DataFrame({"image": [example_image(bundle["spec"])]})
        output = predictions_frame(Predictor(bundle), example["image"].tolist())
        params = default_params(bundle["spec"]) or None  # score_threshold, max_detections: MLflow's params schema
        try:
            signature = infer_signature(example, output, params=params)
        except Exception:  # outputs with ragged lists: keep the input schema only
            signature = infer_signature(example, params=params)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),  # models-from-code: nothing pickled
            artifacts={"bundle": str(folder)},
            code_paths=[str(Path(visionpipe.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )


def _champion_score(client: MlflowClient, model_name: str, alias: str, metric: str) -> tuple[Any, float | None]:
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None, None
    tagged = version.tags.get(f"metric.{metric}")
    if tagged is not None:
        return version, float(tagged)
    value = client.get_run(version.run_id).data.metrics.get(metric) if version.run_id else None
    return version, value


def register_and_gate(bundle: dict[str, Any], metrics: dict[str, float], registry_cfg: dict[str, Any],
                      tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Register the model logged to the active run; give it the alias only if it beats the champion."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_and_gate needs an active MLflow run (kedro-mlflow starts one during `kedro run`)")
    name, alias, metric = registry_cfg["model_name"], registry_cfg["alias"], registry_cfg["metric"]
    if metric not in metrics:
        raise KeyError(f"registry.metric '{metric}' is not among the evaluation metrics {sorted(metrics)}")
    client = MlflowClient()
    tags = dict(tags or {})
    if tags:
        mlflow.set_tags(tags)
    info = log_pyfunc_model(bundle)
    version = mlflow.register_model(info.model_uri, name, tags={**tags, f"metric.{metric}": str(metrics[metric]),
                                                                "visionpipe.run_id": run.info.run_id})
    new_score = float(metrics[metric])
    champion, champion_score = _champion_score(client, name, alias, metric)
    promoted = is_better(new_score, champion_score, registry_cfg.get("greater_is_better", True))
    if promoted:
        client.set_registered_model_alias(name, alias, version.version)
    decision = {
        "model_name": name, "version": int(version.version), "alias": alias, "metric": metric,
        "new_score": new_score, "champion_version": int(champion.version) if champion else None,
        "champion_score": champion_score, "promoted": promoted, "run_id": run.info.run_id, "model_uri": info.model_uri,
    }
    mlflow.set_tags({"visionpipe.registered_version": str(version.version), "visionpipe.promoted": str(promoted)})
    mlflow.log_dict(decision, "registration.json")
    logger.info("%s v%s: %s=%.4f vs champion %s -> %s", name, version.version, metric, new_score,
                "none" if champion_score is None else f"v{champion.version} {champion_score:.4f}",
                f"alias '{alias}' moved" if promoted else "alias kept")
    return decision
