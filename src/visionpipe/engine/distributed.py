"""Helpers for running under ``torchrun`` (PyTorch DDP); all are no-ops in a single process."""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else env_world()[0]


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_env(backend: str | None = None) -> bool:
    """Join the process group torchrun describes; return True when running distributed."""
    r, world, local = env_world()
    if world <= 1:
        return False
    if dist.is_initialized():
        return True
    backend = backend or os.environ.get("VISIONPIPE_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    atexit.register(_destroy)
    logger.info("Joined process group: rank %d of %d (%s)", r, world, backend)
    return True


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def global_mean(total: torch.Tensor, count: torch.Tensor) -> tuple[float, float]:
    """(sum over ranks of ``total`` / sum over ranks of ``count``, the summed count): one host sync."""
    totals = all_reduce_sum(torch.stack([total.float(), count.float()]))
    return (totals[0] / totals[1].clamp(min=1)).item(), totals[1].item()


def all_gather_objects(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
