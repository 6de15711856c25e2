"""Catalog datasets write whole files or nothing."""

from __future__ import annotations

import json

import pytest
import torch
from kedro.io import DatasetError

from visionpipe.io import AtomicJSONDataset, ModelBundleDataset


def test_json_is_atomic_and_nan_becomes_null(tmp_path, monkeypatch):
    ds = AtomicJSONDataset(str(tmp_path / "m.json"))
    ds.save({"a": 1.0, "b": float("nan")})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1.0, "b": None}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(DatasetError, match="disk full"):
        ds.save({"a": 2.0})
    assert json.loads((tmp_path / "m.json").read_text())["a"] == 1.0  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_model_bundle_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    ds = ModelBundleDataset(str(tmp_path / "model"))
    first = {"spec": {"task": "classification", "v": 1}, "state_dict": {"w": torch.ones(2)}}
    ds.save(first)
    assert torch.equal(ds.load()["state_dict"]["w"], torch.ones(2))

    import visionpipe.io.datasets as datasets

    def fail(bundle, folder):
        (folder / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(datasets, "save_bundle", fail)
    with pytest.raises(DatasetError, match="killed mid-write"):
        ds.save({"spec": {"task": "classification", "v": 2}, "state_dict": {"w": torch.zeros(2)}})
    loaded = ds.load()
    assert loaded["spec"]["v"] == 1 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
