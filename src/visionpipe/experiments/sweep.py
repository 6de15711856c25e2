"""Parameter sweeps: one nested MLflow child run per point under one parent run, a comparison table
and plot on the parent, and only the best point through the champion gate.

Each point runs in its own process (``visionpipe.experiments.sweep_point``): a point that fails (bad
parameters, out of memory, a crash) is recorded as failed and the others go on; ``--jobs N`` runs N
points at once, each process seeing one GPU through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any

import yaml

from visionpipe.errors import ConfigError
from visionpipe.run_record import task_experiment

logger = logging.getLogger(__name__)

SWEEPS_DIR = "data/sweeps"  # <project>/data/sweeps/<task>/<sweep name>/point-NN/data/...


# ---------------------------------------------------------------- points

def _parse_value(text: str, where: str) -> list:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot read {text!r} ({err})") from None
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: the list of values is empty")
    return values


def parse_grid(specs) -> list[dict[str, Any]]:
    """``["train.lr=[0.001,0.01]", "model.name=[a,b]"]`` -> the 4 points of the cartesian product."""
    axes: dict[str, list] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--grid {spec!r}: expected KEY=[v1,v2,...], e.g. train.lr=[0.001,0.01]")
        axes[key] = _parse_value(values, f"--grid {key}")
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def points_from_file(path: str | Path) -> list[dict[str, Any]]:
    """A sweep file: ``{grid: {train.lr: [...], model.name: [...]}}`` or ``{points: [{train.lr: 0.01}, ...]}``."""
    path = Path(path)
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict) or set(content) - {"grid", "points"} or not content:
        raise ConfigError(f"{path}: a sweep file holds `grid:` (key -> list of values) and/or `points:` (list of mappings)")
    points = []
    grid = content.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: grid must map parameter keys to lists of values")
    if grid:
        axes = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
        points += [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    for i, point in enumerate(content.get("points") or []):
        if not isinstance(point, dict) or not point:
            raise ConfigError(f"{path}: points[{i}] must be a mapping of parameter keys to values")
        points.append(dict(point))
    return points


def set_dotted(block: dict, key: str, value: Any, task: str) -> dict:
    """``block`` with ``key`` (e.g. ``train.lr``) set; an unknown key is an error naming it."""
    out = copy.deepcopy(block)
    node = out
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is not None:
                raise ConfigError(f"sweep key {key}: {task}.{'.'.join(parts[:i + 1])} is not a mapping")
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return out


def point_overrides(task: str, params: dict, point: dict[str, Any]) -> dict:
    """The task block for ``point``, checked by the task's config model (typos fail before anything runs)."""
    from visionpipe.tasks import parse_task_config

    block = params
    for key, value in point.items():
        block = set_dotted(block, key, value, task)
    try:
        parse_task_config(task, block)
    except Exception as err:  # pydantic ValidationError or ConfigError: name the point
        raise ConfigError(f"sweep point {point}: {err}") from None
    return block


def _nested(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for key, value in flat.items():
        out = set_dotted(out, key, value, "")
    return out


# ---------------------------------------------------------------- running

@dataclass
class PointResult:
    """What one point produced: its status, MLflow run, folder and final metrics."""

    index: int
    params: dict[str, Any]
    run_id: str
    point_dir: Path
    status: str = "pending"
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class SweepSummary:
    """The sweep's outcome: every point, the best one, and the champion gate's decision."""

    task: str
    parent_run_id: str
    metric: str
    points: list[PointResult]
    best: PointResult | None
    decision: dict | None
    comparison_csv: Path

    def table(self) -> str:
        """Plain-text summary for the terminal."""
        import pandas as pd

        frame = pd.read_csv(self.comparison_csv)
        lines = [f"sweep of {self.task}: parent MLflow run {self.parent_run_id}", frame.to_string(index=False)]
        if self.best is None:
            lines.append("no point succeeded: nothing registered")
        else:
            lines.append(f"best: point {self.best.index} {self.best.params} {self.metric}={self.best.metrics.get(self.metric)}")
            if self.decision and "version" in self.decision:
                moved = "moved to it" if self.decision.get("promoted") else "kept by the champion"
                lines.append(f"registry: {self.decision['model_name']} v{self.decision['version']}, "
                             f"alias '{self.decision.get('alias')}' {moved}")
            elif self.decision:
                lines.append(f"registry: {self.decision}")
        lines.append(f"comparison: {self.comparison_csv}")
        return "\n".join(lines)


def run_parallel(items: list, work, jobs: int = 1, gpus: list[str] | None = None) -> None:
    """``work(item, gpu)`` for every item, at most ``jobs`` at once; each call holds one GPU id of ``gpus``
    (default ``0..jobs-1`` when ``jobs > 1``, none when sequential) that no concurrent call holds."""
    if gpus is None and jobs > 1:
        gpus = [str(i) for i in range(jobs)]
    slots = gpus[:jobs] if gpus else [None] * jobs
    free: Queue = Queue()
    for gpu in slots:
        free.put(gpu)

    def one(item) -> None:
        gpu = free.get()
        try:
            work(item, gpu)
        finally:
            free.put(gpu)

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        list(pool.map(one, items))


def _context(project: Path, env: str | None):
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    session = KedroSession.create(project_path=project, env=env)
    return session, session.load_context()


def _run_process(spec: dict, gpu: str | None, tracking_uri: str) -> tuple[int, str]:
    point_dir = Path(spec["point_dir"])
    point_dir.mkdir(parents=True, exist_ok=True)
    spec_file = point_dir / "point.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log = point_dir / "run.log"
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "visionpipe.experiments.sweep_point", str(spec_file)],
                              cwd=spec["project"], env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    return proc.returncode, log.read_text(errors="replace")


