"""Tar shards: written validated, read back as the same index, the same pixels and the same training result."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from support import task_params
from visionpipe import stages
from visionpipe.tasks import parse_task_config
from visionpipe.data import builtin, formats, shards
from visionpipe.tasks import get_task_class
from visionpipe.errors import DataError

SOURCE_FORMAT = {"classification": "imagefolder", "detection": "coco", "segmentation": "masks"}


def _cfg(task: str, tmp: Path, **data):
    classes = get_task_class(task).builtin_classes(task_params(task)["data"]["builtin"]["num_classes"])
    return parse_task_config(task, task_params(task, tmp, data={"format": SOURCE_FORMAT[task], "classes": classes, **data}))


def _source(task: str, tmp: Path):
    cfg = _cfg(task, tmp)
    root = builtin.ensure_builtin_dataset(tmp / "src" / task, get_task_class(task), cfg.data.builtin.model_dump(exclude={"path"}))
    return root, cfg


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("shard", "members", "sha256")} for r in records]


@pytest.mark.parametrize("task", ["classification", "detection", "segmentation"])
def test_shards_read_back_as_the_same_index_and_pixels(tmp_path, task):
    root, cfg = _source(task, tmp_path)
    manifest = stages.shard_dataset(task, cfg, root, tmp_path / "shards", shard_size=5)
    source = formats.read_dataset(get_task_class(task), root, cfg.data)
    n_train, n_val = len(source["train"]), len(source["val"])
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [5] * (n_train // 5) + ([n_train % 5] if n_train % 5 else [])
    assert manifest["splits"]["val"]["count"] == n_val and manifest["classes"] == source["classes"]
    assert manifest["validation"] == {"policy": "strict", "train": {"kept": n_train, "dropped": 0}, "val": {"kept": n_val, "dropped": 0}}

    sharded = formats.read_dataset(get_task_class(task), tmp_path / "shards", cfg.data.model_copy(update={"format": "shards"}))
    assert sharded["classes"] == source["classes"] and sharded["problems"] == []
    for split in ("train", "val"):
        assert _strip(sharded[split]) == source[split]
    for a, b in zip(source["val"], sharded["val"]):  # the original bytes, so the very same pixels
        np.testing.assert_array_equal(shards.load_record_rgb(root, a), shards.load_record_rgb(sharded["root"], b))
        if "mask" in a:
            np.testing.assert_array_equal(shards.load_record_mask(root, a), shards.load_record_mask(sharded["root"], b))
    with tarfile.open(tmp_path / "shards" / "val-000000.tar") as tar:  # WebDataset's layout: <key>.<ext> members
        names = tar.getnames()
    assert names[:2] == ["000000000.png", "000000000.json"]
    if task == "classification":
        assert names[2] == "000000000.cls"


@pytest.mark.slow
def test_imagefolder_and_its_shards_train_to_the_same_metrics(tmp_path, monkeypatch):
    from visionpipe import stages

    monkeypatch.chdir(tmp_path)
    root, cfg = _source("classification", tmp_path)
    stages.shard_dataset("classification", cfg, root, tmp_path / "shards", shard_size=7)
    results = []
    for fmt, data_root in (("imagefolder", root), ("shards", tmp_path / "shards")):
        run_cfg = parse_task_config("classification", task_params(
            "classification", tmp_path, data={"format": fmt, "root": str(data_root), "classes": cfg.data.classes},
            train={"checkpoint_dir": str(tmp_path / fmt)}))
        raw = stages.ingest("classification", run_cfg)
        index = stages.enforce_policy("classification", raw, stages.validate("classification", raw, run_cfg), run_cfg)
        aug = stages.augmentation("classification", run_cfg)
        bundle, history = stages.train("classification", index, aug, run_cfg, callbacks=[])
        metrics, evaluator, _ = stages.evaluate("classification", index, aug, bundle, run_cfg)
        results.append((bundle["state_dict"], history, metrics, evaluator.predictions))
    (state_a, hist_a, met_a, pred_a), (state_b, hist_b, met_b, pred_b) = results
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0)
    assert [h["train_loss"] for h in hist_a] == [h["train_loss"] for h in hist_b]
    assert {k: met_a[k] for k in ("top1", "top5", "val_loss")} == {k: met_b[k] for k in ("top1", "top5", "val_loss")}
    assert pred_a == pred_b


class _NoTransform:
    def set_random_seed(self, seed: int) -> None: ...


def _image_name(pixels, record, root, transform, index, for_eval=False) -> str:
    assert pixels.shape == (32, 32, 3)  # decoded from the shard
    return record["image"]


def test_ranks_and_workers_read_every_sample_once(tmp_path):
    from torch.utils.data import DataLoader

    from visionpipe.data.datasets import EpochSampler, IndexDataset

    root, cfg = _source("classification", tmp_path)
    stages.shard_dataset("classification", cfg, root, tmp_path / "shards", shard_size=5)
    index = formats.read_dataset(get_task_class("classification"), tmp_path / "shards", cfg.data.model_copy(update={"format": "shards"}))
    dataset = IndexDataset(index, "train", _NoTransform(), _image_name)
    seen = []
    for rank in range(2):
        sampler = EpochSampler(len(dataset), shuffle=True, seed=0, rank=rank, world_size=2)
        sampler.set_epoch(3)
        loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=2, collate_fn=list)
        seen += [name for batch in loader for name in batch]
    assert sorted(seen) == sorted(r["image"] for r in index["train"])  # 24 train images: 12 a rank, none twice


def test_writing_refuses_bad_files_or_leaves_them_out(tmp_path):
    root, cfg = _source("classification", tmp_path)
    bad = sorted((root / "train").rglob("*.png"))[0]
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="1 data problem"):
        stages.shard_dataset("classification", cfg, root, tmp_path / "strict", shard_size=10)
    assert not (tmp_path / "strict" / shards.MANIFEST).exists()

    skip = cfg.model_copy(update={"data": cfg.data.model_copy(update={"validation": "skip"})})
    manifest = stages.shard_dataset("classification", skip, root, tmp_path / "skip", shard_size=10)
    assert manifest["validation"]["train"]["dropped"] == 1
    index = shards.read_shards(tmp_path / "skip", "classification")
    assert bad.relative_to(root).as_posix() not in {r["image"] for r in index["train"]}


def test_stale_or_damaged_shards_are_clear_errors(tmp_path):
    root, cfg = _source("classification", tmp_path)
    out = tmp_path / "shards"
    stages.shard_dataset("classification", cfg, root, out, shard_size=10)
    with pytest.raises(DataError, match="already holds shards.*--overwrite"):
        stages.shard_dataset("classification", cfg, root, out, shard_size=10)
    (out / ".train-000002.tar.tmp").write_bytes(b"left by an interrupted run")
    stages.shard_dataset("classification", cfg, root, out, shard_size=30, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train-000000.tar", "val-000000.tar"]  # nothing stale left

    with pytest.raises(DataError, match="written for classification, not detection"):
        shards.read_shards(out, "detection")
    with pytest.raises(DataError, match="differ from the classes"):
        shards.read_shards(out, "classification", classes=["a", "b"])
    manifest = json.loads((out / shards.MANIFEST).read_text())
    manifest["splits"]["val"]["shards"][0]["count"] += 1
    (out / shards.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="holds 12 samples, the manifest says 13"):
        shards.read_shards(out, "classification")
    (out / "val-000000.tar").unlink()
    with pytest.raises(DataError, match="val-000000.tar: shard listed in the manifest is missing"):
        shards.read_shards(out, "classification")
    with pytest.raises(DataError, match="no shard manifest"):
        shards.read_shards(tmp_path, "classification")


def test_a_corrupt_member_is_reported_by_validation_with_its_shard(tmp_path):
    from visionpipe.data import validation

    root, cfg = _source("classification", tmp_path)
    stages.shard_dataset("classification", cfg, root, tmp_path / "shards", shard_size=100)
    index = formats.read_dataset(get_task_class("classification"), tmp_path / "shards", cfg.data.model_copy(update={"format": "shards"}))
    rec, other = index["val"][0], index["val"][1]
    offset, size, member = rec["members"]["image"]
    with open(tmp_path / "shards" / rec["shard"], "r+b") as f:  # one byte flipped in place: same size, same offsets
        f.seek(offset + size - 20)
        byte = f.read(1)
        f.seek(offset + size - 20)
        f.write(bytes([byte[0] ^ 0xFF]))
    offset, size, _ = other["members"]["image"]
    with open(tmp_path / "shards" / other["shard"], "r+b") as f:  # the whole PNG overwritten
        f.seek(offset)
        f.write(b"\0" * size)
    report = validation.validate_index(get_task_class(index["task"]), index)
    assert [(f["file"], f["image"]) for f in report["findings"]] == [(str(tmp_path / "shards" / rec["shard"]), rec["image"]),
                                                                     (str(tmp_path / "shards" / other["shard"]), other["image"])]
    assert report["findings"][0]["problem"].startswith(f"member {member} does not match the sha256 recorded in manifest.json")


def test_shard_command_writes_shards_and_reports_user_errors_in_one_line(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from support import make_project
    from visionpipe.cli import cli

    (tmp_path / "project").mkdir()
    monkeypatch.chdir(make_project(tmp_path / "project"))
    root, _ = _source("classification", tmp_path)
    args = ["shard", "--task", "classification", "--src", str(root), "--out", str(tmp_path / "shards"), "--shard-size", "10"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "train 24 samples in 3 shards, val 12 samples in 2 shards" in result.output
    assert len(shards.read_shards(tmp_path / "shards", "classification")["train"]) == 24

    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "DataError" in again.output and "--overwrite" in again.output and "Traceback" not in again.output
    wrong = CliRunner().invoke(cli, [*args, "--overwrite", "--format", "coco"])
    assert wrong.exit_code == 1 and "classification.data.format: Input should be 'imagefolder' or 'shards'" in wrong.output


def test_plots_draw_images_from_shards(tmp_path):
    from visionpipe.tasks.detection import coco_ground_truth
    from visionpipe import plots

    for task in ("detection", "segmentation"):
        root, cfg = _source(task, tmp_path)
        stages.shard_dataset(task, cfg, root, tmp_path / "shards" / task, shard_size=4)
        index = formats.read_dataset(get_task_class(task), tmp_path / "shards" / task, cfg.data.model_copy(update={"format": "shards"}))
        if task == "detection":
            fig = plots.box_grid([], coco_ground_truth(index["val"], index["classes"]), index)
        else:
            masks = {Path(r["image"]).stem: np.zeros((32, 32), np.uint8) for r in index["val"]}
            fig = plots.mask_overlays(masks, index)
        first = fig.axes[0].images[0].get_array()
        np.testing.assert_array_equal(np.asarray(first), shards.load_record_rgb(index["root"], index["val"][0]))
