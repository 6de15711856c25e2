"""Log the pyfunc model, register it, and move the champion alias only when the new version is better."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import visionpipe
from visionpipe.errors import ConfigError
from visionpipe.ranking import is_better
from visionpipe.serving.bundle import ONNX_FILE, save_bundle
from visionpipe.serving.export import export_bundle
from visionpipe.serving.predictor import Predictor, encode_png
from visionpipe.serving.load import MODEL_CONFIG_DEFAULTS
from visionpipe.serving.pyfunc import default_params, predictions_frame
from visionpipe.tracking.callbacks import final_metric_name
from visionpipe.tracking.champion import classes_note, download_bundle

logger = logging.getLogger(__name__)

_REQUIREMENTS = ("torch", "torchvision", "timm", "segmentation-models-pytorch", "albumentations", "safetensors",
                 "pycocotools", "torchmetrics", "pandas", "pillow", "numpy", "mlflow", "onnxruntime")


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


def log_pyfunc_model(bundle: dict[str, Any], name: str = "model", onnx: bool = True, allow_file_paths: bool = False) -> Any:
    """Log the bundle as a pyfunc model (weights, spec and visionpipe's code inside) to the active run.

    ``onnx``: the bundle also carries model.onnx (exported and checked against torch), the engine the pyfunc
    runs on CPU; an export that fails is a warning and the model serves with torch. ``allow_file_paths``: the
    served model also reads server-local image paths (model_config; off: base64 images only).
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        save_bundle(bundle, folder)
        predictor = Predictor(bundle)  # one torch model for the export's check and the signature's example output
        if onnx:
            started = time.perf_counter()
            try:
                export_bundle(bundle, folder / ONNX_FILE, predictor=predictor)
            except Exception as err:  # an export problem must not lose the trained model: it serves with torch
                logger.warning("No ONNX model in the logged pyfunc (it runs on torch): %s: %s", type(err).__name__,
                               str(err).splitlines()[0][:300] if str(err) else "")
            else:
                logger.debug("ONNX export and check: %.1f s", time.perf_counter() - started)
        example = pd.DataFrame({"image": [example_image(bundle["spec"])]})
        output = predictions_frame(predictor, example["image"].tolist())
        params = default_params(bundle["spec"]) or None  # score_threshold, max_detections: MLflow's params schema
        try:
            signature = infer_signature(example, output, params=params)
        except Exception:  # outputs with ragged lists: keep the input schema only
            signature = infer_signature(example, params=params)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(visionpipe.__file__).parent / "serving" / "pyfunc_entry.py"),  # models-from-code: nothing pickled
            artifacts={"bundle": str(folder)},
            code_paths=[str(Path(visionpipe.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            model_config={**MODEL_CONFIG_DEFAULTS, "allow_file_paths": bool(allow_file_paths)},
        )


TAG_STATE = "visionpipe.registration"  # pending while a version is being registered, complete at the end
TAG_INCOMPLETE = "visionpipe.incomplete"
TAG_PREVIOUS = "visionpipe.previous_champion"
TAG_FINGERPRINT = "visionpipe.eval_fingerprint"


def model_label(spec: dict[str, Any]) -> str:
    """What a logged model is, e.g. ``detection-fcos-resnet10t`` or ``classification-resnet10t``."""
    parts = [spec["task"], spec["model"]["name"], spec["model"].get("backbone")]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(p for p in parts if p))


def registered_model_name(task: str, configured: str | None, index: dict) -> str:
    """The registered model a run's version goes to: ``registry.model_name`` when set; else ``visionpipe-<task>``
    for the built-in data and ``visionpipe-<task>-<data folder name>`` for a user's data (e.g.
    ``visionpipe-classification-mydigits`` for ``data.root: data/01_raw/mydigits``), so the demo and a user's data
    never share a registered model, nor a champion, by accident."""
    if configured:
        return configured
    base = f"visionpipe-{task.replace('_', '-')}"
    if index.get("builtin") or not index.get("root"):
        return base
    folder = Path(str(index["root"])).resolve().name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder).strip("-.") or "data"
    return f"{base}-{slug}"


