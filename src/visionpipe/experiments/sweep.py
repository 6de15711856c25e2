"""Sweeps on Optuna: a study in a relational database (SQLite under ``data/sweeps/`` by default, PostgreSQL
for a team) that any number of workers join by name, one nested MLflow child run per trial under one parent
run, a comparison table and plot on the parent, and only the best trial through the champion gate.

- ``--search KEY=log[lo,hi] | float[lo,hi] | int[lo,hi] | [a,b,...]``: Optuna's TPE sampler (with the
  constant liar, so concurrent workers do not pile onto one point); ``--grid``/``--file``: its grid sampler.
- A worker (``visionpipe sweep ... --name NAME``) runs trials until the study holds ``--trials`` of them
  (complete, pruned, failed by their own error, or running), waits for the others' running trials, and
  ends. The first worker creates the study and the MLflow parent run (tag ``sweep.study``); the others
  attach to both. One worker per GPU: start each with its own ``CUDA_VISIBLE_DEVICES``.
- Every worker records a heartbeat for its running trial; a worker that dies (killed, machine lost) leaves
  a trial that the next heartbeat check of any worker marks FAILED (its MLflow run too) and queues once
  more with the same parameters, so the study still ends with its N trials.
- ``--prune``: the registry metric is reported to the trial after every epoch (a training callback) and
  Optuna's median pruner stops trials below the median of earlier ones at the same epoch (PRUNED).
- When the study is done, the worker that ran the best trial (it holds the model on disk) logs
  ``comparison.csv``/``comparison.png`` on the parent, tags it ``sweep.best_run_id`` and sends that
  trial's model through the registration node.

Each trial runs in its worker's process, in a Kedro session whose project path is the trial's own folder
(``visionpipe.experiments.sweep_point``), so no two trials write over each other's outputs.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import re
import socket
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from kedro.io.catalog_config_resolver import CatalogConfigResolver
from sqlalchemy.engine import make_url

from visionpipe.errors import ConfigError
from visionpipe.experiments.integrity import verify_task_data
from visionpipe.experiments.ownership import builtin_data_for_ingestion
from visionpipe.experiments.sweep_point import pruning, run_point
from visionpipe.io import ModelBundleDataset
from visionpipe.pipelines.registration.nodes import register_model
from visionpipe.ranking import is_better
from visionpipe.run_record import EXPERIMENT_TAGS, create_experiment_once, task_experiment
from visionpipe.tasks import parse_task_config

logger = logging.getLogger(__name__)

SWEEPS_DIR = "data/sweeps"  # <project>/data/sweeps/<task>/<study name>/trial-NNN/data/...
STORAGE_ENV = "VISIONPIPE_SWEEP_STORAGE"
DEFAULT_HEARTBEAT_S = 60  # a running trial's heartbeat; stale (its worker gone) after GRACE_FACTOR of them
GRACE_FACTOR = 3
PRUNER = {"n_startup_trials": 5, "n_warmup_steps": 2}  # MedianPruner: 5 trials before any pruning; epochs count from 1, the first is never judged
PARENT_WAIT_S = 120  # how long a joining worker waits for the first worker to create the parent run
_COUNTED = ("COMPLETE", "PRUNED", "RUNNING")


# ---------------------------------------------------------------- points and search spaces

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


def split_params(text: str) -> dict[str, Any]:
    """``--params "data.root=/d,train.epochs=2,model.name=[a,b]"`` -> typed values (commas inside brackets stay)."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    out: dict[str, Any] = {}
    for item in filter(str.strip, items):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--params {item.strip()!r}: expected KEY=VALUE, e.g. train.epochs=2")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ConfigError(f"--params {key.strip()}: cannot read {value!r} ({err})") from None
    return out


@dataclass(frozen=True)
class Dimension:
    """One searched parameter: ``kind`` is log, float, int (a range) or choice (a list)."""
    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()

    def sample_value(self):
        """A value of the dimension, to check the key against the task's config before anything runs."""
        return self.choices[0] if self.kind == "choice" else self.low


_RANGE = re.compile(r"^(log|float|int)\s*\[\s*([^,\]]+)\s*,\s*([^,\]]+)\s*\]$")


