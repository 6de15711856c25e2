"""Atomic checkpoints that load with ``weights_only=True`` (no pickle from user paths)."""

from __future__ import annotations

import pickle
import pickletools
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from visionpipe.errors import ConfigError, TrainingError
from visionpipe.files import atomic_write


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


_OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"}


def _carries_objects(path: Path) -> bool:
    """Whether the pickle in ``path`` (a plain pickle, or ``data.pkl`` in torch's zip format) names Python
    callables or classes; read with pickletools, which never executes anything. False when it is no pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith("data.pkl")]
                data = zf.read(names[0]) if names else b""
        else:
            data = path.read_bytes()
        ops = {op.name for op, _, _ in pickletools.genops(data)}
    except Exception:  # not a pickle at all, or cut short: truncated / garbage
        return False
    return bool(ops & _OBJECT_OPCODES)


def _unreadable(path: Path, err: Exception) -> str:
    """Why torch cannot load ``path`` with ``weights_only=True``, in our words: torch's own message advises
    retrying with ``weights_only=False``, which would run whatever code the file carries."""
    if isinstance(err, pickle.UnpicklingError) and _carries_objects(path):
        return ("it holds Python objects other than tensors and plain values, and visionpipe never loads those "
                "(they could run code)")
    size = path.stat().st_size if path.is_file() else 0
    if isinstance(err, (EOFError, RuntimeError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError)):
        return f"it is truncated or not a PyTorch checkpoint ({size} bytes)"
    return f"it cannot be read ({type(err).__name__})"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A resumable checkpoint, loaded with ``weights_only=True``; a truncated, corrupt or code-carrying
    file is a TrainingError naming the file and the fix, not a torch traceback."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (code inside), RuntimeError/EOFError (truncated or not a torch file)
        raise TrainingError(
            f"{path}: cannot resume from this checkpoint: {_unreadable(path, err)}. "
            "Delete it to start from scratch, or set train.resume: false."
        ) from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise TrainingError(f"{path}: not a visionpipe training checkpoint (no model/epoch entries). "
                            "Delete it to start from scratch, or set train.resume: false.")
    return state


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy_key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        "numpy_pos": int(np_state["state"]["pos"]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state({"bit_generator": "MT19937", "state": {"key": state["numpy_key"].numpy().astype(np.uint32), "pos": state["numpy_pos"]},
                         "has_gauss": 0, "gauss": 0.0})


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict from safetensors, or from a torch file with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pretrained weights file not found. Set model.pretrained_path to a local .safetensors or .pt/.pth file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError: header too large, invalid JSON, truncated...
            raise ConfigError(
                f"{path}: not a valid safetensors file ({str(err).splitlines()[0][:200]}). "
                "Point model.pretrained_path at a real .safetensors file, or re-save the weights with safetensors.torch.save_file"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError subclasses and RuntimeErrors here
        raise ConfigError(
            f"{path}: cannot be loaded safely: {_unreadable(path, err)}. "
            "Only tensors are accepted: re-save it with torch.save(model.state_dict()) or as .safetensors."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