def recover_incomplete(client: MlflowClient, name: str, alias: str) -> list[int]:
    """Versions left ``pending`` by a process killed mid-registration (their run is no longer RUNNING) are
    tagged incomplete; if one holds the alias, the alias goes back to the champion before it."""
    found = []
    try:  # search results carry no aliases: ask for the alias itself
        holder = client.get_model_version_by_alias(name, alias).version
    except MlflowException:
        holder = None
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get(TAG_STATE) != "pending":
            continue
        try:
            status = client.get_run(version.run_id).info.status if version.run_id else "FINISHED"
        except MlflowException:
            status = "DELETED"
        if status == "RUNNING":  # still being registered by a live run
            continue
        client.set_model_version_tag(name, version.version, TAG_INCOMPLETE, "true")
        client.set_model_version_tag(name, version.version, TAG_STATE, "incomplete")
        found.append(int(version.version))
        logger.warning("%s v%s was left half-registered by a killed run (%s): tagged %s", name, version.version,
                       version.run_id, TAG_INCOMPLETE)
        if str(holder) == str(version.version):
            previous = version.tags.get(TAG_PREVIOUS, "none")
            if previous != "none":
                client.set_registered_model_alias(name, alias, previous)
            else:
                client.delete_registered_model_alias(name, alias)
            logger.warning("alias '%s' taken back from incomplete v%s (%s)", alias, version.version,
                           f"back to v{previous}" if previous != "none" else "no champion before it")
    return found


def _champion(client: MlflowClient, name: str, alias: str):
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return None if version.tags.get(TAG_INCOMPLETE) == "true" else version


def _recorded_score(client: MlflowClient, version, metric: str) -> float | None:
    tagged = version.tags.get(f"metric.{metric}")
    if tagged is not None:
        return float(tagged)
    if not version.run_id:
        return None
    logged = client.get_run(version.run_id).data.metrics
    return logged.get(final_metric_name(metric), logged.get(metric))  # runs logged before per-class names lost "/"


def gate(client: MlflowClient, champion, metric: str, new_score: float, greater_is_better: bool, fingerprint: str | None,
         classes: list[str], rescore: Callable[[dict], dict] | None) -> dict[str, Any]:
    """Decide whether the new version beats the champion on the same evaluation data.

    Same data fingerprint and classes: the champion's recorded score is compared. Otherwise the champion is
    re-scored on today's data (classes matched by name); if that is impossible, its old number cannot win.
    """
    if champion is None:
        return {"promoted": True, "reason": "no champion yet", "champion_score": None, "champion_recorded_score": None,
                "champion_fingerprint": None}
    recorded = _recorded_score(client, champion, metric)
    champion_fp = champion.tags.get(TAG_FINGERPRINT)
    champion_classes = json.loads(champion.tags.get("visionpipe.classes", "null") or "null")
    note = classes_note(champion.version, champion_classes, list(classes))
    out = {"champion_recorded_score": recorded, "champion_fingerprint": champion_fp, "champion_classes": champion_classes,
           "classes_note": note}
    if fingerprint is not None and champion_fp == fingerprint and champion_classes == list(classes) and recorded is not None:
        out.update(champion_score=recorded, reason="same evaluation data: recorded scores compared")
    elif rescore is None:
        out.update(champion_score=None, reason="champion scored on other data and cannot be re-scored here: the new version wins")
    else:
        why = "other classes" if champion_classes is not None and champion_classes != list(classes) else "other evaluation data"
        try:
            bundle = download_bundle(f"models:/{champion.name}/{champion.version}")
            score = float(rescore(bundle)[metric])
        except Exception as err:  # an unloadable champion must not keep the alias on an old number
            logger.warning("Could not re-score champion v%s on today's data: %s", champion.version, err)
            out.update(champion_score=None, reason=f"champion scored on {why} and re-scoring it failed ({type(err).__name__}): "
                                                   "the new version wins")
        else:
            out.update(champion_score=score, reason=f"champion was scored on {why}: re-scored on today's split "
                                                    f"(classes matched by name)")
    if note:  # one sentence, carried by the reason into the log line, the summary, registration.json and the description
        out["reason"] = f"{out['reason']}; {note}"
    if "promoted" not in out:
        out["promoted"] = out["champion_score"] is None or is_better(new_score, out["champion_score"], greater_is_better)
    return out


