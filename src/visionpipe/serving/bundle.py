"""The trained-model folder (a "bundle"): ``spec.json`` (task, classes, model and evaluation settings,
preprocessing) beside ``model.safetensors`` (and, in a registered pyfunc, ``model.onnx``). Training writes it, evaluation, serving and the registry read it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from visionpipe.engine.checkpoint import save_weights
from visionpipe.errors import DataError

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"  # in a logged pyfunc's bundle: the model for the ONNX Runtime engine (serving.export)


def save_bundle(bundle: dict[str, Any], folder: Path) -> None:
    """Write spec.json + model.safetensors into ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(bundle["state_dict"], folder / WEIGHTS_FILE, metadata={"task": bundle["spec"]["task"]})
    (folder / SPEC_FILE).write_text(json.dumps(bundle["spec"], indent=2))


def load_bundle(folder: str | Path) -> dict[str, Any]:
    """A trained model folder (spec.json + model.safetensors); a missing or damaged file is a DataError naming it."""
    folder = Path(folder)
    fix = "Re-run the training pipeline to write the model again, or restore the folder (dvc checkout / dvc pull)"
    try:
        spec = json.loads((folder / SPEC_FILE).read_text())
    except FileNotFoundError:
        raise DataError(folder / SPEC_FILE, "model spec not found", fix) from None
    except json.JSONDecodeError as err:
        raise DataError(folder / SPEC_FILE, f"not valid JSON ({err})", fix) from None
    try:
        state_dict = load_file(str(folder / WEIGHTS_FILE))
    except FileNotFoundError:
        raise DataError(folder / WEIGHTS_FILE, "model weights not found", fix) from None
    except Exception as err:  # safetensors raises its own SafetensorError (or OSError) for a damaged file
        raise DataError(folder / WEIGHTS_FILE, f"not a valid safetensors file ({str(err).splitlines()[0][:200]})", fix) from None
    return {"spec": spec, "state_dict": state_dict}
