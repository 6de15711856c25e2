"""The stage functions the Kedro nodes delegate to (one per pipeline stage): plain functions over configs, indices and
model bundles. ``task`` is the Task class the node resolved once (a task name is accepted and resolved here, for
scripts and tests); below this layer only the class travels, never the name."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from visionpipe.config import TaskConfig
from visionpipe.data import formats, shards, transforms, validation
from visionpipe.engine import distributed
from visionpipe.engine.recipes import balanced_sample_weights
from visionpipe.engine.runtime import resolve_runtime, seed_everything
from visionpipe.engine.trainer import Callback, Trainer
from visionpipe.errors import ConfigError, DataError, WeightsUnavailable
from visionpipe.experiments.ownership import builtin_data_for_ingestion
from visionpipe.run_record import checkpoint_extra
from visionpipe.tasks import get_task, get_task_class

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- ingestion and validation

def ingest(task, cfg: TaskConfig) -> dict:
    """Read the user's data, or generate the built-in data first when ``data.root`` is null."""
    task_cls = get_task_class(task)
    data = cfg.data
    if data.root is None:
        root = Path(data.builtin.path) / task_cls.name
        if distributed.is_main_process():
            builtin_data_for_ingestion(root, task_cls, data.builtin.model_dump(exclude={"path"}))
        distributed.barrier()
        builtin_data = data.model_copy(update={"format": task_cls.default_format(), "classes": task_cls.builtin_classes(data.builtin.num_classes)})
        index = formats.read_dataset(task_cls, root, builtin_data)
        index["builtin"] = True
        return index
    return formats.read_dataset(task_cls, data.root, data)


def validate(task, index: dict, cfg: TaskConfig, cache: str | Path | None = None) -> dict:
    """Check every file and annotation; the report lists each finding by file. ``cache``: where validation keeps
    what decoding unchanged image files told it between runs (none when None)."""
    report = validation.validate_index(get_task_class(task), index, cfg.data, cache=cache)
    report["policy"] = cfg.data.validation
    report["leakage"] = cfg.data.leakage
    return report


def enforce_policy(task, index: dict, report: dict, cfg: TaskConfig) -> dict:
    """``strict``: fail on any finding; ``skip``: drop the records with findings."""
    clean, summary = validation.apply_policy(get_task_class(task), index, report, cfg.data.validation)
    logger.info("Validation of %s data: %s", index["task"], summary)
    return clean


# ---------------------------------------------------------------- augmentation

def augmentation(task, cfg: TaskConfig) -> dict:
    """Both pipelines in albumentations' serialised form, plus the normalisation they use."""
    task_cls = get_task_class(task)
    mean, std = task_cls.input_normalization(*task_cls.normalization(cfg.model.model_dump()))
    size = cfg.train.image_size
    return {
        "image_size": size,
        "mean": list(mean),
        "std": list(std),
        "train": transforms.to_dict(task_cls.compose(cfg.augment, size, mean, std, train=True)),
        "val": transforms.to_dict(task_cls.compose([], size, mean, std, train=False)),
    }


# ---------------------------------------------------------------- training

def make_spec(task, cfg: TaskConfig, classes: list[str], category_ids: list[int] | None = None) -> dict[str, Any]:
    """Everything needed to rebuild the model and its preprocessing, saved beside the weights."""
    return get_task_class(task).make_spec(cfg, classes, category_ids)


def gate_metric(metric: str, metrics: dict[str, Any]) -> str:
    """The metrics key the champion gate compares: ``registry.metric`` on the test split when the
    evaluation has one (the val split chose the epoch, so it flatters every model), else on val."""
    if metric.startswith("test/"):
        if metric not in metrics:
            raise ConfigError(f"registry.metric '{metric}' needs a test split: add root/test in the data's layout or set data.test_fraction")
        return metric
    return f"test/{metric}" if f"test/{metric}" in metrics else metric


def sample_weights(task, index: dict, cfg: TaskConfig) -> list[float] | None:
    """Per training record, its draw weight under ``data.sampler: balanced`` (None: shuffle)."""
    if cfg.data.sampler == "random":
        return None
    task_cls = get_task_class(task)
    labels = [task_cls.record_labels(r) for r in index["train"]]
    if any(item is None for item in labels):
        task = task_cls.name
        raise ConfigError(f"{task}.data.sampler: balanced needs per-image class labels, which {task} records do not give; use random")
    return balanced_sample_weights(labels, len(index["classes"]))


def build_initial_model(task: str, spec: dict[str, Any], index: dict) -> tuple[Any, torch.nn.Module]:
    """The task object and the model training starts from, with ``model.pretrained: auto`` resolved in ``spec``:
    off for the built-in data (offline and deterministic) and with ``pretrained_path``; else the library's
    published weights when its hub cache has them or can download them, and from scratch when it cannot (then
    ``spec['weights_note']`` says how to get them: the end-of-run summary shows it). ``reset_head`` re-initialises
    the classifier whatever the weights (``Task.build_model``)."""
    model_spec = spec["model"]
    auto = model_spec.get("pretrained") == "auto"
    if auto:
        model_spec["pretrained"] = not index.get("builtin") and not model_spec.get("pretrained_path")
    try:
        task_obj = get_task(spec)
        return task_obj, task_obj.build_model()
    except WeightsUnavailable as err:
        if not auto:
            raise
        spec["weights_note"] = f"from scratch (model.pretrained: auto): {err}"
        logger.warning("%s: published weights unavailable, training from scratch: %s", task, err)
        model_spec["pretrained"] = False
        task_obj = get_task(spec)
        return task_obj, task_obj.build_model()


