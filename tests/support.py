"""Plain helpers the tests share (fixtures live in conftest.py): tiny parameter blocks built from the real
conf/base files, a runnable copy of the project, `kedro` in a subprocess, and small files in each format."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from visionpipe.tasks import task_names

PROJECT = Path(__file__).resolve().parents[1]

TINY = {
    "classification": {"data": {"builtin": {"image_size": 32, "train_images": 24, "val_images": 12, "num_classes": 6}},
                       "train": {"epochs": 1, "batch_size": 8, "image_size": 32}},
    "detection": {"data": {"builtin": {"image_size": 64, "train_images": 12, "val_images": 6, "num_classes": 3}},
                  "train": {"epochs": 1, "batch_size": 4, "image_size": 64}},
    "segmentation": {"data": {"builtin": {"image_size": 32, "train_images": 12, "val_images": 6, "num_classes": 3}},
                     "train": {"epochs": 1, "batch_size": 4, "image_size": 32}},
    "instance_segmentation": {"data": {"builtin": {"image_size": 64, "train_images": 8, "val_images": 4, "num_classes": 3}},
                              "train": {"epochs": 1, "batch_size": 4, "image_size": 64}},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def task_params(task: str, tmp: Path | None = None, **override) -> dict:
    """The task's block from conf/base, shrunk for tests (CPU, no workers, no progress bar)."""
    block = yaml.safe_load((PROJECT / "conf" / "base" / f"parameters_{task}.yml").read_text())[task]
    block = merge(block, TINY[task])
    block = merge(block, {"data": {"num_workers": 0}, "train": {"device": "cpu", "progress_bar": False}})
    if tmp is not None:
        block = merge(block, {"data": {"builtin": {"path": str(tmp / "builtin")}},
                              "train": {"checkpoint_dir": str(tmp / "checkpoints" / task)}})
    return merge(block, override)


def make_project(root: Path) -> Path:
    """A runnable copy of the project: configuration and source (Kedro wants a src folder inside)."""
    import shutil

    shutil.copy(PROJECT / "pyproject.toml", root)
    shutil.copytree(PROJECT / "conf", root / "conf", ignore=shutil.ignore_patterns("credentials*", "*.local.yml"))
    shutil.copytree(PROJECT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data").mkdir()
    return root


def save_image(path: Path, size=(16, 16), mode="RGB", value=128) -> Path:
    """A flat test image (16-bit with mode I;16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        Image.fromarray(np.full(size[::-1], 40000, dtype=np.uint16)).save(path)
    else:
        Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode)).save(path)
    return path


def tiny_classification(root: Path) -> None:
    """Shrink the classification block of ``root``'s conf/base parameters to the TINY data and training."""
    params_file = root / "conf/base/parameters_classification.yml"
    tiny = merge(yaml.safe_load(params_file.read_text())["classification"],
                 {k: v for k, v in task_params("classification").items() if k in ("data", "train")})
    params_file.write_text(yaml.safe_dump({"classification": tiny}))


def dvc_project(root: Path) -> Path:
    """What a fresh clone holds (code, conf, dvc.yaml, .dvc, empty data layers), classification shrunk; not yet a git repo."""
    import shutil

    for name in ("pyproject.toml", "dvc.yaml", ".dvcignore", ".gitignore", ".telemetry"):
        shutil.copy(PROJECT / name, root)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "tmp", "cache")
    for name in ("conf", "src", ".dvc"):
        shutil.copytree(PROJECT / name, root / name, ignore=ignore)
    for d in ("01_raw", "06_models", "07_model_output", "08_reporting"):
        (root / "data" / d).mkdir(parents=True)
        (root / "data" / d / ".gitkeep").touch()
    tiny_classification(root)
    return root


TASKS = tuple(task_names())


def _flatten(prefix: str, value) -> list[str]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flatten(f"{prefix}.{k}", v)]
    return [f"{prefix}={value}"]


def tiny_params(tasks=TASKS, onnx: bool = False, **extra) -> str:
    """``--params`` for `kedro run` with every task (or ``tasks``) shrunk to the TINY blocks, on CPU. ``onnx``:
    registration exports and checks the pyfunc's model.onnx (registry.onnx, default on; 1-5 CPU-s a task, so
    only the runs whose tests serve it turn it on)."""
    items = []
    for task in tasks:
        items += _flatten(task, TINY[task])
        items += [f"{task}.data.num_workers=0", f"{task}.train.device=cpu", f"{task}.train.progress_bar=false"]
        items += [] if onnx else [f"{task}.registry.onnx=false"]
    items += [f"{k}={v}" for k, v in extra.items()]
    return ",".join(items)


def kedro(project: Path, *args: str, program: str = "kedro") -> subprocess.CompletedProcess:
    """Run `kedro` (or another of the venv's programs) in ``project``; fail the test with its output on error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING") and k != "VISIONPIPE_VERBOSE"}
    env.update(KEDRO_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1", VISIONPIPE_SYSTEM_METRICS_INTERVAL="1", COLUMNS="200")
    proc = subprocess.run([str(Path(sys.executable).parent / program), *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def scene_records():
    # two images: (file, width, height, [(class, x0, y0, x1, y1)])
    return [("a.png", 40, 30, [(0, 2, 3, 12, 20), (1, 20, 5, 39, 29)]), ("b.png", 40, 30, [(1, 0, 0, 10, 10)])]


def write_coco_scenes(root: Path):
    for split in ("train", "val"):
        images, anns = [], []
        for i, (name, w, h, objs) in enumerate(scene_records()):
            save_image(root / "images" / split / name, (w, h))
            images.append({"id": i + 10, "file_name": name, "width": w, "height": h})
            for c, x0, y0, x1, y1 in objs:
                anns.append({"id": len(anns) + 1, "image_id": i + 10, "category_id": [3, 7][c], "bbox": [x0, y0, x1 - x0, y1 - y0],
                             "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        cats = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))


def write_voc_scenes(root: Path):
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    names = ["cat", "dog"]
    for name, w, h, objs in scene_records():
        save_image(root / "JPEGImages" / name, (w, h))
        objects = "".join(f"<object><name>{names[c]}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
                          f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for c, x0, y0, x1, y1 in objs)
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>")
    for split in ("train", "val"):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("a\nb\n")


def write_yolo_scenes(root: Path):
    (root / "classes.txt").write_text("cat\ndog\n")
    for split in ("train", "val"):
        for name, w, h, objs in scene_records():
            save_image(root / "images" / split / name, (w, h))
            lines = [f"{c} {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}" for c, x0, y0, x1, y1 in objs]
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{Path(name).stem}.txt").write_text("\n".join(lines))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, interval: float = 1.0) -> None:
    """Wait until ``url`` answers 200 while ``proc`` lives; otherwise fail with the tail of the server's ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, f"{url} did not answer:\n{Path(log).read_text()[-3000:]}"
        time.sleep(interval)