def parse_search(specs) -> dict[str, Dimension]:
    """``["train.lr=log[1e-5,1e-2]", "train.epochs=int[2,8]", "model.name=[resnet18,resnet34]"]`` -> dimensions."""
    dims: dict[str, Dimension] = {}
    for spec in specs:
        key, sep, rhs = spec.partition("=")
        key, rhs = key.strip(), rhs.strip()
        usage = (f"--search {spec!r}: expected KEY=log[lo,hi], KEY=float[lo,hi], KEY=int[lo,hi] or KEY=[a,b,...], "
                 "e.g. train.lr=log[1e-5,1e-2]")
        if not sep or not key or not rhs:
            raise ConfigError(usage)
        if key in dims:
            raise ConfigError(f"--search {key}: given twice")
        match = _RANGE.match(rhs)
        if match:
            kind, low, high = match.groups()
            try:
                low, high = (int(low), int(high)) if kind == "int" else (float(low), float(high))
            except ValueError:
                raise ConfigError(f"--search {key}: {kind}[lo,hi] needs {'integers' if kind == 'int' else 'numbers'}, "
                                  f"got {rhs!r}") from None
            if not low < high:
                raise ConfigError(f"--search {key}: the low end must be below the high end, got {rhs!r}")
            if kind == "log" and low <= 0:
                raise ConfigError(f"--search {key}: log[lo,hi] needs lo > 0, got {rhs!r}")
            dims[key] = Dimension(key, kind, low, high)
        elif rhs.startswith("["):
            choices = _parse_value(rhs, f"--search {key}")
            bad = [c for c in choices if not (c is None or isinstance(c, (str, int, float, bool)))]
            if bad:
                raise ConfigError(f"--search {key}: choices must be single values (text, numbers, true/false), got {bad[0]!r}")
            dims[key] = Dimension(key, "choice", choices=tuple(choices))
        else:
            raise ConfigError(usage)
    return dims


def suggest(trial, dims: dict[str, Dimension]) -> dict[str, Any]:
    """The trial's values for ``dims`` (TPE, or fixed ones for a retried trial)."""
    out = {}
    for key, dim in dims.items():
        if dim.kind == "choice":
            out[key] = trial.suggest_categorical(key, list(dim.choices))
        elif dim.kind == "int":
            out[key] = trial.suggest_int(key, dim.low, dim.high)
        else:
            out[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.kind == "log")
    return out


def grid_space(points: list[dict[str, Any]]) -> dict[str, list]:
    """The grid sampler's search space for ``points``: their own keys and values when the points are a full
    cartesian product of single values (a ``--grid``), else one ``point`` axis of their indices (a file's points)."""
    keys = list(dict.fromkeys(k for p in points for k in p))
    scalar = all(v is None or isinstance(v, (str, int, float, bool)) for p in points for v in p.values())
    if scalar and all(set(p) == set(keys) for p in points):
        axes = {k: list(dict.fromkeys(p[k] for p in points)) for k in keys}
        product = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
        if len(product) == len(points) and all(p in points for p in product):
            return axes
    return {"point": list(range(len(points)))}


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


# ---------------------------------------------------------------- results

@dataclass
class PointResult:
    """What one trial produced: its state (finished, pruned, failed, running), MLflow run, folder and final metrics."""
    index: int
    params: dict[str, Any]
    run_id: str
    point_dir: Path
    status: str = "pending"
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    worker: str = ""


def pick_best(points: list[PointResult], registry) -> PointResult | None:
    """The finished point with the best ``registry.metric`` in the registry's direction (``registry.greater``:
    a null ``greater_is_better`` means lower is better for a loss, higher for anything else), or None."""
    metric, greater = registry.metric, registry.greater
    best = None
    for point in points:
        score = point.metrics.get(metric)
        if point.status == "finished" and score is not None and (best is None or is_better(score, best.metrics[metric], greater)):
            best = point
    return best


def comparison_frame(points: list[PointResult]):
    """One row per point: index, status, run id, the swept parameters and the final metrics."""
    rows = [{"point": p.index, "status": p.status, "run_id": p.run_id, **p.params, **p.metrics,
             **({"error": p.error} if p.error else {})} for p in points]
    return pd.DataFrame(rows)


_COLOURS = {"finished": "tab:blue", "pruned": "tab:gray"}


