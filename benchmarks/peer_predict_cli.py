"""`visionpipe predict` against `yolo predict`, end to end (process start, imports, model load, every image,
output written), on the detection val images of a finished ``benchmarks/peer.py --workdir DIR`` run: the
registered champion of its visionpipe project (engine auto: ONNX Runtime on CPU) and Ultralytics' best.pt,
batch 1, alternated ``--rounds`` times. Wall and CPU seconds (getrusage of the finished child) per side.

    python benchmarks/peer.py --tasks detection --workdir /tmp/peer
    python benchmarks/peer_predict_cli.py --workdir /tmp/peer
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import emit

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return round(wall, 2), round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", type=Path, required=True, help="a finished peer.py --workdir (detection)")
    ap.add_argument("--peer-venv", type=Path, default=HERE / ".venv-peer")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    images = args.workdir / "scenes" / "images" / "val"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": f"{HERE.parent / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    vp = [str(Path(sys.executable).with_name("visionpipe")), "predict", "--task", "detection", "--images", str(images),
          "--output", str(args.workdir / "predict_cli.jsonl"), "--batch-size", "1", "--no-progress"]
    ul = [str(args.peer_venv / "bin" / "yolo"), "predict", f"model={args.workdir / 'ul-detection' / 'train' / 'weights' / 'best.pt'}",
          f"source={images}", "imgsz=128", "batch=1", "save=False", "verbose=False"]
    rows = []
    for _ in range(args.rounds):
        load = os.getloadavg()[0]
        a = timed(vp, args.workdir / "vp-detection" / "project", env)
        b = timed(ul, args.workdir, {**env, "YOLO_OFFLINE": "1", "PYTHONPATH": ""})
        rows.append({"visionpipe_wall_cpu_s": a, "ultralytics_wall_cpu_s": b, "load_avg": round(load, 1)})
    emit({"benchmark": "peer_predict_cli", "images": len(list(images.glob("*.png"))), "rounds": rows,
          "wall_ratio": [round(r["visionpipe_wall_cpu_s"][0] / r["ultralytics_wall_cpu_s"][0], 2) for r in rows],
          "cpu_ratio": [round(r["visionpipe_wall_cpu_s"][1] / r["ultralytics_wall_cpu_s"][1], 2) for r in rows]})


if __name__ == "__main__":
    main()
