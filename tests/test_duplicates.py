"""Near duplicates: perceptual-hash candidates from a multi-index hash, confirmed at the pixel level (issue 20)."""

from __future__ import annotations

import io
import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from visionpipe.data import duplicates, validation
from visionpipe.tasks import get_task_class
from visionpipe.errors import DataError


def _digit(seed: int, size: int = 28) -> np.ndarray:
    """A handwriting-like glyph: a few thick random strokes on a black page, like an MNIST digit."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.uint8)
    pts = rng.integers(6, size - 6, size=(4, 2))
    for p, q in zip(pts, pts[1:]):
        cv2.line(img, tuple(map(int, p)), tuple(map(int, q)), 255, 2, cv2.LINE_AA)
    return img


def _sig(img: np.ndarray, fmt: str = "PNG", **save) -> duplicates.Signature:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, fmt, **save)
    data = buf.getvalue()
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    import hashlib

    return duplicates.signature(pixels, hashlib.md5(data).hexdigest())


def test_copies_of_every_kind_are_confirmed_and_distinct_glyphs_are_not():
    base = _digit(1)
    copies = {
        "resized": np.asarray(Image.fromarray(base).resize((42, 42), Image.Resampling.BILINEAR)),
        "cropped": base[1:27, 0:27],
        "brightened": np.clip(base.astype(int) + 30, 0, 255).astype(np.uint8),
    }
    original = _sig(base)
    for kind, img in copies.items():
        assert duplicates.pixel_difference(original, _sig(img)) <= duplicates.MAX_PIXEL_DIFFERENCE, kind
    assert duplicates.pixel_difference(original, _sig(base, "JPEG", quality=70)) <= duplicates.MAX_PIXEL_DIFFERENCE
    # another glyph drawn through nearby points: the same "class", not the same picture
    other = _sig(np.roll(_digit(1), 0, axis=0) // 2 + _digit(2) // 2)
    assert duplicates.pixel_difference(original, other) > duplicates.MAX_PIXEL_DIFFERENCE
    grey, black = np.full((28, 28), 128, np.uint8), np.zeros((28, 28), np.uint8)  # blank pages: their level is their content
    assert duplicates.pixel_difference(_sig(grey), _sig(black)) > duplicates.MAX_PIXEL_DIFFERENCE
    assert duplicates.pixel_difference(_sig(grey), _sig(grey, "JPEG", quality=75)) <= duplicates.MAX_PIXEL_DIFFERENCE
    found = duplicates.find([original, _sig(copies["resized"]), None, other, _sig(base)])
    assert [(d["i"], d["j"], d["kind"]) for d in found] == [(0, 1, "near"), (0, 4, "exact"), (1, 4, "near")]


def test_candidate_pairs_match_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=3000, dtype=np.int64).astype(np.uint64)
    for k in range(0, 300, 3):  # plant pairs 0..6 bits apart
        flip = rng.choice(64, size=k % 7, replace=False)
        hashes[k + 1] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flip))
    hashes[2000:2050] = hashes[1999]  # one big group of equal hashes
    got = duplicates.candidate_pairs(hashes, 4)
    d = duplicates.hamming(hashes[:, None], hashes[None, :])
    i, j = np.nonzero(np.triu(d <= 4, k=1))
    assert got.tolist() == np.stack([i, j], axis=1).tolist()


def _index(tmp_path, pairs: int):
    rec = lambda split, name: {"image": f"{split}/{name}", "label": 0}  # noqa: E731
    index = {"task": "classification", "format": "imagefolder", "root": str(tmp_path), "classes": ["x"], "problems": [],
             "train": [], "val": []}
    for k in range(pairs + 2):
        img = _digit(100 + k)
        (tmp_path / "train").mkdir(exist_ok=True)
        (tmp_path / "val").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / "train" / f"t{k}.png")
        index["train"].append(rec("train", f"t{k}.png"))
        copy = img if k < pairs else _digit(200 + k)
        Image.fromarray(copy).save(tmp_path / "val" / f"v{k}.jpg", quality=90)
        index["val"].append(rec("val", f"v{k}.jpg"))
    return index


def test_one_line_per_kind_and_the_leakage_error_names_the_first_pairs(tmp_path, caplog):
    index = _index(tmp_path, pairs=5)
    report = validation.validate_index(get_task_class(index["task"]), index)
    leaks = [w for w in report["warnings"] if w["kind"] == "leakage"]
    assert len(leaks) == 5 and report["findings"] == []
    with caplog.at_level(logging.WARNING):
        validation.apply_policy(get_task_class(index["task"]), index, {**report, "leakage": "warn"}, "strict")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].startswith("Data warning: 5 leakage finding(s) (first: train/t0.png")
    assert "data/08_reporting/classification/data_quality.md" in lines[0]
    with pytest.raises(DataError, match=r"5 image pair\(s\) leak between splits \(first: train/t0.png ~ val/v0.jpg; "
                                         r"train/t1.png ~ val/v1.jpg; train/t2.png ~ val/v2.jpg; \.\.\.\)"):
        validation.apply_policy(get_task_class(index["task"]), index, {**report, "leakage": "error"}, "strict")


def test_a_class_without_val_images_is_a_warning(tmp_path):
    index = _index(tmp_path, pairs=0)
    index["classes"] = ["x", "y"]
    index["train"][1]["label"] = 1
    warnings = validation.validate_index(get_task_class(index["task"]), index)["warnings"]
    assert [(w["kind"], w["split"]) for w in warnings if w["kind"] == "unscored_class"] == [("unscored_class", "val")]
    assert "class 'y' has 1 training image(s) but none in the val split" in warnings[-1]["problem"]


def test_the_end_of_run_summary_counts_data_warnings_per_kind(tmp_path):
    import time

    from visionpipe.tracking.summary import collect, terminal_lines

    report = tmp_path / "data/08_reporting/classification"
    report.mkdir(parents=True)
    warnings = [{"kind": "leakage"}, {"kind": "leakage"}, {"kind": "unscored_class"}]
    (report / "validation.json").write_text(__import__("json").dumps({"warnings": warnings, "findings": []}))
    lines = terminal_lines(collect("classification", "classification", tmp_path, since=time.time() - 60))
    assert any(line.split() == ["data", "warnings", "2", "leakage,", "1", "unscored", "class",
                                "(data/08_reporting/classification/data_quality.md)"] for line in lines)


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_the_built_in_data_raises_no_data_warning(tmp_path, task):
    from support import task_params
    from visionpipe import stages
    from visionpipe.tasks import parse_task_config

    params = task_params(task, tmp_path)
    import yaml

    from support import PROJECT

    shipped = yaml.safe_load((PROJECT / "conf" / "base" / f"parameters_{task}.yml").read_text())[task]["data"]["builtin"]
    params["data"]["builtin"] = {**shipped, "path": params["data"]["builtin"]["path"]}  # what `make run` generates
    cfg = parse_task_config(task, params)
    index = stages.ingest(task, cfg)
    report = stages.validate(task, index, cfg)
    assert report["warnings"] == [] and report["findings"] == [] and index["problems"] == []


# ---------------------------------------------------------------- signature cache between runs

def _decodes(monkeypatch) -> list:
    """The image files validation decodes, recorded."""
    seen = []
    real = validation.load_record_rgb

    def counting(root, rec, **kwargs):
        seen.append(rec["image"])
        return real(root, rec, **kwargs)

    monkeypatch.setattr(validation, "load_record_rgb", counting)
    return seen


def test_a_rerun_decodes_only_changed_files_and_reports_the_same(tmp_path, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache" / "signatures.npz"
    data.mkdir()
    index = _index(data, pairs=3)
    task = get_task_class("classification")
    plain = validation.validate_index(task, index)
    decoded = _decodes(monkeypatch)
    first = validation.validate_index(task, index, cache=cache)
    assert cache.is_file() and len(decoded) == 10  # 5 train + 5 val images, all decoded once
    decoded.clear()
    second = validation.validate_index(task, index, cache=cache)
    assert decoded == []  # nothing changed: nothing decoded
    assert first == second == plain  # findings, warnings (3 leaking pairs), statistics: identical
    assert len([w for w in second["warnings"] if w["kind"] == "leakage"]) == 3

    Image.fromarray(_digit(999)).save(data / "val" / "v0.jpg", quality=90)  # v0 no longer copies t0
    third = validation.validate_index(task, index, cache=cache)
    assert decoded == ["val/v0.jpg"]
    assert third == validation.validate_index(task, index)  # as an uncached run sees it
    assert len([w for w in third["warnings"] if w["kind"] == "leakage"]) == 2


def test_the_decoding_limit_is_part_of_the_key_and_failures_are_never_cached(tmp_path, monkeypatch):
    cache = tmp_path / "signatures.npz"
    save_image = Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save
    (tmp_path / "a").mkdir()
    save_image(tmp_path / "a" / "big.png")
    (tmp_path / "a" / "bad.png").write_text("not an image")
    index = {"task": "classification", "format": "imagefolder", "root": str(tmp_path), "classes": ["a"], "problems": [],
             "train": [{"image": "a/big.png", "label": 0}, {"image": "a/bad.png", "label": 0}], "val": []}
    task = get_task_class("classification")
    decoded = _decodes(monkeypatch)
    validation.validate_index(task, index, cache=cache)
    decoded.clear()
    report = validation.validate_index(task, index, cache=cache)
    assert decoded == ["a/bad.png"]  # the unreadable file is checked again, the good one is not decoded
    assert any(f["file"].endswith("bad.png") and "cannot decode" in f["problem"] for f in report["findings"])
    decoded.clear()
    report = validation.validate_index(task, index, cache=cache, max_pixels=1000)  # a lower limit: decoded again
    assert decoded == ["a/big.png", "a/bad.png"]
    assert any(f["file"].endswith("big.png") and "over the limit" in f["problem"] for f in report["findings"])


def test_a_damaged_cache_is_ignored_with_a_warning_and_replaced(tmp_path, caplog):
    cache = tmp_path / "signatures.npz"
    cache.write_bytes(b"not a cache")
    (tmp_path / "data").mkdir()
    index = _index(tmp_path / "data", pairs=1)
    task = get_task_class("classification")
    with caplog.at_level(logging.WARNING):
        report = validation.validate_index(task, index, cache=cache)
    assert any("Ignoring the validation cache" in r.getMessage() for r in caplog.records)
    assert report == validation.validate_index(task, index)
    loaded = duplicates.SignatureCache(cache)
    assert len(loaded._old) == 6  # rewritten: 3 train + 3 val images
    sig = next(iter(loaded._old.values()))
    assert sig.thumb.dtype == np.uint8 and sig.thumb.shape == (28, 28) and sig.size == (28, 28)


def test_the_cache_lives_in_the_project_even_when_kedro_runs_from_a_subfolder(tmp_path, monkeypatch):
    from visionpipe.pipelines.validation.nodes import signature_cache_path

    (tmp_path / "pyproject.toml").write_text("[tool.kedro]\npackage_name = 'x'\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert signature_cache_path("detection") == tmp_path.resolve() / "data/02_intermediate/detection/image_signatures.npz"
