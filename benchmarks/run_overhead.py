"""Where a `kedro run` spends its time besides training (run by hand, never in CI): Kedro start-up, ingestion,
validation, augmentation, evaluation, plots and registration, in wall seconds and CPU seconds of the process (all
its threads and the processes it waited for, data-loader workers; robust to a machine shared with other jobs), with the machine's load average before and after.

Runs one `kedro run --pipelines=<task>` in a copy of the project (kept in --project between calls: the first call
generates the built-in data and the MLflow store; run it twice and read the second, the steady state). A timing
hook added by the driver (nothing in the project changes) stamps every node; the phases are

    start-up      process start -> first node (imports, settings and hooks, pipeline registry, session, catalog,
                  the MLflow run and the run record opened by the hooks)
    <node phase>  a node's own run (ingestion, validation, augmentation, training, evaluation, plots, registration)
    between nodes dataset loads/saves and the hooks around nodes (kedro-mlflow logging params and artifacts)
    end of run    last node -> process gone (after_pipeline_run hooks, the end-of-run summary, the interpreter's exit:
                  its final garbage collections over every imported module; "exit" is that last part alone)

and issue 21's overhead goal is start-up + validation + registration (<= 10 s on 2,000 images).
`--profile` also runs the process under cProfile (timer: process CPU time; cProfile inflates Python-heavy
phases, so read its seconds as shares) and lists the top functions outside training. `--source DIR` copies the
project from another checkout (e.g. /work/main) to compare two versions back to back.

    python benchmarks/run_overhead.py --project /tmp/overhead --images 2000      # twice
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import emit

ROOT = Path(__file__).resolve().parents[1]

PHASES = {  # node name (namespace stripped) -> phase
    "ingest_dataset": "ingestion", "check_dataset": "validation", "apply_validation_policy": "validation",
    "report_data_quality": "validation", "build_augmentation": "augmentation", "train_model": "training",
    "evaluate": "evaluation", "plot": "plots", "register_model": "registration",
}
GOAL = ("start-up", "validation", "registration")
NOT_OVERHEAD = ("training", "evaluation")

DRIVER = """
import json, os, sys, time


def cpu():  # this process's threads, and the processes it has waited for (data-loader workers)
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


events = [("start", time.time(), cpu())]
sys.argv = ["kedro", "run", "--pipelines={task}", "--params={params}"]
from kedro.framework.hooks import hook_impl
import kedro.framework.session.session as session


class Stamps:
    @hook_impl
    def before_node_run(self, node):
        events.append(("before:" + node.name, time.time(), cpu()))

    @hook_impl
    def after_node_run(self, node):
        events.append(("after:" + node.name, time.time(), cpu()))


_register = session._register_hooks
session._register_hooks = lambda manager, hooks: _register(manager, [*hooks, Stamps()])
from kedro.framework.cli import main
if {profile}:
    import cProfile
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code
if {profile}:
    profiler.disable()
    profiler.dump_stats({prof!r})
events.append(("exit", time.time(), cpu()))
with open({out!r}, "w") as f:
    json.dump(events, f)
sys.exit(code)
"""


def make_project(source: Path, root: Path) -> None:
    """A runnable copy of ``source``'s project: configuration and source (Kedro wants a src folder inside)."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "pyproject.toml", root)
    shutil.copytree(source / "conf", root / "conf", ignore=shutil.ignore_patterns("credentials*", "*.local.yml"))
    shutil.copytree(source / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data").mkdir()


def phases_of(events: list, launched: float, ended: float, total_cpu: float) -> dict[str, dict[str, float]]:
    """{phase: {"wall_s", "cpu_s"}} from the driver's stamps (time.time, process_time), the process's end (wall) and
    its CPU seconds (rusage)."""
    out: dict[str, dict[str, float]] = {}

    def add(phase, wall, cpu):
        slot = out.setdefault(phase, {"wall_s": 0.0, "cpu_s": 0.0})
        slot["wall_s"] += wall
        slot["cpu_s"] += cpu

    nodes = [e for e in events if e[0].startswith(("before:", "after:"))]
    first, last = nodes[0], nodes[-1]
    add("start-up", first[1] - launched, first[2])
    for (name, wall, cpu), (next_name, next_wall, next_cpu) in zip(nodes, nodes[1:]):
        if name.startswith("before:"):
            add(PHASES.get(name.split(":", 1)[1].rsplit(".", 1)[-1], "other nodes"), next_wall - wall, next_cpu - cpu)
        else:
            add("between nodes", next_wall - wall, next_cpu - cpu)
    add("end of run", ended - last[1], total_cpu - last[2])
    add("exit", ended - events[-1][1], total_cpu - events[-1][2])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout whose conf and src are copied")
    parser.add_argument("--task", default="classification")
    parser.add_argument("--images", type=int, default=2000, help="built-in images, 80 %% train / 20 %% val")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--profile", action="store_true", help="run under cProfile and list the top functions")
    args = parser.parse_args()

    if not (args.project / "conf").is_dir():
        make_project(args.source.resolve(), args.project)
    t = args.task
    train = args.images * 4 // 5
    params = ",".join([f"{t}.data.builtin.image_size={args.image_size}", f"{t}.data.builtin.train_images={train}",
                       f"{t}.data.builtin.val_images={args.images - train}", f"{t}.train.epochs=1",
                       f"{t}.train.image_size={args.image_size}", f"{t}.train.batch_size=64", f"{t}.train.device=cpu",
                       f"{t}.train.progress_bar=false"])
    prof, stamps = args.project / "run.prof", args.project / "run_stamps.json"
    # the copy's src, not a checkout's, is imported; bytecode is cached as Python does by default (a shell with
    # PYTHONDONTWRITEBYTECODE=1 would recompile the project's modules on every run)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    load_before = os.getloadavg()
    launched = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(task=t, params=params, out=str(stamps), prof=str(prof),
                                                               profile=args.profile)],
                          cwd=args.project, capture_output=True, text=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    ended = time.time()
    wall = ended - launched
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-3000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    phases = phases_of(json.loads(stamps.read_text()), launched, ended, cpu)
    goal = {k: round(sum(phases.get(p, {}).get(k, 0.0) for p in GOAL), 1) for k in ("wall_s", "cpu_s")}
    overhead = {k: round(total - sum(phases.get(p, {}).get(k, 0.0) for p in NOT_OVERHEAD), 1)
                for k, total in (("wall_s", wall), ("cpu_s", cpu))}
    figures = {"task": t, "images": args.images, "source": str(args.source), "profiled": args.profile,
               "load_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
               "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
               "goal_startup_validation_registration": goal, "overhead_all_but_training_evaluation": overhead,
               "phases": {k: {m: round(x, 2) for m, x in v.items()}
                          for k, v in sorted(phases.items(), key=lambda kv: -kv[1]["cpu_s"])}}
    if args.profile:
        stats = pstats.Stats(str(prof)).stats
        top = sorted(((v[3], f"{k[0].split('site-packages/')[-1].split('/src/')[-1]}:{k[1]}({k[2]})")
                      for k, v in stats.items() if "visionpipe" in k[0] and k[2] not in ("train_model", "fit", "evaluate_model")
                      and "cli.py" not in k[0]), reverse=True)[:20]
        figures["top_visionpipe_cpu_s_profiled"] = [(round(c, 2), n) for c, n in top]
    emit(figures)


if __name__ == "__main__":
    main()
