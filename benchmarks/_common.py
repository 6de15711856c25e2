"""Shared pieces of the benchmarks (run by hand, never in CI): synthetic tensors and GPU sampling."""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time

import torch
from torch.utils.data import Dataset


def merge(base: dict, override: dict) -> dict:
    """``override`` merged into a copy of ``base``, nested dicts key by key (a task block and a benchmark's YAML)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def emit(figures: dict) -> None:
    """Print one JSON line with the figures and the command that produced them."""
    figures["command"] = " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], *sys.argv])
    print(json.dumps(figures), flush=True)


class SyntheticSamples(Dataset):
    """Pre-made samples in each task's sample format, so a benchmark times the loop, not decoding."""

    def __init__(self, task: str, n: int, size: int, num_classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.task, self.n = task, n
        self.images = torch.rand(min(n, 64), 3, size, size, generator=g)
        self.labels = torch.randint(0, num_classes, (n,), generator=g)
        self.size, self.num_classes = size, num_classes

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        image = self.images[i % len(self.images)]
        if self.task == "classification":
            return image, int(self.labels[i]), i
        if self.task == "detection":
            s = self.size
            boxes = torch.tensor([[0.1 * s, 0.1 * s, 0.5 * s, 0.6 * s], [0.4 * s, 0.3 * s, 0.9 * s, 0.8 * s]])
            target = {"boxes": boxes, "labels": torch.tensor([1, 1 + int(self.labels[i]) % self.num_classes])}
            return image, target, {"index": i, "image_id": i + 1, "width": s, "height": s}
        mask = torch.randint(0, self.num_classes, (self.size, self.size))
        return image, mask, {"index": i, "mask": mask}


class GpuSampler:
    """Samples GPU utilisation with NVML in a background thread (no effect on the measured loop)."""

    def __init__(self, index: int = 0, interval: float = 0.2):
        self.samples: list[int] = []
        self.interval = interval
        self._stop = threading.Event()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._nvml = pynvml
        except Exception:  # no NVML: utilisation is reported as null
            self._nvml = None

    def __enter__(self):
        if self._nvml:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        if self._nvml:
            self._thread.join()

    @property
    def mean(self):
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None