def _describe(client: MlflowClient, name: str, version: str, spec: dict[str, Any], metric: str, score: float,
              decision: dict[str, Any], tags: dict[str, str]) -> None:
    task, model = spec["task"], model_label(spec)
    client.update_registered_model(name, description=(
        f"visionpipe {task} models trained on {tags.get('data.root', 'unknown data')}. The '{decision['alias']}' alias "
        f"marks the champion: a version takes it only when its {metric} beats the champion's on the same evaluation data "
        f"(each version's description lists its classes)."))
    for key, value in {"visionpipe.task": task, "visionpipe.metric": metric, "visionpipe.alias": decision["alias"]}.items():
        client.set_registered_model_tag(name, key, value)
    champion = ("no champion before it" if decision["champion_version"] is None else
                f"champion v{decision['champion_version']}: {decision['champion_score']}")
    client.update_model_version(name, version, description=(
        f"{model} trained on {tags.get('data.root', 'unknown data')} (fingerprint {tags.get('data.fingerprint', 'unknown')}), "
        f"classes {', '.join(spec['classes'])}. {metric} = {score:.4f} on the {decision['scoring_split']} split; {champion}. "
        f"Decision: {'promoted' if decision['promoted'] else 'not promoted'} ({decision['reason']})."))


def register_and_gate(bundle: dict[str, Any], metrics: dict[str, float], registry_cfg: dict[str, Any],
                      tags: dict[str, str] | None = None, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Register the model logged to the active run; give it the alias only if it beats the champion.

    ``evaluation``: ``fingerprint`` and ``split`` of the data that scored ``metrics``, and ``rescore``, a
    function scoring another bundle on that data (see tracking.champion). Registration is all-or-nothing:
    the version is ``pending`` until the end, and the next run repairs one a killed process left behind.
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_and_gate needs an active MLflow run (kedro-mlflow starts one during `kedro run`)")
    name, alias, metric = registry_cfg["model_name"], registry_cfg["alias"], registry_cfg["metric"]
    if metric not in metrics:
        raise ConfigError(f"registry.metric '{metric}' is not among the evaluation metrics {sorted(metrics)}")
    evaluation = evaluation or {}
    client = MlflowClient()
    recover_incomplete(client, name, alias)
    spec = bundle["spec"]
    new_score = float(metrics[metric])
    fingerprint = evaluation.get("fingerprint")
    champion = _champion(client, name, alias)
    # the slow part (re-scoring) happens before anything is registered, so a kill here leaves no version
    verdict = gate(client, champion, metric, new_score, registry_cfg.get("greater_is_better", True), fingerprint,
                   spec["classes"], evaluation.get("rescore"))
    tags = dict(tags or {})
    if tags:
        mlflow.set_tags(tags)
    info = log_pyfunc_model(bundle, name=model_label(spec), onnx=registry_cfg.get("onnx", True),
                            allow_file_paths=registry_cfg.get("serve_file_paths", False))
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Successfully registered..."; our own line says it
        version = mlflow.register_model(info.model_uri, name, tags={
            **tags, f"metric.{metric}": str(new_score), "visionpipe.run_id": run.info.run_id, TAG_STATE: "pending",
            TAG_PREVIOUS: str(champion.version) if champion else "none", TAG_FINGERPRINT: str(fingerprint),
            "visionpipe.classes": json.dumps(list(spec["classes"])), "visionpipe.scoring_split": evaluation.get("split", "val"),
        })
    decision = {
        "model_name": name, "version": int(version.version), "alias": alias, "metric": metric,
        "new_score": new_score, "new_fingerprint": fingerprint, "scoring_split": evaluation.get("split", "val"),
        "champion_version": int(champion.version) if champion else None, **verdict,
        "run_id": run.info.run_id, "model_uri": info.model_uri,
    }
    if verdict["promoted"]:
        client.set_registered_model_alias(name, alias, version.version)
    for key in ("champion_score", "champion_recorded_score", "champion_fingerprint", "reason", "promoted"):
        client.set_model_version_tag(name, version.version, f"visionpipe.gate.{key}", str(decision[key]))
    _describe(client, name, version.version, spec, metric, new_score, decision, tags)
    client.set_model_version_tag(name, version.version, TAG_STATE, "complete")  # the last step: now it counts
    mlflow.set_tags({"visionpipe.registered_version": str(version.version), "visionpipe.promoted": str(verdict["promoted"])})
    mlflow.log_dict(decision, "registration.json")
    logger.info("%s v%s: %s=%.4f vs champion %s -> %s (%s)", name, version.version, metric, new_score,
                "none" if champion is None else f"v{champion.version} {decision['champion_score']}",
                f"alias '{alias}' moved" if verdict["promoted"] else "alias kept", verdict["reason"])
    return decision
