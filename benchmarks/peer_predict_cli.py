"""`visionpipe predict` against `yolo predict`, end to end (process start, imports, model load, every image,
output written), on the detection val images of a finished ``benchmarks/peer.py --workdir DIR`` run: the
registered champion of its visionpipe project (engine auto: ONNX Runtime on CPU), resolved from the store
(``models:/...@champion``) and, as Ultralytics reads its best.pt, from a local folder (the champion downloaded once
beforehand, untimed: ``--model-uri DIR``), against Ultralytics' best.pt, batch 1, alternated ``--rounds`` times.
Wall and CPU seconds (getrusage of the finished child) per command.

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
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="the src folder of another checkout (e.g. a worktree at an older commit): its `predict` "
                         "(models:/ champion) is timed too, in the same rounds")
    args = ap.parse_args()
    images = args.workdir / "scenes" / "images" / "val"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": f"{HERE.parent / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    vp = [str(Path(sys.executable).with_name("visionpipe")), "predict", "--task", "detection", "--images", str(images),
          "--output", str(args.workdir / "predict_cli.jsonl"), "--batch-size", "1", "--no-progress"]
    ul = [str(args.peer_venv / "bin" / "yolo"), "predict", f"model={args.workdir / 'ul-detection' / 'train' / 'weights' / 'best.pt'}",
          f"source={images}", "imgsz=128", "batch=1", "save=False", "verbose=False"]
    project, local = args.workdir / "vp-detection" / "project", args.workdir / "vp-detection" / "champion_model"
    if not (local / "MLmodel").is_file():  # the registered champion as a local folder, once, untimed
        subprocess.run([sys.executable, "-c", "import mlflow, sys; mlflow.set_tracking_uri('sqlite:///mlflow.db'); "
                        "from visionpipe.tracking.lookup import default_model_uri; "
                        "mlflow.artifacts.download_artifacts(artifact_uri=default_model_uri('detection'), dst_path=sys.argv[1])",
                        str(local)], cwd=project, env=env, check=True, capture_output=True)
    rows = []
    for _ in range(args.rounds):
        load = os.getloadavg()[0]
        a = timed(vp, project, env)
        b = timed(ul, args.workdir, {**env, "YOLO_OFFLINE": "1", "PYTHONPATH": ""})
        c = timed([*vp, "--model-uri", str(local)], project, env)
        rows.append({"visionpipe_wall_cpu_s": a, "ultralytics_wall_cpu_s": b, "visionpipe_local_wall_cpu_s": c,
                     "load_avg": round(load, 1)})
        if args.baseline_src:
            rows[-1]["baseline_wall_cpu_s"] = timed(vp, project, {**env, "PYTHONPATH": str(args.baseline_src.resolve())})
    ratio = lambda key, i: [round(r[key][i] / r["ultralytics_wall_cpu_s"][i], 2) for r in rows]  # noqa: E731
    emit({"benchmark": "peer_predict_cli", "images": len(list(images.glob("*.png"))), "rounds": rows,
          "wall_ratio": ratio("visionpipe_wall_cpu_s", 0), "cpu_ratio": ratio("visionpipe_wall_cpu_s", 1),
          "local_wall_ratio": ratio("visionpipe_local_wall_cpu_s", 0), "local_cpu_ratio": ratio("visionpipe_local_wall_cpu_s", 1),
          **({"baseline_cpu_ratio": ratio("baseline_wall_cpu_s", 1)} if args.baseline_src else {})})


if __name__ == "__main__":
    main()