def _last_error(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "Exception" in line]
    return (errors or lines or ["(no output)"])[-1][:500]


def _read_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float))}


def comparison_frame(points: list[PointResult]):
    """One row per point: index, status, run id, the swept parameters and the final metrics."""
    import pandas as pd

    rows = [{"point": p.index, "status": p.status, "run_id": p.run_id, **p.params, **p.metrics,
             **({"error": p.error} if p.error else {})} for p in points]
    return pd.DataFrame(rows)


def comparison_plot(frame, metric: str, keys: list[str]):
    """A bar per point of the gate's metric (failed points in red, without a bar), labelled with its parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{row['point']}: " + ", ".join(f"{k}={row[k]}" for k in keys) for _, row in frame.iterrows()]
    values = frame[metric] if metric in frame else [float("nan")] * len(frame)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(frame)), 4.5))
    ax.bar(range(len(frame)), values, color=["tab:blue" if s == "finished" else "tab:red" for s in frame["status"]])
    ax.set_xticks(range(len(frame)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"sweep: {metric} per point (red: failed)")
    fig.tight_layout()
    return fig


def champion_gate(run_id: str, point_dir: Path, task: str, metrics: dict[str, float], params: dict,
                  model_path: str, index_path: str) -> dict:
    """The best point through the champion gate, inside its own (child) run: the registration node itself,
    so a sweep's champion is judged exactly as a `kedro run`'s (same data check, re-scoring, gate metric)."""
    import mlflow

    from visionpipe.experiments.integrity import verify_task_data
    from visionpipe.io import ModelBundleDataset
    from visionpipe.pipelines.registration.nodes import register_model

    index = json.loads((point_dir / index_path).read_text())
    verify_task_data(index["root"])
    bundle = ModelBundleDataset(str(point_dir / model_path)).load()
    with mlflow.start_run(run_id=run_id, nested=True):
        return register_model(bundle, metrics, index, params, task)


def run_sweep(project: str | Path, task: str, points: list[dict[str, Any]], jobs: int = 1, gpus: list[str] | None = None,
              env: str | None = None, name: str | None = None) -> SweepSummary:
    """Run every point, compare them on the parent run, and send only the best through the champion gate."""
    import mlflow
    from kedro.io.catalog_config_resolver import CatalogConfigResolver

    from visionpipe.ranking import is_better
    from visionpipe.tasks import parse_task_config
    from visionpipe.settings import tracking_uri as default_tracking_uri

    project = Path(project).resolve()
    session, context = _context(project, env)
    with session:
        params = context.params[task]
        experiment = context.mlflow.tracking.experiment.name  # kedro-mlflow configured the store and experiment
        catalog_conf = context.config_loader["catalog"]
    resolver = CatalogConfigResolver(catalog_conf, default_runtime_patterns={"{default}": {"type": "kedro.io.MemoryDataset"}})

    def catalog_path(dataset: str) -> str:
        config = resolver.resolve_pattern(f"{task}.{dataset}")
        while isinstance(config, dict) and not (config.get("filepath") or config.get("path")):
            config = config.get("dataset")
        path = Path(config.get("filepath") or config.get("path"))
        return (path.relative_to(project) if path.is_absolute() else path).as_posix()

    blocks = [point_overrides(task, params, point) for point in points]  # every point checked before any runs
    registry = parse_task_config(task, params).registry
    uri = mlflow.get_tracking_uri() or default_tracking_uri()
    mlflow.set_experiment(task_experiment(experiment, task))  # beside the task's own runs
    name = name or f"sweep-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    sweep_dir = project / SWEEPS_DIR / task / name
    if sweep_dir.exists():
        raise ConfigError(f"{sweep_dir} exists: choose another --name")
    if params["data"].get("root") is None and not any(k.startswith("data.builtin") for p in points for k in p):
        # generate the shared built-in data once, before parallel points would race to write it
        from visionpipe.experiments.ownership import builtin_data_for_ingestion

        builtin_cfg = params["data"]["builtin"]
        builtin_data_for_ingestion(project / builtin_cfg.get("path", "data/01_raw/builtin") / task, task,
                                   parse_task_config(task, params).data.builtin.model_dump(exclude={"path"}), project)
    client = mlflow.MlflowClient()

    with mlflow.start_run(run_name=name, tags={"visionpipe.task": task, "visionpipe.sweep": name}) as parent:
        mlflow.log_dict({"task": task, "points": points, "jobs": jobs}, "sweep.json")
        results = []
        for i, (point, block) in enumerate(zip(points, blocks)):
            child = client.create_run(parent.info.experiment_id, run_name=f"{name}-{i:02d}", tags={
                "mlflow.parentRunId": parent.info.run_id, "visionpipe.task": task, "visionpipe.sweep": name,
                "visionpipe.sweep.point": str(i), **{f"sweep.{k}": str(v) for k, v in point.items()}})
            results.append(PointResult(i, point, child.info.run_id, sweep_dir / f"point-{i:02d}"))

        def run_one(item: tuple[PointResult, dict], gpu: str | None) -> None:
            result, block = item
            overrides = dict(result.params)
            # the built-in data is shared (read-only) unless the point changes how it is generated
            builtin_path = (result.point_dir / "data/01_raw/builtin" if any(k.startswith("data.builtin") for k in overrides)
                            else project / block["data"]["builtin"].get("path", "data/01_raw/builtin"))
            overrides.update({"registry.enabled": False, "data.builtin.path": str(builtin_path),
                              "train.checkpoint_dir": str(result.point_dir / "checkpoints")})
            if block["data"].get("root") and not Path(block["data"]["root"]).is_absolute():
                overrides["data.root"] = str(project / block["data"]["root"])
            spec = {"project": str(project), "point_dir": str(result.point_dir), "task": task, "env": env,
                    "run_id": result.run_id, "runtime_params": {task: _nested(overrides)}}
            logger.info("sweep point %d/%d %s (run %s)", result.index + 1, len(results), result.params, result.run_id)
            try:
                code, log = _run_process(spec, gpu, uri)
            except OSError as err:  # the process could not even start: this point fails, the others go on
                code, log = -1, f"OSError: {err}"
            result.metrics = _read_metrics(result.point_dir / catalog_path("metrics"))
            if code == 0 and result.metrics:
                result.status = "finished"
                return
            result.status, result.error = "failed", _last_error(log)
            logger.warning("sweep point %d %s failed: %s (log: %s)", result.index, result.params, result.error,
                           result.point_dir / "run.log")
            client.set_tag(result.run_id, "visionpipe.error", result.error[:5000])
            client.log_artifact(result.run_id, str(result.point_dir / "run.log"))
            if client.get_run(result.run_id).info.status != "FAILED":
                client.set_terminated(result.run_id, "FAILED")

        run_parallel(list(zip(results, blocks)), run_one, jobs, gpus)

        frame = comparison_frame(results)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        csv = sweep_dir / "comparison.csv"
        frame.to_csv(csv, index=False)
        mlflow.log_artifact(str(csv))
        import matplotlib.pyplot as plt

        fig = comparison_plot(frame, registry.metric, list(dict.fromkeys(k for p in points for k in p)))
        mlflow.log_figure(fig, "comparison.png")
        fig.savefig(sweep_dir / "comparison.png")
        plt.close(fig)

        best = None
        for result in results:
            score = result.metrics.get(registry.metric)
            if result.status == "finished" and score is not None and (
                    best is None or is_better(score, best.metrics[registry.metric], registry.greater_is_better)):
                best = result
        decision = None
        if best is not None:
            mlflow.set_tags({"visionpipe.sweep.best_run_id": best.run_id, "visionpipe.sweep.best_point": str(best.index)})
            mlflow.log_metric(f"best_{registry.metric}", best.metrics[registry.metric])
            decision = champion_gate(best.run_id, best.point_dir, task, best.metrics, blocks[best.index],
                                     catalog_path("model"), catalog_path("clean_index"))
            (sweep_dir / "registration.json").write_text(json.dumps(decision, indent=2, default=str))
        failed = sum(r.status == "failed" for r in results)
        mlflow.set_tags({"visionpipe.sweep.points": str(len(results)), "visionpipe.sweep.failed": str(failed)})
        if best is None:
            mlflow.set_tag("visionpipe.sweep.status", "every point failed")
    if best is None:
        client.set_terminated(parent.info.run_id, "FAILED")
    return SweepSummary(task, parent.info.run_id, registry.metric, results, best, decision, csv)
