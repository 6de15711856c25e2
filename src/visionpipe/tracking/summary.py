"""What a run produced, in a few lines: the end-of-run table in the terminal and the MLflow run description.

Both are built from the same :class:`RunSummary`, read back from what the run wrote (its MLflow run,
``registration.json`` and the data folders), so the summary never reports something that was not saved.
Only files written since the run started count: an older ``registration.json`` is not shown as news.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionpipe.tasks import get_task_class
from visionpipe.tracking.callbacks import final_metric_name

logger = logging.getLogger(__name__)

OUTPUT_LAYERS = ("data/06_models", "data/07_model_output", "data/08_reporting")
UI = "http://127.0.0.1:5000"  # `make mlflow-ui`

# MLflow 3's runs list keeps its columns and sort in the browser, but opens a *saved view* from an experiment tag
# (``mlflow.sharedViewState.<id>``: {"name", "createdAt", "state"}, the state a JSON string of the runs list's
# search facets and UI state) when the URL names it (``?viewStateShareKey=<id>``), and lists it under the runs
# list's saved views. Each task's experiment gets one: its table metrics as columns, best run first.
RUNS_VIEW_ID = "visionpipe-headline"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW_ID}"


def runs_view_state(task: str) -> dict[str, Any]:
    """The runs list of ``task``'s experiment: the task's table metrics (MLflow names, and their ``test_`` twins
    when a run has a test split) as its only optional columns, sorted by the primary metric, best first."""
    task_cls = get_task_class(task)
    names = [final_metric_name(n) for n in task_cls.table_metrics or (task_cls.primary_metric,)]
    return {"searchFilter": "", "orderByKey": f"metrics.`{final_metric_name(task_cls.primary_metric)}`", "orderByAsc": False,
            "selectedColumns": [*(f"metrics.`{p}{n}`" for p in ("", "test_") for n in names)]}


def save_runs_view(client, experiment_id: str, task: str) -> None:
    """Tag ``task``'s experiment with its saved runs view (RUNS_VIEW_TAG), unless it already holds this one."""
    name, state = f"{task}: headline metrics, best first", json.dumps(runs_view_state(task))
    current = client.get_experiment(experiment_id).tags.get(RUNS_VIEW_TAG)
    try:
        saved = json.loads(current) if current else None
    except ValueError:
        saved = None
    if isinstance(saved, dict) and saved.get("name") == name and saved.get("state") == state:
        return
    created = saved.get("createdAt") if isinstance(saved, dict) and isinstance(saved.get("createdAt"), int) else int(time.time() * 1000)
    client.set_experiment_tag(experiment_id, RUNS_VIEW_TAG, json.dumps({"name": name, "createdAt": created, "state": state}))


def runs_view_url(experiment_id: str, ui: str = UI) -> str:
    """The runs list of an experiment in its saved view (RUNS_VIEW_ID): headline columns, best run first."""
    return f"{ui}/#/experiments/{experiment_id}/runs?viewStateShareKey={RUNS_VIEW_ID}"


def headline_metrics(task: str, metrics: dict[str, float]) -> dict[str, float]:
    """The task's headline metrics present in ``metrics``, in their usual order."""
    names = [k for k in get_task_class(task).metrics if not k.endswith("loss")][:3]
    return {k: float(metrics[k]) for k in names if metrics.get(k) is not None}


@dataclass
class RunSummary:
    """One task's run: what a person wants to know when it ends."""

    task: str
    pipeline: str
    run_id: str | None = None
    run_name: str | None = None
    experiment_id: str | None = None
    model: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best_epoch: str | None = None  # "6/8"
    data: str | None = None  # "<root> (md5 ...)"
    data_warnings: str | None = None  # "3 leakage, 1 unscored class (data/08_reporting/<task>/data_quality.md)"
    weights: str | None = None  # model.pretrained: auto without published weights: how to get them
    registration: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)
    tracking_uri: str | None = None


def _fresh(path: Path, since: float | None) -> bool:
    return path.exists() and (since is None or path.stat().st_mtime >= since - 1)


def registry_line(decision: dict[str, Any] | None) -> str | None:
    """``visionpipe-detection v3: map 0.512 vs champion v2 0.498, alias 'champion' moved`` (or kept, or skipped)."""
    if not decision:
        return None
    if "skipped" in decision:
        return f"not registered: {decision['skipped']}"
    champion = ("no champion before" if decision.get("champion_score") is None
                else f"champion v{decision['champion_version']} {decision['champion_score']:.4f}")
    verdict = f"alias '{decision['alias']}' moved to v{decision['version']}" if decision["promoted"] else \
        f"alias '{decision['alias']}' kept on v{decision['champion_version']} (not better)"
    line = f"{decision['model_name']} v{decision['version']}: {decision['metric']} {decision['new_score']:.4f} vs {champion}; {verdict}"
    return f"{line}; {decision['classes_note']}" if decision.get("classes_note") else line


def warnings_line(report: dict, where: str) -> str | None:
    """The validation report's warnings as one line, count per kind, or None when there are none."""
    counts: dict[str, int] = {}
    for w in report.get("warnings") or []:
        counts[w["kind"]] = counts.get(w["kind"], 0) + 1
    if not counts:
        return None
    return ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items()) + f" ({where})"


