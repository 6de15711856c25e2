"""Engine callbacks: per-epoch metrics and run tags streamed to the active MLflow run, and the registry
metric reported to an Optuna trial (a sweep with ``--prune``)."""

from __future__ import annotations

import contextlib
import logging
import math
import platform
from typing import Any

import torch

from visionpipe.engine import distributed
from visionpipe.engine.runtime import Runtime, resolve_runtime
from visionpipe.engine.trainer import Callback

logger = logging.getLogger(__name__)

# Engine history keys -> MLflow metric names, chosen for how the MLflow UI shows a run: its "Model metrics"
# tab has one section per prefix, sorted by name, the unprefixed final metrics last, so the tab opens on
# train/ (loss first, then each named loss term, then lr) and val/ (val loss, the headline metric).
# Curves: step = the 1-based epoch. Per-class curves (``ap/<class>``) go to val_per_class/, below.
# Process figures (time, memory, data-loader wait) go to system/process/: MLflow's "System metrics" tab,
# beside the host's system/ metrics. The final metrics of the restored best model keep their plain names
# (top1, map, miou): the runs list's columns and the registry gate read those.
_TRAIN_KEYS = {"train_loss": "train/loss", "lr": "train/lr",
               "early_stop_epoch": "train/stopped_epoch", "early_stop_best_epoch": "train/stopped_best_epoch"}
PROCESS_PREFIX = "system/process/"
# timing and process keys of an epoch record (the engine's, for every task): timings.csv, not history.csv/DVC
PROCESS_KEYS = ("epoch_time_s", "val_time_s", "images_per_s", "data_wait_fraction", "rss_gb", "gpu_peak_gb")


def epoch_metric_name(key: str) -> str:
    """The MLflow name of an epoch-history key: ``train_loss`` -> ``train/loss``, a task's named loss term
    ``train_classification`` -> ``train/loss_classification``, ``top1`` -> ``val/top1``, ``val_loss`` ->
    ``val/loss``, ``ap/circle`` -> ``val_per_class/ap/circle``, ``images_per_s`` -> ``system/process/images_per_s``."""
    if key in PROCESS_KEYS:
        return PROCESS_PREFIX + key
    if key in _TRAIN_KEYS:
        return _TRAIN_KEYS[key]
    if key.startswith("train_"):
        term = key.removeprefix("train_")
        return f"train/{term if term.startswith('loss') else 'loss_' + term}"
    if "/" in key:
        return f"val_per_class/{key}"
    return f"val/{key.removeprefix('val_')}"


def final_metric_name(key: str) -> str:
    """The MLflow name of a final (best-model) metric: plain, in the "Model metrics" section and the runs
    list's columns; a per-class one without its slash (``ap/circle`` -> ``ap_circle``) so it does not open a
    section of its own above the curves."""
    return key.replace("/", "_")


def process_figures(device: torch.device | None = None) -> dict[str, float]:
    """This process's resident memory, and the peak GPU memory allocated since the last call (then reset)."""
    import psutil

    figures = {"rss_gb": psutil.Process().memory_info().rss / 2**30}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = device if device is not None and device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
        figures["gpu_peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return figures


def split_history(history: list[dict[str, float]]) -> tuple[list[dict], list[dict]]:
    """(learning history, timings): timings and process figures go to their own file, so `dvc metrics diff`
    and `dvc plots diff` show only real changes. Both keep the 1-based ``epoch`` column."""
    learning = [{k: v for k, v in row.items() if k not in PROCESS_KEYS} for row in history]
    timings = [{"epoch": row.get("epoch"), **{k: row[k] for k in PROCESS_KEYS if k in row}} for row in history]
    return learning, timings


def best_epoch_tag(best_epoch: int, epochs: int) -> str:
    """``6/8``: the 1-based best epoch (``best_epoch`` is the engine's 0-based index) of ``epochs``."""
    return f"{best_epoch + 1}/{epochs}"


def runtime_tags(runtime: Runtime) -> dict[str, str]:
    device = runtime.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine() or "cpu")
    return {
        "visionpipe.device": str(device),
        "visionpipe.device_name": name,
        "visionpipe.torch_version": torch.__version__,
        "visionpipe.cuda_version": str(torch.version.cuda),
        "visionpipe.amp_dtype": runtime.amp_name,
        "visionpipe.channels_last": str(runtime.channels_last),
    }