def train(task, index: dict, aug: dict, cfg: TaskConfig, callbacks: list[Callback] | None = None) -> tuple[dict, list[dict]]:
    """Train on ``index['train']``, select the best epoch on ``index['val']`` by ``registry.metric``;
    return the best model bundle and the history. ``callbacks`` (e.g. MLflow logging) come from the node."""
    task_cls = get_task_class(task)
    task = task_cls.name
    tc = cfg.train
    seed_everything(tc.seed, tc.deterministic)
    spec = make_spec(task_cls, cfg, index["classes"], index.get("category_ids"))
    spec.update(task_cls.training_spec(cfg, index))
    task_obj, model = build_initial_model(task, spec, index)
    runtime = resolve_runtime(tc, cfg.data)
    adapter, train_ds, val_ds = task_obj.datasets(index, aug, cfg)
    ckpt_dir = Path(tc.checkpoint_dir or f"data/06_models/{task}/checkpoints")
    signature = {"task": task, "model": spec["model"]["name"], "backbone": spec["model"].get("backbone"), "classes": spec["classes"],
                 "image_size": spec["image_size"], "data": index.get("fingerprint")}
    logger.info("Training %s (%s) on %s: %d train / %d val images, AMP %s, channels_last %s, %d loader worker%s",
                task, spec["model"]["name"], runtime.device, len(train_ds), len(val_ds), runtime.amp_name, runtime.channels_last,
                runtime.num_workers, "" if runtime.num_workers == 1 else "s")

    trainer = Trainer(adapter, model, tc, runtime, ckpt_dir, list(callbacks or []), signature, records=index["val"],
                      selection=(cfg.registry.metric.removeprefix("test/"), cfg.registry.greater),
                      sample_weights=sample_weights(task_cls, index, cfg), checkpoint_extra=checkpoint_extra())
    result = trainer.fit(train_ds, val_ds)
    spec["best_epoch"] = result.best_epoch + 1  # 1-based like history.csv and the MLflow steps
    spec["runtime"] = {"device": str(runtime.device), "amp": runtime.amp_name, "channels_last": runtime.channels_last,
                       "world_size": distributed.world_size(), "torch": torch.__version__}
    return {"spec": spec, "state_dict": result.best_state}, result.history


# ---------------------------------------------------------------- evaluation

def serving_bundle(bundle: dict, cfg: TaskConfig) -> dict:
    """The bundle with today's evaluation settings (thresholds...), as evaluation used them."""
    return {**bundle, "spec": {**bundle["spec"], "evaluation": cfg.evaluation.model_dump()}}


def evaluate(task, index: dict, aug: dict, bundle: dict, cfg: TaskConfig,
             model: torch.nn.Module | None = None) -> tuple[dict[str, Any], Any, Any]:
    """Run the model on the whole val split with the evaluation settings in ``cfg`` (read now, not at
    training); return (metrics, evaluator with predictions, task object). When the data has a test
    split, its metrics are added with a ``test/`` prefix (the val split chose the epoch; test did not).
    ``model``: an already loaded model answering over ``bundle``'s classes (the bundle's weights are then unused)."""
    bundle = serving_bundle(bundle, cfg)
    task_obj = get_task_class(task)(bundle["spec"])
    if model is None:
        model = task_obj.build_for_weights()
        model.load_state_dict(bundle["state_dict"])
    task_obj.configure(model, task_obj.evaluation)
    runtime = resolve_runtime(cfg.train, cfg.data)
    adapter, _, val_ds = task_obj.datasets(index, aug, cfg)
    trainer = Trainer(adapter, model, cfg.train.model_copy(update={"batch_size": cfg.evaluation.batch_size}), runtime, records=index["val"])
    _, val_loader, _ = trainer.loaders(val_ds, val_ds)
    start = time.perf_counter()
    evaluator = trainer.evaluate(val_loader, keep_predictions=True)
    metrics = evaluator.compute()
    metrics["eval_time_s"] = time.perf_counter() - start
    metrics["val_images"] = len(val_ds)
    if index.get("test"):
        test_adapter, _, test_ds = task_obj.datasets(index, aug, cfg, eval_split="test")
        test_trainer = Trainer(test_adapter, model, trainer.cfg, runtime, records=index["test"])
        _, test_loader, _ = test_trainer.loaders(test_ds, test_ds)
        metrics.update({f"test/{k}": v for k, v in test_trainer.evaluate(test_loader).compute().items()})
        metrics["test_images"] = len(test_ds)
    metrics["evaluation"] = cfg.evaluation.model_dump()
    return metrics, evaluator, task_obj


# ---------------------------------------------------------------- shards

def shard_dataset(task, cfg: TaskConfig, src: str | Path, out: str | Path, shard_size: int, overwrite: bool = False) -> dict:
    """Read ``src`` with the task's reader, validate it with its policy, write the shards; return the manifest."""
    task_cls = get_task_class(task)
    data = cfg.data
    if data.format == "shards":
        raise DataError(src, "the source is already shards", f"Set {task_cls.name}.data.format (or --format) to the source's own format")
    index = formats.read_dataset(task_cls, src, data)
    report = validation.validate_index(task_cls, index, data)
    clean, summary = validation.apply_policy(task_cls, index, report, data.validation)
    return shards.write_shards(clean, out, shard_size, overwrite, {"policy": data.validation, **summary})