def collect(task: str, pipeline: str, project: Path | None = None, since: float | None = None,
            client=None) -> RunSummary:
    """Read back what the run of ``task`` wrote since ``since`` (a ``time.time()``)."""
    project = Path(project or Path.cwd())
    summary = RunSummary(task=task, pipeline=pipeline)
    reg = project / "data/08_reporting" / task / "registration.json"
    if _fresh(reg, since):
        summary.registration = json.loads(reg.read_text())
    validation = project / "data/08_reporting" / task / "validation.json"
    if _fresh(validation, since):
        summary.data_warnings = warnings_line(json.loads(validation.read_text()), f"data/08_reporting/{task}/data_quality.md")
    metrics_file = project / "data/08_reporting" / task / "all_metrics.json"
    if _fresh(metrics_file, since):
        summary.metrics = headline_metrics(task, json.loads(metrics_file.read_text()))
    for layer in OUTPUT_LAYERS:
        folder = project / layer / task
        if folder.is_dir():
            fresh = sorted(p for p in folder.iterdir() if _fresh(p, since) and not p.name.startswith("."))
            if layer == "data/08_reporting" and fresh:
                summary.outputs.append(f"{layer}/{task}/")
            else:
                summary.outputs += [str(p.relative_to(project)) + ("/" if p.is_dir() else "") for p in fresh]
    run = _find_run(task, since, client)
    if run is not None:
        summary.run_id, summary.run_name = run.info.run_id, run.info.run_name
        summary.experiment_id = run.info.experiment_id
        tags = run.data.tags
        summary.model = tags.get("visionpipe.model_label") or tags.get("visionpipe.model")
        summary.best_epoch = tags.get("visionpipe.best_epoch")
        summary.weights = tags.get("visionpipe.weights_note")
        if tags.get("data.root"):
            summary.data = f"{tags['data.root']} (dvc md5 {tags.get('data.dvc_md5', 'unknown')})"
        if not summary.metrics:
            summary.metrics = headline_metrics(task, run.data.metrics)
    return summary


def _find_run(task: str, since: float | None, client):
    """The newest MLflow run of ``task`` started since ``since``, or None (never creates a store)."""
    if client is None:
        return None
    try:
        filter_string = f"tags.`visionpipe.task` = '{task}'"
        if since is not None:
            filter_string += f" and attributes.start_time >= {int((since - 1) * 1000)}"
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=filter_string, order_by=["attributes.start_time DESC"],
                                  max_results=1) if experiments else []
    except Exception as err:  # a summary must never fail a run that succeeded
        logger.debug("No MLflow run found for the summary: %s", err)
        return None
    return runs[0] if runs else None


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def terminal_lines(summary: RunSummary) -> list[str]:
    """The end-of-run table for one task, as plain lines (no colour codes: it may go to a log file)."""
    head = f"{summary.task}"
    if summary.run_name:
        head += f"  run {summary.run_name}"
    rows = []
    if summary.model:
        rows.append(("model", summary.model))
    if summary.metrics:
        rows.append(("metrics", "  ".join(f"{k} {_fmt(v)}" for k, v in summary.metrics.items())))
    if summary.best_epoch:
        rows.append(("best epoch", f"{summary.best_epoch} restored"))
    if summary.data:
        rows.append(("data", summary.data))
    if summary.data_warnings:
        rows.append(("data warnings", summary.data_warnings))
    if summary.weights:
        rows.append(("weights", summary.weights))
    if summary.registration:
        rows.append(("registry", registry_line(summary.registration)))
    if summary.outputs:
        rows.append(("outputs", ", ".join(summary.outputs)))
    if summary.run_id:
        rows.append(("browse", f"make mlflow-ui, then {UI}/#/experiments/{summary.experiment_id}/runs/{summary.run_id}"))
        rows.append(("compare", f"{runs_view_url(summary.experiment_id)} (every {summary.task} run, best first)"))
    if not rows:
        rows.append(("nothing", f"the {summary.pipeline} pipeline wrote no result for {summary.task}"))
    width = max(len(k) for k, _ in rows)
    return [head] + [f"  {k.ljust(width)}  {v}" for k, v in rows]


def run_note(task: str, tags: dict[str, str], metrics: dict[str, float], decision: dict[str, Any] | None = None) -> str:
    """The MLflow run description (``mlflow.note.content``, Markdown): task, model, data, results, best epoch."""
    model = tags.get("visionpipe.model_label") or tags.get("visionpipe.model", "?")
    lines = [f"**{task}** with `{model}`"]
    if tags.get("data.root"):
        lines.append(f"- data: `{tags['data.root']}` ({tags.get('data.format', '?')}), dvc md5 `{tags.get('data.dvc_md5', 'unknown')}`")
    heads = headline_metrics(task, metrics)
    if heads:
        lines.append("- validation: " + ", ".join(f"{k} {_fmt(v)}" for k, v in heads.items()))
    if tags.get("visionpipe.best_epoch"):
        lines.append(f"- best epoch {tags['visionpipe.best_epoch']} restored")
    if decision:
        lines.append(f"- registry: {registry_line(decision)}")
    elif tags.get("visionpipe.registered_version"):
        lines.append(f"- registered as version {tags['visionpipe.registered_version']} (promoted: {tags.get('visionpipe.promoted')})")
    return "\n".join(lines)
