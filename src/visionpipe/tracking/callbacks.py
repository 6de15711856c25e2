"""Engine callback that streams per-epoch metrics and run tags to the active MLflow run."""

from __future__ import annotations

import logging
import platform
from typing import Any

import torch

from visionpipe.engine.runtime import Runtime
from visionpipe.engine.trainer import Callback

logger = logging.getLogger(__name__)

# engine history keys -> MLflow metric names; evaluator keys become val/<key>
_TRAIN_KEYS = {"train_loss": "train/loss", "lr": "train/lr", "epoch_time_s": "train/epoch_time_s", "images_per_s": "train/images_per_s"}


def epoch_metric_name(key: str) -> str:
    return _TRAIN_KEYS.get(key, f"val/{key.removeprefix('val_')}")


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
    from visionpipe.engine import distributed
    from visionpipe.engine.runtime import resolve_runtime

    if not distributed.is_main_process():
        return []
    logger_cb = MlflowEpochLogger.for_active_run(runtime_tags(resolve_runtime(cfg.train, cfg.data)))
    return [logger_cb] if logger_cb else []


class MlflowEpochLogger(Callback):
    """Logs each epoch's metrics asynchronously so logging never stalls a training step."""

    def __init__(self, run_id: str, tags: dict[str, str] | None = None):
        self.run_id = run_id
        self.tags = tags or {}

    @classmethod
    def for_active_run(cls, tags: dict[str, str] | None = None) -> "MlflowEpochLogger | None":
        import mlflow

        run = mlflow.active_run()
        return cls(run.info.run_id, tags) if run else None

    def on_fit_start(self, info: dict[str, Any]) -> None:
        import mlflow

        mlflow.MlflowClient().log_batch(self.run_id, tags=[mlflow.entities.RunTag(k, str(v)) for k, v in
                                                          {**self.tags, "visionpipe.world_size": info["world_size"]}.items()])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        import mlflow

        values = {epoch_metric_name(k): float(v) for k, v in metrics.items()
                  if k != "epoch" and not k.startswith("early_stop") and isinstance(v, (int, float))}  # early stop: on_early_stop
        mlflow.log_metrics(values, step=epoch, run_id=self.run_id, synchronous=False)

    def on_early_stop(self, epoch: int, best_epoch: int) -> None:
        import mlflow

        mlflow.log_metrics({"early_stop/epoch": float(epoch), "early_stop/best_epoch": float(best_epoch)}, step=epoch,
                           run_id=self.run_id, synchronous=False)
        mlflow.MlflowClient().set_tag(self.run_id, "visionpipe.early_stop", f"after epoch {epoch} (best epoch {best_epoch})")

    def on_fit_end(self, result) -> None:
        import mlflow

        mlflow.flush_async_logging()
