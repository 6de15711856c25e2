"""Atomic writes keep normal permissions; bad checkpoints and weight files are one-line errors naming the file."""

from __future__ import annotations

import os
import pickle
import stat

import pytest
import torch

from visionpipe.engine.checkpoint import load_checkpoint, load_weights, save_checkpoint
from visionpipe.errors import ConfigError, TrainingError
from visionpipe.io import AtomicJSONDataset, ModelBundleDataset


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_files_get_the_umask_permissions(tmp_path, umask_022):
    AtomicJSONDataset(str(tmp_path / "m.json")).save({"a": 1})
    ModelBundleDataset(str(tmp_path / "model")).save({"spec": {"task": "classification"}, "state_dict": {"w": torch.ones(2)}})
    save_checkpoint({"model": {}, "epoch": 0}, tmp_path / "ck" / "last.pt")
    assert _mode(tmp_path / "m.json") == 0o644
    assert _mode(tmp_path / "model") == 0o755
    assert {p.name: _mode(p) for p in (tmp_path / "model").iterdir()} == {"spec.json": 0o644, "model.safetensors": 0o644}
    assert _mode(tmp_path / "ck" / "last.pt") == 0o644


def test_a_stricter_umask_is_honoured(tmp_path):
    old = os.umask(0o077)
    try:
        AtomicJSONDataset(str(tmp_path / "m.json")).save({"a": 1})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "m.json") == 0o600


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("content", ["truncated", "garbage", "pickled code", "not a checkpoint"])
def test_bad_last_pt_is_a_training_error_naming_the_file(tmp_path, content):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    if content == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif content == "garbage":
        path.write_bytes(b"\x00\x01 not torch at all")
    elif content == "pickled code":
        with open(path, "wb") as fh:
            pickle.dump({"model": _Evil(), "epoch": 1}, fh)
    else:
        torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(TrainingError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "train.resume: false" in message and "\n" not in message
    # complete sentences in our words; never torch's advice to retry with weights_only=False (it would run the code)
    assert message.endswith("set train.resume: false.") and "weights_only" not in message
    expected = {"truncated": "it is truncated or not a PyTorch checkpoint", "garbage": "it is truncated or not a PyTorch checkpoint",
                "pickled code": "it holds Python objects other than tensors", "not a checkpoint": "not a visionpipe training checkpoint"}
    assert expected[content] in message


def test_a_killed_runs_temporary_checkpoint_is_removed_on_the_next_run(tmp_path):
    import subprocess
    import sys

    from visionpipe.files import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f".last.pt.tmp-{dead}"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".last.pt.tmp-{os.getppid()}"  # a live process may still be writing it
    live.write_bytes(b"being written")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and live.exists()


def test_a_good_checkpoint_round_trips(tmp_path):
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 2, "extra": {"mlflow_run_id": "abc"}}, tmp_path / "last.pt")
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2 and state["extra"] == {"mlflow_run_id": "abc"} and torch.equal(state["model"]["w"], torch.ones(3))


def test_fake_safetensors_is_a_config_error(tmp_path):
    fake = tmp_path / "weights.safetensors"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not safetensors")
    with pytest.raises(ConfigError, match=r"weights\.safetensors: not a valid safetensors file"):
        load_weights(fake)


def test_a_damaged_model_folder_is_a_message_naming_the_file(tmp_path):
    from visionpipe.errors import DataError
    from visionpipe.serving.bundle import load_bundle

    (tmp_path / "spec.json").write_text('{"task": "classification"}')
    (tmp_path / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(DataError, match=r"model\.safetensors: not a valid safetensors file.*Re-run the training pipeline"):
        load_bundle(tmp_path)
    (tmp_path / "spec.json").write_text("{broken")
    with pytest.raises(DataError, match=r"spec\.json: not valid JSON"):
        load_bundle(tmp_path)
