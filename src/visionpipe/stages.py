"""The stage functions the Kedro nodes delegate to (one per pipeline stage): plain functions over configs, indices and model bundles."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from visionpipe.config import TaskConfig
from visionpipe.data import builtin, formats, transforms, validation
from visionpipe.data.datasets import IndexDataset
from visionpipe.engine import distributed
from visionpipe.engine.runtime import resolve_runtime, seed_everything
from visionpipe.engine.trainer import Trainer
from visionpipe.experiments.ownership import builtin_data_for_ingestion
from visionpipe.tasks import TASK_CLASSES, get_task, transform_normalization
from visionpipe.tasks.detection import coco_ground_truth

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- ingestion and validation

def ingest(task: str, cfg: TaskConfig) -> dict:
    """Read the user's data, or generate the built-in data first when ``data.root`` is null."""
    data = cfg.data
    if data.root is None:
        root = Path(data.builtin.path) / task
        if distributed.is_main_process():
            builtin_data_for_ingestion(root, task, data.builtin.model_dump(exclude={"path"}))
        distributed.barrier()
        cfg = cfg.model_copy(update={"data": data.model_copy(update={
            "format": {"classification": "imagefolder", "detection": "coco", "segmentation": "masks"}[task],
            "classes": builtin.builtin_classes(task, data.builtin.num_classes)})})
        index = formats.read_dataset(task, root, cfg.data)
        index["builtin"] = True
        return index
    return formats.read_dataset(task, data.root, data)


def validate(index: dict, cfg: TaskConfig) -> dict:
    report = validation.validate_index(index, cfg.data.ignore_index, cfg.data.max_image_pixels)
    report["policy"] = cfg.data.validation
    return report


def enforce_policy(index: dict, report: dict, cfg: TaskConfig) -> dict:
    clean, summary = validation.apply_policy(index, report, cfg.data.validation)
    logger.info("Validation of %s data: %s", index["task"], summary)
    return clean


# ---------------------------------------------------------------- augmentation

def augmentation(task: str, cfg: TaskConfig) -> dict:
    """Both pipelines in albumentations' serialised form, plus the normalisation they use."""
    mean, std = transform_normalization(task, *TASK_CLASSES[task].normalization(cfg.model.model_dump()))
    size = cfg.train.image_size
    return {
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
        "train": transforms.to_dict(transforms.compose(task, cfg.augment, size, mean, std, train=True)),
        "val": transforms.to_dict(transforms.compose(task, [], size, mean, std, train=False)),
    }


# ---------------------------------------------------------------- training

def make_spec(task: str, cfg: TaskConfig, classes: list[str]) -> dict[str, Any]:
    """Everything needed to rebuild the model and its preprocessing, saved beside the weights."""
    mean, std = TASK_CLASSES[task].normalization(cfg.model.model_dump())
    return {
        "task": task,
        "classes": list(classes),
        "model": cfg.model.model_dump(),
        "image_size": cfg.train.image_size,
        # detection models normalise internally with these; the other tasks normalise in the transform
        "mean": list(mean),
        "std": list(std),
        "ignore_index": cfg.data.ignore_index,
        "losses": [loss.model_dump() for loss in cfg.losses],
        "evaluation": cfg.evaluation.model_dump(),
    }


def _datasets(task_obj, index: dict, aug: dict, cfg: TaskConfig):
    train_tf, val_tf = transforms.from_dict(aug["train"]), transforms.from_dict(aug["val"])
    max_px = cfg.data.max_image_pixels
    return (IndexDataset(index, "train", train_tf, task_obj.make_sample, cfg.train.seed, max_px),
            IndexDataset(index, "val", val_tf, task_obj.make_sample, cfg.train.seed, max_px, for_eval=True))


def _task(task: str, spec: dict, index: dict):
    return get_task(spec, val_records=index["val"]) if task == "detection" else get_task(spec)