def tracking_callbacks(cfg) -> list[Callback]:
    """The callbacks a training node passes to the engine: MLflow epoch logging on the main process
    when a run is active (the engine itself never imports MLflow)."""
    if not distributed.is_main_process():
        return []
    logger_cb = MlflowEpochLogger.for_active_run(runtime_tags(resolve_runtime(cfg.train, cfg.data)))
    # after the logger: a pruned trial's last epoch is in MLflow too
    return [cb for cb in (logger_cb, _TRIAL_REPORTER[0]) if cb is not None]


class TrialReporter(Callback):
    """Reports ``metric`` after each epoch (step = the 1-based epoch) to an Optuna trial; raises
    ``optuna.TrialPruned`` when the study's pruner stops the trial."""

    def __init__(self, trial, metric: str):
        self.trial = trial
        self.metric = metric

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import optuna

        value = metrics.get(self.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        step = int(metrics.get("epoch", epoch + 1))
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric}={value:.4g} after epoch {step}: worse than the median of earlier "
                                     "trials at that epoch")


_TRIAL_REPORTER: list[TrialReporter | None] = [None]  # the trial the training in this process reports to


@contextlib.contextmanager
def report_to_trial(trial, metric: str):
    """While open, ``tracking_callbacks`` adds a ``TrialReporter`` for ``trial`` (one sweep trial at a time)."""
    _TRIAL_REPORTER[0] = TrialReporter(trial, metric)
    try:
        yield
    finally:
        _TRIAL_REPORTER[0] = None


class MlflowEpochLogger(Callback):
    """Logs each epoch's metrics asynchronously so logging never stalls a training step."""

    def __init__(self, run_id: str, tags: dict[str, str] | None = None):
        self.run_id = run_id
        self.tags = tags or {}
        self.epochs: int | None = None

    @classmethod
    def for_active_run(cls, tags: dict[str, str] | None = None) -> "MlflowEpochLogger | None":
        import mlflow

        run = mlflow.active_run()
        return cls(run.info.run_id, tags) if run else None

    def on_fit_start(self, info: dict[str, Any]) -> None:
        import mlflow

        self.epochs = info.get("epochs")

        mlflow.MlflowClient().log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in
                                                          {**self.tags, "visionpipe.world_size": info["world_size"]}.items()])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Adds the process figures to the epoch's record (so they reach timings.csv too), then logs it at
        step = the 1-based epoch, the number the console and history.csv show."""
        import mlflow

        metrics.update(process_figures())
        values = {epoch_metric_name(k): float(v) for k, v in metrics.items()
                  if k != "epoch" and not k.startswith("early_stop") and isinstance(v, (int, float))}  # early stop: on_early_stop
        mlflow.log_metrics(values, step=int(metrics.get("epoch", epoch + 1)), run_id=self.run_id, synchronous=False)

    def on_early_stop(self, epoch: int, best_epoch: int) -> None:
        import mlflow

        mlflow.log_metrics({epoch_metric_name("early_stop_epoch"): float(epoch),
                            epoch_metric_name("early_stop_best_epoch"): float(best_epoch)}, step=epoch,
                           run_id=self.run_id, synchronous=False)
        mlflow.MlflowClient().set_tag(self.run_id, "visionpipe.early_stop", f"after epoch {epoch} (best epoch {best_epoch})")

    def on_fit_end(self, result) -> None:
        import mlflow

        mlflow.flush_async_logging()
        if result.best_epoch >= 0:
            epochs = max(self.epochs or 0, len(result.history))
            mlflow.MlflowClient().set_tag(self.run_id, "visionpipe.best_epoch", best_epoch_tag(result.best_epoch, epochs))
