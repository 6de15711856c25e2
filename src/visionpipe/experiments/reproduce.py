"""Re-run the training of a registered model version from its commit and its DVC data version.

``visionpipe reproduce models:/visionpipe-classification/3``: read the version's lineage tags (git
commit, DVC md5 of the data, the run's runtime parameters), check the commit out into a temporary
git worktree sharing the project's DVC cache and remotes, restore the data version (cache, else the
remote), rehash it, re-run the task there with registration off and a throw-away MLflow store, and
compare the recorded and the reproduced metrics.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from visionpipe.errors import DataError, TrainingError
from visionpipe.experiments.integrity import TrackedPath, verify

logger = logging.getLogger(__name__)

# measurements of speed, not of the model: they never reproduce and are not compared
TIMING = re.compile(r"(_time_s|_per_s|_seconds)$")
# runtime parameters a sweep point sets for its own bookkeeping (paths, registration off)
_SWEEP_KEYS = (("train", "checkpoint_dir"), ("data", "builtin", "path"), ("registry", "enabled"))
_RERUN = """
import sys
from pathlib import Path
import json
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
spec = json.loads(Path(sys.argv[1]).read_text())
bootstrap_project(Path(spec["project"]))
with KedroSession.create(project_path=spec["project"], runtime_params=spec["runtime_params"]) as session:
    session.run(pipeline_name=spec["task"])