def train(task: str, index: dict, aug: dict, cfg: TaskConfig, callbacks=None) -> tuple[dict, list[dict]]:
    """Train on ``index['train']``, select on ``index['val']``; return the best model bundle and the history."""
    from visionpipe.tracking.callbacks import MlflowEpochLogger, runtime_tags

    tc = cfg.train
    seed_everything(tc.seed, tc.deterministic)
    spec = make_spec(task, cfg, index["classes"])
    task_obj = _task(task, spec, index)
    model = task_obj.build_model()
    runtime = resolve_runtime(tc, cfg.data)
    train_ds, val_ds = _datasets(task_obj, index, aug, cfg)
    if callbacks is None:
        callbacks = [cb for cb in [MlflowEpochLogger.for_active_run(runtime_tags(runtime))] if cb] if distributed.is_main_process() else []
    ckpt_dir = Path(tc.checkpoint_dir or f"data/06_models/{task}/checkpoints")
    signature = {"task": task, "model": spec["model"]["name"], "backbone": spec["model"].get("backbone"), "classes": spec["classes"],
                 "image_size": spec["image_size"], "data": index.get("fingerprint")}
    logger.info("Training %s (%s) on %s: %d train / %d val images, AMP %s, channels_last %s, %d workers",
                task, spec["model"]["name"], runtime.device, len(train_ds), len(val_ds), runtime.amp_name, runtime.channels_last,
                runtime.num_workers)
    trainer = Trainer(task_obj, model, tc, runtime, ckpt_dir, callbacks, signature)
    result = trainer.fit(train_ds, val_ds)
    spec["best_epoch"] = result.best_epoch
    spec["runtime"] = {"device": str(runtime.device), "amp": runtime.amp_name, "channels_last": runtime.channels_last,
                       "world_size": distributed.world_size(), "torch": torch.__version__}
    return {"spec": spec, "state_dict": result.best_state}, result.history


# ---------------------------------------------------------------- evaluation

def evaluate(task: str, index: dict, aug: dict, bundle: dict, cfg: TaskConfig) -> tuple[dict[str, float], Any, Any]:
    """Run the model on the whole val split; return (metrics, evaluator with predictions, val dataset)."""
    spec = bundle["spec"]
    task_obj = _task(task, spec, index)
    model = task_obj.build_model()
    model.load_state_dict(bundle["state_dict"])
    runtime = resolve_runtime(cfg.train, cfg.data)
    _, val_ds = _datasets(task_obj, index, aug, cfg)
    trainer = Trainer(task_obj, model, cfg.train.model_copy(update={"batch_size": cfg.evaluation.batch_size}), runtime)
    _, val_loader, _ = trainer.loaders(val_ds, val_ds)
    start = time.perf_counter()
    evaluator = trainer.evaluate(val_loader, keep_predictions=True)
    metrics = evaluator.compute()
    metrics["eval_time_s"] = time.perf_counter() - start
    metrics["val_images"] = len(val_ds)
    return metrics, evaluator, task_obj


def classification_predictions(index: dict, evaluator) -> pd.DataFrame:
    classes = index["classes"]
    k = evaluator.k
    rows = []
    for p in sorted(evaluator.predictions, key=lambda p: p["index"]):
        row = {"image": index["val"][p["index"]]["image"], "target": classes[p["target"]]}
        row.update({f"top{i + 1}": classes[c] for i, c in enumerate(p["classes"])})
        row.update({f"top{i + 1}": "" for i in range(k, 5)})
        row["score"] = round(p["scores"][0], 6)
        rows.append(row)
    return pd.DataFrame(rows, columns=["image", "target", "top1", "top2", "top3", "top4", "top5", "score"])


def detection_outputs(index: dict, evaluator) -> tuple[list[dict], dict]:
    return evaluator.results, coco_ground_truth(index["val"], index["classes"])


def segmentation_masks(index: dict, evaluator) -> dict[str, Image.Image]:
    out = {}
    for i, mask in sorted(evaluator.predictions.items()):
        out[Path(index["val"][i]["image"]).stem] = Image.fromarray(mask.astype(np.uint8), mode="L")
    return out
