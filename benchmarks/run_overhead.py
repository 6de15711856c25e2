"""Where a `kedro run` spends its time besides training (run by hand, never in CI): Kedro start-up, ingestion,
validation, augmentation, evaluation, plots and registration, in CPU seconds of the process (robust to a machine
shared with other jobs) and wall seconds.

Profiles one `kedro run --pipelines=<task>` with cProfile (timer: process CPU time) in a copy of the project
(kept in --project between calls: the first call generates the built-in data and the MLflow store; run it twice
and read the second, the steady state), then prints the phases and the top functions outside training.

    python benchmarks/run_overhead.py --project /tmp/overhead --images 2000      # twice
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import time
from pathlib import Path

from _common import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

PHASES = {  # node / hook functions -> phase
    "bootstrap_project": "start-up", "after_context_created": "start-up", "after_catalog_created": "start-up",
    "before_pipeline_run": "start-up", "ingest_dataset": "ingestion", "check_dataset": "validation",
    "apply_validation_policy": "validation", "report_data_quality": "validation", "build_augmentation": "augmentation",
    "train_model": "training", "evaluate_model": "evaluation", "plot_evaluation": "plots", "register_model": "registration",
    "after_pipeline_run": "end of run",
}
PROFILER = """
import cProfile, sys, time
sys.argv = ["kedro", "run", "--pipelines={task}", "--params={params}"]
from kedro.framework.cli import main
profiler = cProfile.Profile(time.process_time)
profiler.enable()
try:
    main()
except SystemExit as exit:
    code = exit.code
profiler.disable()
profiler.dump_stats({out!r})
sys.exit(code)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--task", default="classification")
    parser.add_argument("--images", type=int, default=2000, help="built-in images, 80 %% train / 20 %% val")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    from support import make_project

    if not (args.project / "conf").is_dir():
        args.project.mkdir(parents=True, exist_ok=True)
        make_project(args.project)
    t = args.task
    train = args.images * 4 // 5
    params = ",".join([f"{t}.data.builtin.image_size={args.image_size}", f"{t}.data.builtin.train_images={train}",
                       f"{t}.data.builtin.val_images={args.images - train}", f"{t}.train.epochs=1",
                       f"{t}.train.image_size={args.image_size}", f"{t}.train.batch_size=64", f"{t}.train.device=cpu",
                       f"{t}.train.progress_bar=false"])
    out = args.project / "run.prof"
    started = time.perf_counter()
    cpu = time.process_time()
    proc = subprocess.run([sys.executable, "-c", PROFILER.format(task=t, params=params, out=str(out))], cwd=args.project,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    stats = pstats.Stats(str(out)).stats
    phases: dict[str, float] = {}
    for (path, _, name), (_, _, _, cumulative, _) in stats.items():
        if name in PHASES and ("visionpipe" in path or "kedro" in path):
            phases[PHASES[name]] = phases.get(PHASES[name], 0.0) + cumulative
    total = sum(v[2] for v in stats.values())  # own time of every function: the profiled CPU seconds
    overhead = total - phases.get("training", 0.0) - phases.get("evaluation", 0.0)
    top = sorted(((v[3], f"{k[0].split('site-packages/')[-1].split('/src/')[-1]}:{k[1]}({k[2]})") for k, v in stats.items()
                  if "visionpipe" in k[0] and k[2] not in ("train_model", "fit", "evaluate_model")), reverse=True)[:15]
    emit({"task": t, "images": args.images, "wall_s": round(wall, 1), "cpu_s": round(total, 1),
          "cpu_overhead_s": round(overhead, 1), "phases_cpu_s": {k: round(v, 2) for k, v in sorted(phases.items(), key=lambda kv: -kv[1])},
          "top_visionpipe_cpu_s": [(round(c, 2), n) for c, n in top]})


if __name__ == "__main__":
    main()
