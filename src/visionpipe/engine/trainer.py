"""The training loop shared by every task: AMP, channels_last, accumulation, DDP, resumable checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from visionpipe.data.datasets import BalancedSampler, EpochSampler, ShardSampler
from visionpipe.data.sampling import GroupedBatchSampler, train_groups
from visionpipe import console
from visionpipe.ranking import is_better
from visionpipe.engine import distributed, recipes
from visionpipe.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import TrainingError
from visionpipe.files import remove_stale_temporaries

logger = logging.getLogger(__name__)


class Evaluator(Protocol):
    def update(self, model: torch.nn.Module, batch: Any) -> None: ...
    def compute(self) -> dict[str, float]: ...


class TaskAdapter(Protocol):
    """What the loop needs from a task (see visionpipe.tasks.base.Task). Optional, read with getattr:
    ``backbone(model)``, ``param_groups(model, cfg)`` and ``train_batch(batch, epoch)``."""

    primary_metric: str

    def collate(self, batch: list) -> Any: ...
    def to_device(self, batch: Any, runtime: Runtime) -> Any: ...
    def batch_size(self, batch: Any) -> int: ...
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...
    def evaluator(self, runtime: Runtime, records: list[dict], keep_predictions: bool = False) -> Evaluator: ...


class Callback:
    """Hooks the loop calls on the main process; subclasses override what they need."""

    def on_fit_start(self, info: dict[str, Any]) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...
    def on_early_stop(self, epoch: int, best_epoch: int) -> None: ...
    def on_fit_end(self, result: "FitResult") -> None: ...


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int | None = None
    stopped_epoch: int | None = None  # the epoch after which early stopping ended training


def build_optimizer(model: torch.nn.Module, cfg, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """The optimizer over ``groups`` (default: decay/no-decay groups, see engine.recipes.param_groups)."""
    groups = groups if groups is not None else recipes.param_groups(model, None, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)  # nesterov needs momentum
    # torch's fused kernel updates every tensor in one call: an AdamW step of the default detector 1.7 ms on the CPU
    # against 7.6 ms for the per-tensor loop (13 % of a classification step; docs/benchmarks.md, section 14)
    groups = [dict(g, params=list(g["params"])) for g in groups]
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, steps_per_epoch: int, greater: bool = True) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule from torch's own schedulers, with optional linear warm-up; ``plateau`` is
    stepped once an epoch on the selection metric (``greater``: higher is better) instead."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    sched = torch.optim.lr_scheduler
    if cfg.scheduler == "plateau":
        return sched.ReduceLROnPlateau(optimizer, mode="max" if greater else "min", factor=cfg.gamma, patience=cfg.plateau_patience)
    if cfg.scheduler == "onecycle":  # one max_lr per group keeps the backbone / layer-decay ratios
        return sched.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    if cfg.scheduler == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    elif cfg.scheduler == "step":
        main = sched.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    else:
        main = sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    return sched.SequentialLR(optimizer, [sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup), main], milestones=[warmup])


def _head_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr logged: the largest group's (the head's when the backbone or layer decay scale theirs down)."""
    return max(g["lr"] for g in optimizer.param_groups)


def _per_epoch(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)  # torch.compile wrapper