def comparison_plot(frame, metric: str, keys: list[str]):
    """A bar per point of the gate's metric (grey: pruned, red: failed, without a bar), labelled with its parameters."""
    import matplotlib  # seconds to import: only the comparison plot pays it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def shown(value):
        return f"{value:.3g}" if isinstance(value, float) else value

    labels = [f"{row['point']}: " + ", ".join(f"{k}={shown(row[k])}" for k in keys if k in row) for _, row in frame.iterrows()]
    values = frame[metric] if metric in frame else [float("nan")] * len(frame)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(frame)), 4.5))
    ax.bar(range(len(frame)), values, color=[_COLOURS.get(s, "tab:red") for s in frame["status"]])
    ax.set_xticks(range(len(frame)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"sweep: {metric} per trial (grey: pruned, red: failed)")
    fig.tight_layout()
    return fig


@dataclass
class SweepSummary:
    """The study's outcome as this worker saw it: every trial, the best one, and the champion gate's decision."""
    task: str
    study: str
    parent_run_id: str
    metric: str
    points: list[PointResult]
    best: PointResult | None
    decision: dict | None
    comparison_csv: Path | None
    note: str = ""

    def table(self) -> str:
        """Plain-text summary for the terminal."""
        frame = comparison_frame(self.points)
        lines = [f"sweep {self.study} of {self.task}: parent MLflow run {self.parent_run_id}",
                 frame.to_string(index=False) if len(frame) else "(no trials)"]
        if self.best is None:
            lines.append("no trial finished: nothing registered")
        else:
            lines.append(f"best: trial {self.best.index} {self.best.params} {self.metric}={self.best.metrics.get(self.metric)}"
                         f" (run {self.best.run_id})")
            if self.decision and "version" in self.decision:
                moved = "moved to it" if self.decision.get("promoted") else "kept by the champion"
                lines.append(f"registry: {self.decision['model_name']} v{self.decision['version']}, "
                             f"alias '{self.decision.get('alias')}' {moved}")
            elif self.decision:
                lines.append(f"registry: {self.decision}")
        if self.note:
            lines.append(self.note)
        if self.comparison_csv:
            lines.append(f"comparison: {self.comparison_csv}")
        return "\n".join(lines)


# ---------------------------------------------------------------- storage

def default_storage(project: Path) -> str:
    """The project's own study database: ``data/sweeps/optuna.db`` (one machine)."""
    return f"sqlite:///{project / SWEEPS_DIR / 'optuna.db'}"


def shown_url(url: str) -> str:
    """``url`` with its password masked, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: the error about it names it
        return url


def open_storage(url: str, heartbeat_s: int = DEFAULT_HEARTBEAT_S, on_stale=None):
    """Optuna's RDB storage on ``url`` with heartbeats; ``on_stale(study, trial)`` runs for each trial whose
    worker stopped beating (after Optuna marks it FAILED)."""

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 120}}  # workers on one machine wait for each other's writes
    else:
        engine = {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                                              grace_period=GRACE_FACTOR * heartbeat_s, heartbeat_stale_trial_callback=on_stale)
    except Exception as err:  # a bad URL, a missing driver, a server that does not answer
        raise ConfigError(f"sweep storage {shown_url(url)} (--storage or {STORAGE_ENV}): cannot open it: "
                          f"{str(err).splitlines()[0][:300]}") from None


# ---------------------------------------------------------------- the worker

def _context(project: Path, env: str | None):
    bootstrap_project(project)
    session = KedroSession.create(project_path=project, env=env)
    return session, session.load_context()


def _read_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(path.read_text()).items() if isinstance(v, (int, float))}


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:500]


def worker_id() -> str:
    """``host:pid`` of this worker (recorded on each trial it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_gone(worker: str) -> bool:
    """Whether ``worker`` was a process of this machine that no longer runs."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class TrialError(Exception):
    """A trial failed by its own error (bad parameters, a crash in training): recorded, the study goes on."""


_STATUS = {"COMPLETE": "finished", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def trial_results(study, points: list[dict] | None) -> list[PointResult]:
    """The study's trials as comparison rows (a trial's parameters, or its grid point's)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        params = points[t.params["point"]] if points is not None and "point" in t.params else dict(t.params)
        error = t.user_attrs.get("error", "")
        if t.state.name == "FAIL" and not error:
            error = "its worker stopped mid-trial (killed or interrupted)"
        out.append(PointResult(t.number, params, t.user_attrs.get("mlflow_run_id", ""), Path(t.user_attrs.get("point_dir", "")),
                               _STATUS.get(t.state.name, t.state.name.lower()), error, dict(t.user_attrs.get("metrics", {})),
                               t.user_attrs.get("worker", "")))
    return out


def _counted(study) -> tuple[int, int]:
    """(trials that count towards the study's N, trials running now): a trial counts when it is complete,
    pruned, running, or failed by its own error; one whose worker died does not (it is queued again)."""
    counted = running = 0
    for t in study.get_trials(deepcopy=False):
        running += t.state.name == "RUNNING"
        counted += t.state.name in _COUNTED or (t.state.name == "FAIL" and "error" in t.user_attrs)
    return counted, running


def run_sweep(project: str | Path, task: str, *, trials: int | None = None, search: list[str] = (),
              points: list[dict[str, Any]] | None = None, fixed: dict[str, Any] | None = None, prune: bool = False,
              storage: str | None = None, name: str | None = None, env: str | None = None,
              heartbeat_s: int = DEFAULT_HEARTBEAT_S, poll_s: float = 5.0) -> SweepSummary:
    """Run one worker of the study ``name``: create or join it, run trials until it holds ``trials`` of them,
    then (the worker holding the best trial) compare them on the parent run and gate the best."""
    worker = SweepWorker(project, task, trials=trials, search=search, points=points, fixed=fixed, prune=prune,
                         storage=storage, name=name, env=env, heartbeat_s=heartbeat_s, poll_s=poll_s)
    return worker.run()


class SweepWorker:
    """One worker of a study: everything is checked in the constructor, before a study or run exists."""
    def __init__(self, project: str | Path, task: str, *, trials: int | None, search: list[str], points: list[dict] | None,
                 fixed: dict[str, Any] | None, prune: bool, storage: str | None, name: str | None, env: str | None,
                 heartbeat_s: int, poll_s: float):

        self.project, self.task, self.env = Path(project).resolve(), task, env
        self.dims, self.points, self.fixed, self.prune = parse_search(search), points, dict(fixed or {}), prune
        self.heartbeat_s, self.poll_s = heartbeat_s, poll_s
        if self.dims and points:
            raise ConfigError("give --search (Optuna's TPE) or --grid/--file (its grid sampler), not both")
        if not self.dims and not points:
            raise ConfigError("give at least one --search, --grid or a --file")
        clash = sorted(set(self.fixed) & (set(self.dims) | {k for p in points or [] for k in p}))
        if clash:
            raise ConfigError(f"--params {clash[0]}: also searched; fix a key or search it, not both")
        if points is not None:
            if trials is not None and trials > len(points):
                logger.info("%d trials asked, the grid has %d points: the study runs each point once", trials, len(points))
            trials = min(trials or len(points), len(points))
        elif not trials:
            raise ConfigError("--trials N is needed with --search (how many trials the study runs in all)")
        if trials < 1:
            raise ConfigError(f"--trials {trials}: must be at least 1")
        self.trials = trials
        self.name = name or f"sweep-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(f"--name {self.name!r}: use letters, digits, '.', '_' and '-' (it names a folder and the study)")
        self.storage = storage or os.environ.get(STORAGE_ENV) or default_storage(self.project)

        params, self.experiment, self._resolver = self._load_project()
        # every value is checked by the task's config model before anything runs
        self.base = point_overrides(task, params, self.fixed) if self.fixed else params
        for point in points or [{k: d.sample_value() for k, d in self.dims.items()}]:
            point_overrides(task, self.base, point)
        self.registry = parse_task_config(task, self.base).registry
        self.greater = self.registry.greater  # null greater_is_better: lower is better for a loss, higher otherwise
        self.space = grid_space(points) if points is not None else None
        self.sweep_dir = self.project / SWEEPS_DIR / task / self.name
        self.definition = {"task": task, "trials": self.trials, "search": sorted(search), "points": points, "fixed": self.fixed,
                           "prune": prune, "metric": self.registry.metric, "greater": self.greater}
        self.me = worker_id()

    def _load_project(self):
        session, context = _context(self.project, self.env)
        with session:
            params = context.params[self.task]
            # kedro-mlflow's experiment settings: its name, and where a new experiment keeps its artifacts (None: the server's)
            experiment = context.mlflow.tracking.experiment
            catalog_conf = context.config_loader["catalog"]
        resolver = CatalogConfigResolver(catalog_conf, default_runtime_patterns={"{default}": {"type": "kedro.io.MemoryDataset"}})
        return params, experiment, resolver

    def catalog_path(self, dataset: str) -> str:
        """The project-relative path of the task's catalog entry ``dataset`` (e.g. ``metrics``)."""
        config = self._resolver.resolve_pattern(f"{self.task}.{dataset}")
        while isinstance(config, dict) and not (config.get("filepath") or config.get("path")):
            config = config.get("dataset")
        path = Path(config.get("filepath") or config.get("path"))
        return (path.relative_to(self.project) if path.is_absolute() else path).as_posix()

    # ------------------------------------------------------------ study and parent run

    def run(self) -> SweepSummary:
        """Create or join the study, run trials until it is done, then finish it if this worker holds the best."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.client = mlflow.MlflowClient()
        study, first = self._open_study()
        self._builtin_data()
        self.parent_id, self.experiment_id = self._parent_run(study, first)
        self._run_trials(study)
        return self._finish(study)

    def _open_study(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        rdb = open_storage(self.storage, self.heartbeat_s, self._on_stale)
        sampler = (optuna.samplers.GridSampler(self.space) if self.space is not None
                   else optuna.samplers.TPESampler(constant_liar=True))
        pruner = optuna.pruners.MedianPruner(**PRUNER) if self.prune else optuna.pruners.NopPruner()
        try:
            study = optuna.create_study(storage=rdb, study_name=self.name, direction="maximize" if self.greater else "minimize",
                                        sampler=sampler, pruner=pruner)
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=self.name, storage=rdb, sampler=sampler, pruner=pruner)
            _check_definition(study, self.definition, self.name, self.storage)
            return study, False
        study.set_user_attr("definition", self.definition)
        return study, True

    def _builtin_data(self) -> None:
        """Generate the shared built-in data once, before the trials (and other workers) read it."""
        keys = [*self.fixed, *self.dims, *(k for p in self.points or [] for k in p)]
        if self.base["data"].get("root") is not None or any(k.startswith("data.builtin") for k in keys):
            return
        builtin_data_for_ingestion(self.project / self.base["data"]["builtin"].get("path", "data/01_raw/builtin") / self.task,
                                   self.task, parse_task_config(self.task, self.base).data.builtin.model_dump(exclude={"path"}),
                                   self.project)

    def _parent_run(self, study, first: bool) -> tuple[str, str]:
        """The first worker creates the MLflow parent run (tag ``sweep.study``); the others wait for it and attach."""
        where = shown_url(self.storage)
        if first:
            # the sweep's parent and trial runs sit beside the task's own runs (run_record.task_experiment), their
            # artifacts where kedro-mlflow's config says (the project's mlartifacts, or the server's)
            experiment_id = create_experiment_once(self.client, task_experiment(self.experiment.name, self.task),
                                                   self.experiment.create_experiment_kwargs.artifact_location, tags=EXPERIMENT_TAGS)
            parent = self.client.create_run(experiment_id, run_name=self.name, tags={
                "sweep.study": self.name, "visionpipe.sweep": self.name, "visionpipe.task": self.task, "sweep.storage": where,
                "sweep.sampler": type(study.sampler).__name__, "sweep.pruner": type(study.pruner).__name__})
            self.client.log_dict(parent.info.run_id, self.definition, "sweep.json")
            study.set_user_attr("mlflow_experiment_id", experiment_id)
            study.set_user_attr("mlflow_parent_run_id", parent.info.run_id)
            logger.info("sweep %s: study created in %s, MLflow parent run %s", self.name, where, parent.info.run_id)
            return parent.info.run_id, experiment_id
        deadline = time.monotonic() + PARENT_WAIT_S
        while "mlflow_parent_run_id" not in study.user_attrs:
            if time.monotonic() > deadline:
                raise ConfigError(f"study {self.name} in {where} has no MLflow parent run after {PARENT_WAIT_S} s: its first "
                                  "worker stopped early; choose another --name")
            time.sleep(1)
        logger.info("sweep %s: joined the study in %s and MLflow parent run %s", self.name, where,
                    study.user_attrs["mlflow_parent_run_id"])
        return study.user_attrs["mlflow_parent_run_id"], study.user_attrs["mlflow_experiment_id"]

    def _on_stale(self, study, trial) -> None:
        """A trial whose worker died: its MLflow run is FAILED too; it is queued once more (same parameters)."""
        run_id = trial.user_attrs.get("mlflow_run_id")
        logger.warning("sweep %s: trial %d: its worker %s stopped beating; marked FAILED and queued again", self.name,
                       trial.number, trial.user_attrs.get("worker", "?"))
        if run_id:
            try:
                self.client.set_tag(run_id, "sweep.state", "FAIL")
                self.client.set_tag(run_id, "visionpipe.error", "the sweep worker stopped (no heartbeat)")
                self.client.set_terminated(run_id, "FAILED")
            except Exception as err:  # the study goes on even when MLflow is briefly away
                logger.warning("could not mark MLflow run %s failed: %s", run_id, err)
        self._retry(study, trial)

    # ------------------------------------------------------------ trials

    def _run_trials(self, study) -> None:
        """Trials until the study holds its N; then wait while others' trials run (a dead worker's comes back queued)."""
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since 2.9
                optuna.storages.fail_stale_trials(study)
            counted, running = _counted(study)
            if counted < self.trials:
                study.optimize(self._objective, n_trials=1, catch=(TrialError,))
            elif running:
                time.sleep(self.poll_s)
            else:
                return

    def _chosen(self, trial) -> dict[str, Any]:
        if self.points is None:
            return suggest(trial, self.dims)
        values = {k: trial.suggest_categorical(k, v) for k, v in self.space.items()}
        return self.points[values["point"]] if "point" in self.space else values

    def _overrides(self, chosen: dict, point_dir: Path) -> dict:
        """The trial's runtime parameters: its values, the fixed ones, and its own folders (registration off)."""
        block = point_overrides(self.task, self.base, chosen)
        overrides = {**self.fixed, **chosen}
        # the built-in data is shared (read-only) unless the trial changes how it is generated
        builtin_path = (point_dir / "data/01_raw/builtin" if any(k.startswith("data.builtin") for k in overrides)
                        else self.project / (block["data"]["builtin"].get("path") or "data/01_raw/builtin"))
        overrides.update({"registry.enabled": False, "data.builtin.path": str(builtin_path),
                          "train.checkpoint_dir": str(point_dir / "checkpoints")})
        if block["data"].get("root") and not Path(block["data"]["root"]).is_absolute():
            overrides["data.root"] = str(self.project / block["data"]["root"])
        return {self.task: _nested(overrides)}

    def _objective(self, trial) -> float:
        client, name, metric = self.client, self.name, self.registry.metric
        chosen = self._chosen(trial)
        point_dir = self.sweep_dir / f"trial-{trial.number:03d}"
        run_id = client.create_run(self.experiment_id, run_name=f"{name}-{trial.number:03d}", tags={
            "mlflow.parentRunId": self.parent_id, "visionpipe.task": self.task, "visionpipe.sweep": name, "sweep.study": name,
            "sweep.trial": str(trial.number), "sweep.worker": self.me, **{f"sweep.{k}": str(v) for k, v in chosen.items()}},
        ).info.run_id
        for key, value in {"mlflow_run_id": run_id, "point_dir": str(point_dir), "worker": self.me}.items():
            trial.set_user_attr(key, value)
        logger.info("sweep %s: trial %d %s (run %s)", name, trial.number, chosen, run_id)
        metrics_file = point_dir / self.catalog_path("metrics")
        try:
            runtime_params = self._overrides(chosen, point_dir)
            with pruning(trial if self.prune else None, metric):
                run_point(self.project, point_dir, self.task, run_id, runtime_params, self.env)
            metrics = _read_metrics(metrics_file)
            if not math.isfinite(metrics.get(metric, float("nan"))):
                raise TrialError(f"no finite {metric} in {metrics_file}")
        except optuna.TrialPruned as err:
            logger.info("sweep %s: trial %d pruned: %s", name, trial.number, err)
            client.set_tag(run_id, "sweep.state", "PRUNED")
            client.set_tag(run_id, "sweep.pruned", str(err)[:5000])
            client.set_terminated(run_id, "KILLED")
            raise
        except Exception as err:  # the trial fails, the study goes on
            message = _one_line(err)
            point_dir.mkdir(parents=True, exist_ok=True)
            (point_dir / "error.txt").write_text("".join(traceback.format_exception(err)))
            trial.set_user_attr("error", message)
            logger.warning("sweep %s: trial %d %s failed: %s (traceback: %s)", name, trial.number, chosen, message,
                           point_dir / "error.txt")
            client.set_tag(run_id, "sweep.state", "FAIL")
            client.set_tag(run_id, "visionpipe.error", message)
            client.log_artifact(run_id, str(point_dir / "error.txt"))
            client.set_terminated(run_id, "FAILED")
            raise TrialError(message) from err
        trial.set_user_attr("metrics", metrics)
        client.set_tag(run_id, "sweep.state", "COMPLETE")
        if client.get_run(run_id).info.status != "FINISHED":
            client.set_terminated(run_id, "FINISHED")
        return metrics[metric]

    # ------------------------------------------------------------ the end

    def _finish(self, study) -> SweepSummary:
        """Compare the trials on the parent run and gate the best: done once, by the worker holding the best model
        (or, when that worker is gone, by one on its machine)."""
        metric = self.registry.metric
        results = trial_results(study, self.points if self.space is not None and "point" in self.space else None)
        best = pick_best(results, self.registry)
        summary = SweepSummary(self.task, self.name, self.parent_id, metric, results, best, None, None)
        finished = study.user_attrs.get("finished")
        if finished:
            summary.decision, summary.note = finished.get("decision"), f"finished by worker {finished.get('worker')}"
            return summary
        if best is not None and best.worker != self.me and not (_worker_gone(best.worker) and best.point_dir.is_dir()):
            summary.note = f"the best trial ran in worker {best.worker}: that worker compares the trials and registers it"
            return summary
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        keys = list(dict.fromkeys(k for r in results for k in r.params))
        summary.comparison_csv = finish_parent(self.client, self.parent_id, results, metric, self.sweep_dir, keys)
        if best is not None:
            self.client.set_tag(self.parent_id, "sweep.best_run_id", best.run_id)
            self.client.set_tag(self.parent_id, "sweep.best_trial", str(best.index))
            self.client.log_metric(self.parent_id, f"best_{metric}", best.metrics[metric])
            summary.decision = champion_gate(best.run_id, best.point_dir, self.task, best.metrics,
                                             point_overrides(self.task, self.base, best.params), self.catalog_path("model"),
                                             self.catalog_path("clean_index"))
            (self.sweep_dir / "registration.json").write_text(json.dumps(summary.decision, indent=2, default=str))
        study.set_user_attr("finished", {"worker": self.me, "best_run_id": best.run_id if best else None,
                                         "decision": json.loads(json.dumps(summary.decision, default=str))})
        self.client.set_terminated(self.parent_id, "FINISHED" if best is not None else "FAILED")
        logger.info("sweep %s done: parent MLflow run %s", self.name, self.parent_id)
        return summary


def _check_definition(study, definition: dict, name: str, storage: str) -> None:
    """A joining worker must run the study the first one defined (same task, space, N...)."""
    recorded = study.user_attrs.get("definition")
    if recorded is None:
        raise ConfigError(f"study {name} in {shown_url(storage)} was not created by visionpipe sweep: choose another --name")
    for key, value in definition.items():
        if recorded.get(key) != json.loads(json.dumps(value)):
            raise ConfigError(f"study {name} in {shown_url(storage)} was started with {key} = {recorded.get(key)!r}, this worker "
                              f"has {value!r}: start it with the same options, or choose another --name")


def finish_parent(client, parent_id: str, results: list[PointResult], metric: str, sweep_dir: Path, keys: list[str]) -> Path:
    """Write and log the comparison table and plot on the parent run; tag it with the trial counts."""
    import matplotlib.pyplot as plt  # seconds to import: only the comparison plot pays it

    frame = comparison_frame(results)
    csv = sweep_dir / "comparison.csv"
    frame.to_csv(csv, index=False)
    client.log_artifact(parent_id, str(csv))
    fig = comparison_plot(frame, metric, keys)
    fig.savefig(sweep_dir / "comparison.png")
    client.log_figure(parent_id, fig, "comparison.png")
    plt.close(fig)
    counts = {s: sum(r.status == s for r in results) for s in ("finished", "pruned", "failed")}
    for state, count in counts.items():
        client.set_tag(parent_id, f"sweep.{state}", str(count))
    return csv


def champion_gate(run_id: str, point_dir: Path, task: str, metrics: dict[str, float], params: dict,
                  model_path: str, index_path: str) -> dict:
    """The best point through the champion gate, inside its own (child) run: the registration node itself,
    so a sweep's champion is judged exactly as a `kedro run`'s (same data check, re-scoring, gate metric)."""


    index = json.loads((point_dir / index_path).read_text())
    verify_task_data(index["root"])
    bundle = ModelBundleDataset(str(point_dir / model_path)).load()
    with mlflow.start_run(run_id=run_id, nested=True):
        return register_model(bundle, metrics, index, params, task)
