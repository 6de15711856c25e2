"""Resolve device, precision and DataLoader settings from the config and the machine."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from visionpipe.engine import distributed


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    amp_dtype: torch.dtype | None  # None: full precision
    channels_last: bool
    num_workers: int
    pin_memory: bool

    @property
    def amp_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "off")

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def _local_cuda() -> torch.device:
    # one GPU per local rank; more ranks than GPUs share them round-robin
    return torch.device("cuda", distributed.env_world()[2] % torch.cuda.device_count())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return _local_cuda()
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and torch.cuda.is_available():
        return _local_cuda()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"train.device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def cpu_threads() -> int:
    """Intra-op threads for training on the CPU: this process's share of the cores less one (at least one), as
    Ultralytics does. Two OpenMP threads on 2 shared cores stall at every barrier when another process holds a
    core: a detection step took 4.6 s with 2 threads and 0.49 s with 1 (docs/benchmarks.md, section 14)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, distributed.world_size()) - 1)


def resolve_runtime(train_cfg, data_cfg) -> Runtime:
    device = resolve_device(train_cfg.device)
    amp = train_cfg.amp
    if amp in (False, "off"):
        dtype = None
    elif amp in (True, "auto"):
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = None if amp == "auto" else torch.bfloat16
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    # auto: NHWC on CUDA (tensor cores) and on the CPU, where oneDNN's NHWC kernels beat NCHW: a detection training
    # step 11-26 % faster, and max pooling 23x (docs/benchmarks.md, section 14)
    channels_last = device.type in ("cuda", "cpu") if train_cfg.channels_last == "auto" else bool(train_cfg.channels_last)
    workers = data_cfg.num_workers
    if workers == "auto":
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        cpus //= max(1, distributed.world_size())
        # one core: load in the training process; more: cores less one loader workers (at most 8) beside the
        # cores-less-one intra-op threads (cpu_threads): on 2 cores decoding and augmenting overlap the step
        workers = 0 if cpus <= 1 else min(8, cpus - 1)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    return Runtime(device, dtype, channels_last, int(workers), device.type == "cuda")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # deterministic mode also NaN-fills every new tensor (a debugging aid against reads of uninitialised memory):
    # 15 % of a CPU detection epoch in torch.profiler (aten::fill_), and no part of making results reproducible
    torch.utils.deterministic.fill_uninitialized_memory = False