class Trainer:
    """Fit a model with a task adapter; the main process writes checkpoints and runs callbacks."""

    def __init__(self, adapter: TaskAdapter, model: torch.nn.Module, cfg, runtime: Runtime,
                 checkpoint_dir: Path | None = None, callbacks: list[Callback] | None = None, signature: dict | None = None,
                 records: list[dict] | None = None, selection: tuple[str, bool] | None = None,
                 sample_weights: list[float] | None = None, checkpoint_extra: dict | None = None):
        """``records``: the evaluation split's records (evaluators that score against annotations need them);
        ``selection``: (metric, greater is better) choosing the best epoch (default: the task's primary metric)
        and driving early stopping and the plateau scheduler; ``sample_weights``: per training record, for
        class-balanced sampling (None: shuffle); ``checkpoint_extra``: stored in ``last.pt`` as ``extra``
        (e.g. the MLflow run id a resume continues)."""
        self.adapter = adapter
        self.records = records or []
        self.selection = selection or (adapter.primary_metric, True)
        self.cfg = cfg
        self.runtime = runtime
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.callbacks = callbacks or []
        self.signature = signature or {}
        self.checkpoint_extra = checkpoint_extra or {}  # saved as "extra" in last.pt (e.g. the MLflow run id to resume)
        self.sample_weights = sample_weights
        self.model = model.to(runtime.device)
        if runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        backbone = getattr(adapter, "backbone", None)
        self.backbone = backbone(self.model) if backbone else None
        recipes.check_backbone(self.backbone, cfg, getattr(adapter, "name", "task"))
        self.ema: torch.nn.Module | None = None
        self.frozen = False
        self.updates = 0  # optimizer steps so far (EMA warm-up counts them)

    # -------------------------------------------------------------- data
    def loaders(self, train_ds, val_ds) -> tuple[DataLoader, DataLoader, EpochSampler]:
        rank, world = distributed.rank(), distributed.world_size()
        if self.sample_weights is not None:
            sampler = BalancedSampler(self.sample_weights, seed=self.cfg.seed, rank=rank, world_size=world)
        else:
            sampler = EpochSampler(len(train_ds), shuffle=True, seed=self.cfg.seed, rank=rank, world_size=world)
        common = dict(collate_fn=self.adapter.collate, num_workers=self.runtime.num_workers, pin_memory=self.runtime.pin_memory,
                      persistent_workers=self.runtime.num_workers > 0)
        if self.runtime.num_workers > 0:
            common["prefetch_factor"] = 4
        drop_last = len(train_ds) > self.cfg.batch_size * world
        groups = train_groups(train_ds, self.cfg.aspect_ratio_group_factor)  # batches of similar aspect ratio (detection)
        if groups is not None:
            train = DataLoader(train_ds, batch_sampler=GroupedBatchSampler(sampler, groups, self.cfg.batch_size, drop_last), **common)
        else:
            train = DataLoader(train_ds, batch_size=self.cfg.batch_size, sampler=sampler, drop_last=drop_last, **common)
        val = DataLoader(val_ds, batch_size=self.cfg.batch_size, sampler=ShardSampler(len(val_ds), rank, world), **common)
        return train, val, sampler

    # -------------------------------------------------------------- evaluation
    @torch.inference_mode()
    def evaluate(self, loader: DataLoader, keep_predictions: bool = False, model: torch.nn.Module | None = None):
        model = model or self.model
        model.eval()
        evaluator = self.adapter.evaluator(self.runtime, self.records, keep_predictions=keep_predictions)
        for batch in loader:
            batch = self.adapter.to_device(batch, self.runtime)
            with self.runtime.autocast():
                evaluator.update(model, batch)
        return evaluator

    # -------------------------------------------------------------- checkpoints
    def _ckpt_path(self) -> Path | None:
        return self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None

    def _try_resume(self, model, optimizer, scheduler, scaler, stopper) -> dict | None:
        path = self._ckpt_path()
        if path and path.parent.is_dir() and distributed.is_main_process():
            for tmp in remove_stale_temporaries(path.parent):  # a killed run's half-written checkpoint
                logger.info("Removed %s, left by a run that was killed while writing a checkpoint", tmp)
        if not (self.cfg.resume and path and path.is_file()):
            if self.cfg.resume:
                logger.info("train.resume is set but no checkpoint at %s: starting from scratch", path)
            return None
        state = load_checkpoint(path)
        if state.get("signature") != self.signature:
            raise TrainingError(
                f"{path}: checkpoint was written for a different model/data ({state.get('signature')} vs {self.signature}). "
                "Delete it or set train.resume: false"
            )
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise TrainingError(f"{path}: checkpoint has no EMA weights (written with train.ema.enabled: false). "
                                    "Delete it or set train.resume: false")
            self.ema.module.load_state_dict(state["ema"])
        if "early_stopping" in state:  # checkpoints written before early stopping existed have none
            stopper.load_state_dict(state["early_stopping"])
        self.updates = state.get("updates", 0)  # only EMA reads it, and an EMA resume needs a checkpoint with one
        set_rng_state(state["rng"])
        logger.info("Resumed from %s after epoch %d", path, state["epoch"])
        return state

    # -------------------------------------------------------------- the loop
    def _wrap(self) -> torch.nn.Module:
        """DDP / compile wrappers; rebuilt when the set of trainable parameters changes (unfreezing),
        since DDP only reduces the gradients of parameters that were trainable when it was built."""
        model = self.model
        if distributed.is_distributed():
            rt = self.runtime
            model = DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        return torch.compile(model) if self.cfg.compile else model

    def _set_frozen(self, frozen: bool) -> None:
        if self.backbone is not None and (frozen or self.frozen):
            recipes.set_frozen(self.backbone, frozen)
            logger.info("Backbone %s", "frozen" if frozen else "unfrozen")
        self.frozen = frozen

    def _selected_state(self, model) -> dict[str, torch.Tensor]:
        """The weights evaluated, chosen and saved: the EMA's when EMA is on."""
        source = self.ema.module if self.ema is not None else _unwrap(model)
        return {k: v.detach().to("cpu", copy=True) for k, v in source.state_dict().items()}

    def fit(self, train_ds, val_ds) -> FitResult:
        cfg, rt = self.cfg, self.runtime
        main = distributed.is_main_process()
        train_loader, val_loader, sampler = self.loaders(train_ds, val_ds)
        steps_per_epoch = max(1, math.ceil(len(train_loader) / cfg.grad_accum_steps))
        param_groups = getattr(self.adapter, "param_groups", None)
        optimizer = build_optimizer(self.model, cfg, param_groups(self.model, cfg) if param_groups else None)
        metric, greater = self.selection
        scheduler = build_scheduler(optimizer, cfg, steps_per_epoch, greater)
        scaler = torch.amp.GradScaler(rt.device.type) if rt.amp_dtype == torch.float16 else None
        self.ema = recipes.build_ema(self.model, cfg)
        stopper = recipes.EarlyStopping(cfg.patience, cfg.min_delta, greater)

        resumed = self._try_resume(self.model, optimizer, scheduler, scaler, stopper)
        start_epoch = resumed["epoch"] + 1 if resumed else 0
        history = list(resumed["history"]) if resumed else []
        best_state = resumed["best_state"] if resumed else None
        best_metrics = dict(resumed["best_metrics"]) if resumed else {}
        best_epoch = resumed["best_epoch"] if resumed else -1
        stopped_epoch = resumed.get("stopped_epoch") if resumed else None
        model = None

        for cb in self.callbacks if main else []:
            cb.on_fit_start({"steps_per_epoch": steps_per_epoch, "train_images": len(train_ds), "val_images": len(val_ds),
                             "world_size": distributed.world_size(), "start_epoch": start_epoch, "epochs": cfg.epochs})
        for epoch in range(start_epoch, cfg.epochs if stopped_epoch is None else start_epoch):
            frozen = epoch < cfg.freeze_backbone_epochs
            if model is None or frozen != self.frozen:
                self._set_frozen(frozen)
                model = self._wrap()
            sampler.set_epoch(epoch)
            metrics = self._train_epoch(model, train_loader, optimizer, scheduler, scaler, epoch)
            val_start = time.perf_counter()
            metrics.update(self.evaluate(val_loader, model=self.ema.module if self.ema is not None else model).compute())
            metrics["val_time_s"] = time.perf_counter() - val_start  # the epoch's evaluation; epoch_time_s is training's
            metrics["epoch"] = epoch + 1  # 1-based, as the console, history.csv, MLflow steps and plots count
            history.append(metrics)
            score = metrics.get(metric, float("nan"))
            if is_better(score, best_metrics.get(metric), greater) or best_state is None:
                best_state = self._selected_state(model)
                best_metrics, best_epoch = dict(metrics), epoch
            if _per_epoch(scheduler) and math.isfinite(score):
                scheduler.step(score)
            stop = stopper.step(epoch, score) and epoch + 1 < cfg.epochs
            if stop:
                stopped_epoch = epoch
                metrics.update({"early_stop_epoch": epoch + 1, "early_stop_best_epoch": best_epoch + 1})  # 1-based, as epochs are shown
            if main:
                shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch" and "/" not in k)  # per-class: history, MLflow
                logger.info("epoch %d/%d %s", epoch + 1, cfg.epochs, shown)
                if self._ckpt_path():
                    save_checkpoint({
                        "model": self.model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict() if scaler else {}, "epoch": epoch, "rng": rng_state(), "history": history,
                        "best_state": best_state, "best_metrics": best_metrics, "best_epoch": best_epoch, "signature": self.signature,
                        "extra": self.checkpoint_extra,
                        "early_stopping": stopper.state_dict(), "stopped_epoch": stopped_epoch, "updates": self.updates,
                        **({"ema": self.ema.module.state_dict()} if self.ema is not None else {}),
                    }, self._ckpt_path())
                for cb in self.callbacks:
                    cb.on_epoch_end(epoch, metrics)
                if stop:
                    logger.info("Early stopping after epoch %d: %s has not improved by more than %g for %d epochs (best epoch %d)",
                                epoch + 1, metric, cfg.min_delta, cfg.patience, best_epoch + 1)
                    for cb in self.callbacks:
                        cb.on_early_stop(epoch + 1, best_epoch + 1)
            distributed.barrier()
            if stop:
                break
        if best_state is None:  # resumed after the last epoch
            best_state = self._selected_state(self.model)
        result = FitResult(best_state, best_epoch, best_metrics, history, resumed["epoch"] if resumed else None, stopped_epoch)
        for cb in self.callbacks if main else []:
            cb.on_fit_end(result)
        return result

    def _train_epoch(self, model, loader, optimizer, scheduler, scaler, epoch: int) -> dict[str, float]:
        cfg, rt = self.cfg, self.runtime
        model.train()
        if self.frozen:  # train() above switched the backbone's BatchNorm layers back to updating their statistics
            self.backbone.eval()
        train_batch = getattr(self.adapter, "train_batch", None)
        device = rt.device
        loss_sum = torch.zeros((), device=device)
        term_sums: dict[str, torch.Tensor] = {}  # named loss terms when the task returns a dict
        seen = torch.zeros((), device=device)
        accum = cfg.grad_accum_steps
        start = time.perf_counter()
        # The bar is updated by hand rather than wrapped around the loader: iterating a DataLoader through
        # tqdm (even disabled) cost 40% of ResNet-50 throughput on an H100 (docs/benchmarks.md).
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress_bar and console.interactive() and distributed.is_main_process()),
                   leave=False, dynamic_ncols=True)
        optimizer.zero_grad(set_to_none=True)
        n_batches = len(loader)
        data_wait, fetch_start = 0.0, time.perf_counter()
        for step, batch in enumerate(loader):
            data_wait += time.perf_counter() - fetch_start  # host time blocked on the loader: data-bound when large
            batch = self.adapter.to_device(batch, rt)
            if train_batch is not None:
                batch = train_batch(batch, epoch)
            bs = self.adapter.batch_size(batch)
            last_micro = (step + 1) % accum == 0 or step + 1 == n_batches
            sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last_micro else contextlib.nullcontext()
            with sync:
                with rt.autocast():
                    loss = self.adapter.loss(model, batch)
                    if isinstance(loss, dict):
                        for name, term in loss.items():
                            term_sums[name] = term_sums.get(name, 0) + term.detach().float() * bs
                        loss = sum(loss.values())
                (scaler.scale(loss / accum) if scaler else loss / accum).backward()
            loss_sum += loss.detach().float() * bs
            seen += bs
            if last_micro:
                if cfg.max_grad_norm:
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.updates += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=self.updates)
                if not _per_epoch(scheduler):
                    scheduler.step()
            if (step + 1) % cfg.log_every_n_steps == 0:  # the only host sync inside the epoch
                running = (loss_sum / seen.clamp(min=1)).item()
                self._check_finite(running, epoch, step)
                bar.set_postfix(loss=f"{running:.4f}", lr=f"{_head_lr(optimizer):.2e}", refresh=False)
            bar.update(1)
            fetch_start = time.perf_counter()
        bar.close()
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        elapsed = time.perf_counter() - start
        train_loss, images = distributed.global_mean(loss_sum, seen)
        self._check_finite(train_loss, epoch, n_batches - 1)
        terms = {f"train_{name}": distributed.global_mean(total, seen)[0] for name, total in term_sums.items()}
        return {"train_loss": train_loss, **terms, "lr": _head_lr(optimizer), "epoch_time_s": elapsed,
                "images_per_s": images / max(elapsed, 1e-9), "data_wait_fraction": data_wait / max(elapsed, 1e-9)}

    def _check_finite(self, value: float, epoch: int, step: int) -> None:
        if not math.isfinite(value):
            kept = f" The last good checkpoint is kept at {self._ckpt_path()}." if self._ckpt_path() and self._ckpt_path().exists() else ""
            raise TrainingError(
                f"Training loss became {value} at epoch {epoch + 1}, step {step + 1}.{kept} "
                "Lower train.lr, set train.max_grad_norm, or check the data for bad labels"
            )
