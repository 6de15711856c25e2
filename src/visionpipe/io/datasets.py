"""Datasets that write to a temporary path and rename, so a crash never leaves a half-written file."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from visionpipe.files import normal_permissions


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
        self._filepath.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self._filepath.name}.", dir=self._filepath.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(_clean(data), fh, indent=self._indent, allow_nan=False)
                fh.flush()
                os.fsync(fh.fileno())
            normal_permissions(Path(tmp))  # mkstemp makes 0600 files
            os.replace(tmp, self._filepath)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

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
        from visionpipe.serving.predictor import load_bundle

        if not self._exists():
            raise DatasetError(f"{self._path}: no trained model here; run the training pipeline first")
        return load_bundle(self._path)

    def save(self, data: dict) -> None:
        from visionpipe.serving.predictor import save_bundle

        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self._path.name}.", dir=self._path.parent))
        old = self._path.with_name(f".{self._path.name}.old")
        try:
            save_bundle(data, tmp)
            normal_permissions(tmp, directory=True)  # mkdtemp makes 0700 folders
            for child in tmp.rglob("*"):
                normal_permissions(child, directory=child.is_dir())
            if self._path.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self._path, old)
            os.replace(tmp, self._path)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _exists(self) -> bool:
        return (self._path / "spec.json").is_file() and (self._path / "model.safetensors").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
