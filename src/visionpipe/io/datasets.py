"""Datasets that write to a temporary path and rename, so a crash never leaves a half-written file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from visionpipe.files import atomic_folder, atomic_write
from visionpipe.serving.bundle import load_bundle, save_bundle


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class AtomicJSONDataset(AbstractDataset[Any, Any]):
    """A local JSON file written atomically; NaN and infinities are saved as null."""

    def __init__(self, filepath: str, indent: int | None = 2, metadata: dict[str, Any] | None = None):
        self._filepath = Path(filepath)
        self._indent = indent
        self.metadata = metadata

    def load(self) -> Any:
        try:
            return json.loads(self._filepath.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{self._filepath} does not exist; run the pipeline that produces it first") from None

    def save(self, data: Any) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "w") as fh:
                json.dump(_clean(data), fh, indent=self._indent, allow_nan=False)

        atomic_write(self._filepath, write)

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}


class ModelBundleDataset(AbstractDataset[dict, dict]):
    """A trained model as a folder: ``spec.json`` (task, classes, model config, preprocessing) and
    ``model.safetensors``. Saved to a sibling temporary folder and swapped in whole."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> dict:
        if not self._exists():
            raise DatasetError(f"{self._path}: no trained model here; run the training pipeline first")
        return load_bundle(self._path)

    def save(self, data: dict) -> None:
        atomic_folder(self._path, lambda tmp: save_bundle(data, tmp))

    def _exists(self) -> bool:
        return (self._path / "spec.json").is_file() and (self._path / "model.safetensors").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
