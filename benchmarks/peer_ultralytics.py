"""The Ultralytics side of benchmarks/peer.py. Runs INSIDE the peer virtualenv (benchmarks/.venv-peer:
Ultralytics is AGPL, a comparator only, never a visionpipe dependency); imports nothing of visionpipe.

    python peer_ultralytics.py detect   DATA_ROOT EPOCHS IMGSZ BATCH WORKDIR [DEVICE]
    python peer_ultralytics.py classify DATA_ROOT EPOCHS IMGSZ BATCH WORKDIR [DEVICE]

Models are built from their yaml (``yolo11n.yaml``), from scratch: no weights are downloaded. Prints one
JSON line: whole-run and per-epoch time, the accuracy (detection: pycocotools on the COCO val file, the
same scorer peer.py applies to visionpipe's predictions), model-load time and img/s at batch 1 and 16.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks, no hub, no downloads
os.environ.setdefault("YOLO_VERBOSE", "False")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def cpu_s() -> float:
    """CPU seconds of this process and its finished children (data-loader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def epoch_times(run_dir: Path) -> list[float]:
    """Seconds per epoch from results.csv's cumulative ``time`` column (training + validation)."""
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    cumulative = [float(r["time"]) for r in rows if r.get("time")]
    return [b - a for a, b in zip([0.0] + cumulative, cumulative)]


def throughput(model, arrays: list[np.ndarray], imgsz: int, batch: int) -> float:
    """img/s of ``model.predict`` over ``arrays`` in batches of ``batch`` (after one warm-up batch)."""
    model.predict(arrays[:batch], imgsz=imgsz, batch=batch, verbose=False)
    start = time.perf_counter()
    for i in range(0, len(arrays), batch):
        model.predict(arrays[i:i + batch], imgsz=imgsz, batch=batch, verbose=False)
    return len(arrays) / (time.perf_counter() - start)


def coco_map(gt_file: Path, results: list[dict]) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        if not results:
            return {"map": 0.0, "map_50": 0.0}
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": float(ev.stats[0]), "map_50": float(ev.stats[1])}


def main() -> None:
    mode, root, epochs, imgsz, batch, work = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6])
    device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
    from ultralytics import YOLO

    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    yaml_name = "yolo11n.yaml" if mode == "detect" else "yolo11n-cls.yaml"
    start, cpu = time.perf_counter(), cpu_s()
    model = YOLO(yaml_name)
    data = str(root / "data.yaml") if mode == "detect" else str(root)
    model.train(data=data, epochs=epochs, imgsz=imgsz, batch=batch, device=device, plots=False, project=str(work),
                name="train", exist_ok=True, seed=0, verbose=False, pretrained=False)
    wall, cpu = time.perf_counter() - start, cpu_s() - cpu
    run_dir = work / "train"
    best = run_dir / "weights" / "best.pt"
    start = time.perf_counter()
    trained = YOLO(str(best)).to(device)
    trained.predict(np.zeros((imgsz, imgsz, 3), np.uint8), imgsz=imgsz, verbose=False)  # the first call builds the predictor
    load_s = time.perf_counter() - start
    out = {"side": "ultralytics", "task": mode, "model": yaml_name.removesuffix(".yaml"), "epochs": epochs, "imgsz": imgsz,
           "whole_run_s": round(wall, 1), "run_cpu_s": round(cpu, 1), "epoch_s": [round(t, 2) for t in epoch_times(run_dir)],
           "params_m": round(sum(p.numel() for p in trained.model.parameters()) / 1e6, 2), "load_s": round(load_s, 3)}
    if mode == "detect":
        gt = json.loads((root / "annotations" / "instances_val.json").read_text())
        files = [(img["id"], root / "images" / "val" / img["file_name"]) for img in gt["images"]]
        arrays = [np.asarray(Image.open(p).convert("RGB"))[..., ::-1].copy() for _, p in files]  # Ultralytics takes BGR arrays
        results = []
        for (image_id, _), res in zip(files, trained.predict(arrays, imgsz=imgsz, conf=0.001, iou=0.7, max_det=100, verbose=False, batch=16)):
            for (x0, y0, x1, y1), score, cls in zip(res.boxes.xyxy.tolist(), res.boxes.conf.tolist(), res.boxes.cls.tolist()):
                results.append({"image_id": image_id, "category_id": int(cls) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
        out.update(coco_map(root / "annotations" / "instances_val.json", results))
    else:
        paths = sorted((root / "val").glob("*/*.png"))
        classes = sorted(p.name for p in (root / "val").iterdir())
        arrays = [np.asarray(Image.open(p).convert("RGB"))[..., ::-1].copy() for p in paths]
        preds = [r.probs.top1 for r in trained.predict(arrays, imgsz=imgsz, verbose=False, batch=16)]
        names = trained.names
        out["top1"] = float(np.mean([names[p] == path.parent.name for p, path in zip(preds, paths)]))
        del classes
    out["img_s_b1"] = round(throughput(trained, arrays[:64], imgsz, 1), 1)
    out["img_s_b16"] = round(throughput(trained, arrays[:128], imgsz, 16), 1)
    print("PEER " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