"""


@dataclass
class Reproduction:
    """Recorded and reproduced metrics of a version, and whether they agree within ``tolerance``."""

    model_uri: str
    commit: str
    data_md5: str
    tolerance: float
    recorded: dict[str, float]
    reproduced: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        """Every compared metric within the tolerance."""
        return bool(self.compared) and all(abs(self.recorded[k] - self.reproduced[k]) <= self.tolerance for k in self.compared)

    @property
    def compared(self) -> list[str]:
        """Metrics both the version's run and the re-run report."""
        return sorted(k for k in self.reproduced if k in self.recorded and not TIMING.search(k))

    def table(self) -> str:
        """Recorded vs reproduced, side by side."""
        lines = [f"{self.model_uri}: commit {self.commit[:12]}, data {self.data_md5}, tolerance {self.tolerance:g}",
                 f"{'metric':<24}{'recorded':>16}{'reproduced':>16}{'|diff|':>14}"]
        for key in self.compared:
            diff = abs(self.recorded[key] - self.reproduced[key])
            mark = "" if diff <= self.tolerance else "  <- differs"
            lines.append(f"{key:<24}{self.recorded[key]:>16.8g}{self.reproduced[key]:>16.8g}{diff:>14.3g}{mark}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append("reproduced: metrics equal within tolerance" if self.matches else "NOT reproduced")
        return "\n".join(lines)


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise DataError(repo, f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if dvc is None:
        raise DataError("dvc", "the `dvc` command is not installed in this environment", "pip install dvc")
    return subprocess.run([dvc, *args], cwd=repo, capture_output=True, text=True, check=False)


def resolve_version(client, model_uri: str):
    """The ModelVersion of ``models:/<name>/<version>`` or ``models:/<name>@<alias>``."""
    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", model_uri)
    if not match:
        raise DataError(model_uri, "expected models:/<name>/<version> or models:/<name>@<alias>")
    name, number, alias = match.groups()
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, number) if number else client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        raise DataError(model_uri, f"not in the registry at {client.tracking_uri} ({err.message})") from None


def runtime_overrides(tags: dict[str, str], task: str) -> dict:
    """The runtime parameters the version's run was started with (kedro-mlflow's ``runtime_params``
    tag), less a sweep's bookkeeping, plus registration off: a reproduction registers nothing."""
    raw = tags.get("runtime_params") or "{}"
    try:
        params = ast.literal_eval(raw) or {}
    except (ValueError, SyntaxError):
        raise DataError("runtime_params tag", f"cannot read {raw!r}") from None
    block = params.get(task, {})
    for path in _SWEEP_KEYS:
        node = block
        for key in path[:-1]:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    block.setdefault("registry", {})["enabled"] = False
    return {**params, task: block}


def _share_dvc_storage(project: Path, worktree: Path) -> None:
    """The worktree uses the project's DVC cache and remotes (git does not carry .dvc/cache, and a
    relative remote URL would point elsewhere from the worktree)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        cache_dir = repo.cache.local_cache_dir
        remotes = {name: conf.get("url") for name, conf in repo.config.get("remote", {}).items()}  # URLs made absolute
        default = repo.config.get("core", {}).get("remote")
    lines = ["[cache]", f"    dir = {Path(cache_dir).resolve()}"]
    for name, url in remotes.items():
        lines += [f"['remote \"{name}\"']", f"    url = {url}"]
    if default:
        lines += ["[core]", f"    remote = {default}"]
    (worktree / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")


def restore_data(repo_dir: Path, target: Path, md5: str) -> None:
    """Put the data version ``md5`` at ``target``, from the DVC cache of ``repo_dir``, else pulled from
    its remote by hash (no dvc.lock needed), then rehash it. Raise a DataError saying what is missing."""
    from dvc.repo import Repo
    from dvc_data.hashfile import load
    from dvc_data.hashfile.checkout import checkout
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_objects.fs.local import LocalFileSystem

    info = HashInfo("md5", md5)

    def cached(repo) -> bool:
        try:
            obj = load(repo.cache.local, info)
        except (FileNotFoundError, ValueError):
            return False
        entries = [hi.value for _, (_, hi) in obj.iteritems()] if info.isdir else [md5]
        return all(repo.cache.local.exists(value) for value in entries)

    with Repo(str(repo_dir)) as repo:
        where = repo.cache.local.path
        if not cached(repo):
            try:
                failed = repo.cloud.pull([info]).failed
            except Exception as err:  # no remote configured, remote unreachable
                raise DataError(f"data {md5}", f"not in the DVC cache ({where}) and not pulled from a remote: {err}") from None
            if failed or not cached(repo):
                raise DataError(f"data {md5}", f"neither the DVC cache ({where}) nor the remote holds it "
                                "(was it `dvc push`ed from the machine that trained?)")
        target.parent.mkdir(parents=True, exist_ok=True)
        checkout(str(target), LocalFileSystem(), load(repo.cache.local, info), repo.cache.local, force=True)
    # a corrupt cache object is caught here, before anything is trained on it
    verify(TrackedPath(target, md5, "the version's data.dvc_md5 tag"), repo_dir)


def _dirty_reason(run_tags: dict[str, str]) -> str | None:
    """Why the commit does not hold the version's code and parameters (None when it does)."""
    if run_tags.get("git.dirty", "False") == "False":
        return None
    paths = [p for p in run_tags.get("git.dirty_paths", "").split(",") if p]
    if paths and all(Path(p).name in ("dvc.lock", ".gitignore") or p.endswith(".dvc") for p in paths):
        return None  # only DVC's own bookkeeping changed during the run
    return "uncommitted changes" + (f" to {', '.join(paths[:8])}" if paths else "")


def _experiment_commit(project: Path, name: str) -> str | None:
    """The commit DVC saved experiment ``name`` as (refs/exps/.../<name>)."""
    refs = _git(project, "for-each-ref", "refs/exps", "--format=%(refname) %(objectname)", check=False).stdout
    return next((sha for ref, _, sha in (line.partition(" ") for line in refs.splitlines())
                 if ref.rsplit("/", 1)[-1] == name), None)


def reproduce_version(model_uri: str, project: str | Path = ".", tracking_uri: str | None = None, keep: bool = False,
                      tolerance: float | None = None) -> Reproduction:
    """Reproduce ``model_uri``'s training and compare its metrics with the recorded ones."""
    import mlflow

    project = Path(project).resolve()
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'mlflow.db'}"
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        # opening a missing SQLite store would create an empty one
        raise DataError(tracking_uri, "no MLflow store there", "run from the project, or give --tracking-uri")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    version = resolve_version(client, model_uri)
    tags = dict(version.tags)
    run = client.get_run(version.run_id)
    run_tags = run.data.tags
    task = tags.get("visionpipe.task") or run_tags.get("visionpipe.task")
    commit, dirty, md5 = tags.get("git.commit", "unknown"), tags.get("git.dirty", "unknown"), tags.get("data.dvc_md5")
    if commit == "unknown" or not task:
        raise DataError(model_uri, "no git.commit / visionpipe.task tag: it was not trained from a git checkout")
    notes = []
    reason = _dirty_reason({**run_tags, "git.dirty": dirty})
    if reason and run_tags.get("dvc.exp_name"):
        # trained by `dvc exp run`: DVC committed the experiment's parameters and dvc.lock afterwards
        exp_commit = _experiment_commit(project, run_tags["dvc.exp_name"])
        if exp_commit is None:
            raise DataError(model_uri, f"trained in DVC experiment {run_tags['dvc.exp_name']}, which this repository "
                            "no longer has (`dvc exp pull` it, or `dvc exp apply` + commit)")
        notes.append(f"DVC experiment {run_tags['dvc.exp_name']} (commit {exp_commit[:12]} on baseline {commit[:12]})")
        commit, reason = exp_commit, None
    if reason:
        raise DataError(model_uri, f"trained from commit {commit[:12]} with {reason}: "
                        "the commit does not hold the code and parameters that trained it")
    if not md5 or md5 == "untracked":
        raise DataError(model_uri, f"its data was not versioned by DVC (data.dvc_md5={md5}): `dvc add` or `dvc repro` "
                        "the data before training so the version can be restored")
    if _git(project, "cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode:
        raise DataError(model_uri, f"commit {commit} is not in {project} (git fetch it first)")
    device = run_tags.get("visionpipe.device", "cpu")
    tolerance = tolerance if tolerance is not None else (0.0 if device == "cpu" else 1e-3)

    worktree = Path(tempfile.mkdtemp(prefix="visionpipe-reproduce-")) / "worktree"
    _git(project, "worktree", "add", "--detach", str(worktree), commit)
    try:
        _share_dvc_storage(project, worktree)
        overrides = runtime_overrides(run_tags, task)
        restore_data(worktree, worktree / _data_path(worktree, project, task, overrides), md5)
        spec = {"project": str(worktree), "task": task, "runtime_params": overrides}
        spec_file = worktree.parent / "rerun.json"
        spec_file.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_RUN_ID"))}
        # the worktree's own code, and a throw-away store: a reproduction registers nothing
        env.update(PYTHONPATH=f"{worktree / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}",
                   MLFLOW_TRACKING_URI=f"sqlite:///{worktree.parent / 'mlflow.db'}")
        logger.info("Re-running %s at %s in %s", task, commit[:12], worktree)
        proc = subprocess.run([sys.executable, "-c", _RERUN, str(spec_file)], cwd=worktree, env=env,
                              capture_output=True, text=True, check=False)
        (worktree.parent / "rerun.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise TrainingError(f"the re-run failed (log: {worktree.parent / 'rerun.log'}): "
                                f"{(proc.stderr or proc.stdout).strip().splitlines()[-1][:500]}")
        metrics_file = worktree / _metrics_path(worktree, task)
        # MLflow names of all_metrics.json's keys (tracking.callbacks.final_metric_name: ap/circle -> ap_circle;
        # not imported, it would bring torch into `visionpipe --help`)
        reproduced = {k.replace("/", "_"): float(v) for k, v in json.loads(metrics_file.read_text()).items()
                      if isinstance(v, (int, float)) and not math.isnan(v)}
    finally:
        if not keep:
            _git(project, "worktree", "remove", "--force", str(worktree), check=False)
            shutil.rmtree(worktree.parent, ignore_errors=True)
        else:
            logger.info("worktree kept: %s", worktree)
    return Reproduction(model_uri, commit, md5, tolerance, dict(run.data.metrics), reproduced,
                        notes + ([f"worktree kept at {worktree}"] if keep else []))


def _data_path(worktree: Path, project: Path, task: str, overrides: dict) -> Path:
    """Where the commit's parameters (with the run's runtime overrides) read the task's data, relative
    to the project: ``data.root``, else the built-in folder."""
    from kedro.config import OmegaConfigLoader

    params = OmegaConfigLoader(str(worktree / "conf"), base_env="base", default_run_env="local")["parameters"].get(task) or {}
    data = {**(params.get("data") or {}), **(overrides.get(task, {}).get("data") or {})}
    if data.get("root"):
        root = Path(data["root"])
    else:
        builtin = {**(params.get("data", {}).get("builtin") or {}), **(data.get("builtin") or {})}
        root = Path(builtin.get("path", "data/01_raw/builtin")) / task
    if root.is_absolute():
        if not root.is_relative_to(project):
            raise DataError(root, "lies outside the project, so no commit tracks it")
        root = root.relative_to(project)
    return root


def _metrics_path(worktree: Path, task: str) -> str:
    """Where the commit's catalog writes ``<task>.metrics``."""
    from kedro.config import OmegaConfigLoader
    from kedro.io.catalog_config_resolver import CatalogConfigResolver

    loader = OmegaConfigLoader(str(worktree / "conf"), base_env="base", default_run_env="local")
    config: Any = CatalogConfigResolver(loader["catalog"], default_runtime_patterns={
        "{default}": {"type": "kedro.io.MemoryDataset"}}).resolve_pattern(f"{task}.metrics")
    while isinstance(config, dict) and not config.get("filepath"):
        config = config.get("dataset")
    if not isinstance(config, dict):
        raise DataError(worktree / "conf", f"{task}.metrics is not a file in the commit's catalog")
    return config["filepath"]



