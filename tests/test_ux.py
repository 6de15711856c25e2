"""What a person sees: quiet logs, the end-of-run summary, run names and notes, lineage, plots, pyfunc params.

Fast unit tests; what only a whole `kedro run` shows is checked in test_end_to_end.py on its one project.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from support import PROJECT

BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- lineage

def _tiny_folder(root: Path) -> Path:
    (root / "a" / "b").mkdir(parents=True)
    (root / "x.txt").write_text("hi\n")
    (root / "a" / "b" / "y.txt").write_text("there\n")
    (root / "a" / "z.bin").write_bytes(bytes(range(256)) * 3)
    return root


@pytest.mark.skipif(not (BIN / "dvc").exists(), reason="the dvc CLI is not installed beside this Python")
def test_dvc_dir_md5_equals_what_dvc_add_records(tmp_path):
    from visionpipe.tracking.lineage import dvc_dir_md5

    data = _tiny_folder(tmp_path / "data")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env, timeout=120)
    subprocess.run([str(BIN / "dvc"), "add", "data", "-q"], cwd=tmp_path, check=True, env=env, timeout=120)
    recorded = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"]
    assert recorded.endswith(".dir")
    assert dvc_dir_md5(data) == recorded
    (data / "x.txt").write_text("changed\n")
    assert dvc_dir_md5(data) != recorded


def test_lineage_prefers_the_recorded_md5_and_computes_it_otherwise(tmp_path):
    from visionpipe.tracking.lineage import data_md5, dvc_dir_md5, lineage_tags

    data = _tiny_folder(tmp_path / "data")
    index = {"root": str(data), "format": "imagefolder", "fingerprint": "f"}
    tags = lineage_tags(index, tmp_path)
    assert tags["data.dvc_md5"] == dvc_dir_md5(data) and tags["data.dvc_tracked"] == "False"
    (tmp_path / "data.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "abc.dir", "path": "data"}]}))
    assert data_md5(data, tmp_path) == "abc.dir"
    assert lineage_tags(index, tmp_path)["data.dvc_tracked"] == "True"


def test_data_is_logged_as_an_mlflow_dataset_input(tmp_path):
    import mlflow

    from visionpipe.tracking.lineage import dvc_dir_md5, log_data_lineage

    data = _tiny_folder(tmp_path / "pets")
    index = {"root": str(data), "format": "imagefolder", "classes": ["cat", "dog"], "train": [{}] * 3, "val": [{}] * 2}
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            log_data_lineage(index, "classification", tmp_path)
        got = mlflow.MlflowClient().get_run(run.info.run_id)
    finally:
        mlflow.set_tracking_uri(None)
    (entry,) = got.inputs.dataset_inputs
    assert entry.dataset.name == "classification-pets"
    assert entry.dataset.digest == dvc_dir_md5(data)
    assert json.loads(entry.dataset.source)["uri"] == str(data.resolve())
    assert json.loads(entry.dataset.profile) == {"train": 3, "val": 2, "classes": 2, "format": "imagefolder"}
    assert [t.value for t in entry.tags] == ["training"]
    assert got.data.params["data.root"] == str(data.resolve())
    assert got.data.tags["data.dvc_md5"] == dvc_dir_md5(data)


# ---------------------------------------------------------------- metrics, timings, epochs

def test_final_metrics_have_one_name_and_timings_leave_metrics_json():
    from visionpipe.pipelines.evaluation.nodes import mlflow_metrics, split_timings

    metrics, timings = split_timings({"val_loss": 1.2, "top1": 0.5, "eval_time_s": 2.0, "val_images": 10,
                                      "evaluation": {"batch_size": 8}})
    assert metrics == {"val_loss": 1.2, "top1": 0.5}  # metrics.json: `dvc metrics show` lists results only
    assert timings == {"evaluation": {"batch_size": 8}, "val_images": 10, "eval_time_s": 2.0, "eval_images_per_s": 5.0}
    logged = mlflow_metrics(metrics, timings)
    # val_loss is the val/loss curve at the best epoch, val_images the dataset input's profile
    assert logged == {"top1": {"value": 0.5, "step": 0}, "system/process/eval_time_s": {"value": 2.0, "step": 0},
                      "system/process/eval_images_per_s": {"value": 5.0, "step": 0}}
    assert mlflow_metrics({"ap/circle": 0.25})["ap_circle"]["value"] == 0.25  # a final metric opens no section of its own


def test_epoch_history_splits_into_learning_curves_and_timings():
    from visionpipe.tracking.callbacks import best_epoch_tag, epoch_metric_name, split_history

    history = [{"train_loss": 1.0, "lr": 0.1, "epoch_time_s": 3.0, "val_time_s": 0.5, "images_per_s": 9.0, "data_wait_fraction": 0.2,
                "rss_gb": 1.5, "val_loss": 0.9, "top1": 0.4, "epoch": 1}]
    learning, timings = split_history(history)
    assert learning == [{"train_loss": 1.0, "lr": 0.1, "val_loss": 0.9, "top1": 0.4, "epoch": 1}]
    assert timings == [{"epoch": 1, "epoch_time_s": 3.0, "val_time_s": 0.5, "images_per_s": 9.0, "data_wait_fraction": 0.2, "rss_gb": 1.5}]
    names = {k: epoch_metric_name(k) for k in history[0] if k != "epoch"}
    assert names == {"train_loss": "train/loss", "lr": "train/lr", "epoch_time_s": "system/process/epoch_time_s",
                     "val_time_s": "system/process/val_time_s",
                     "images_per_s": "system/process/images_per_s", "data_wait_fraction": "system/process/data_wait_fraction",
                     "rss_gb": "system/process/rss_gb", "val_loss": "val/loss", "top1": "val/top1"}
    # a task's loss terms are training curves (MLflow's train section), per-class curves sort below val/
    assert [epoch_metric_name(k) for k in ("train_classification", "train_loss_mask", "ap/circle", "early_stop_epoch")] == \
        ["train/loss_classification", "train/loss_mask", "val_per_class/ap/circle", "train/stopped_epoch"]
    assert best_epoch_tag(5, 8) == "6/8"


@pytest.mark.slow  # trains
def test_trainer_history_counts_epochs_from_one_and_measures_data_wait(in_tmp, capfd):
    from support import task_params
    from visionpipe import stages
    from visionpipe.tasks import parse_task_config

    cfg = parse_task_config("classification", task_params("classification", in_tmp, train={"epochs": 2, "progress_bar": True}))
    index = stages.ingest("classification", cfg)
    bundle, history = stages.train("classification", index, stages.augmentation("classification", cfg), cfg, callbacks=[])
    bars = capfd.readouterr()
    assert "it/s" not in bars.err + bars.out and "\r" not in bars.err  # not a terminal: no tqdm bar, even when asked for
    assert [h["epoch"] for h in history] == [1, 2]
    assert 1 <= bundle["spec"]["best_epoch"] <= 2
    assert all(0.0 <= h["data_wait_fraction"] <= 1.0 for h in history)


def test_process_figures_are_this_process():
    import psutil

    from visionpipe.tracking.callbacks import process_figures

    figures = process_figures()
    assert figures["rss_gb"] == pytest.approx(psutil.Process().memory_info().rss / 2**30, rel=0.2)


# ---------------------------------------------------------------- run names, notes, summary

def test_run_names_tell_task_model_and_time_apart():
    from visionpipe.hooks.mlflow_runs import model_label, run_name, run_stamp

    assert model_label({"model": {"name": "fcos", "backbone": "resnet10t"}}) == "fcos-resnet10t"
    assert model_label({"model": {"name": "resnet10t", "backbone": None}}) == "resnet10t"
    assert run_stamp("2026-11-23T18.04.07.474Z") == "1123-180407"
    assert run_name("detection", "fcos-resnet10t", None, "2026-11-23T18.04.07.474Z") == "detection-fcos-resnet10t-1123-180407"
    assert run_name("detection", "fcos", "training", "2026-11-23T18.04.07.474Z") == "detection-fcos-training-1123-180407"


DECISION = {"model_name": "visionpipe-detection", "version": 3, "alias": "champion", "metric": "map", "new_score": 0.5,
            "champion_version": 2, "champion_score": 0.6, "promoted": False, "run_id": "r"}


def test_registry_line_says_moved_or_kept_and_why():
    from visionpipe.tracking.summary import registry_line

    assert registry_line(DECISION) == ("visionpipe-detection v3: map 0.5000 vs champion v2 0.6000; "
                                       "alias 'champion' kept on v2 (not better)")
    first = {**DECISION, "version": 1, "champion_version": None, "champion_score": None, "promoted": True}
    assert registry_line(first).endswith("vs no champion before; alias 'champion' moved to v1")
    assert registry_line({"skipped": "detection.registry.enabled is false"}) == "not registered: detection.registry.enabled is false"


def test_summary_reads_back_only_what_this_run_wrote(tmp_path):
    from visionpipe.tracking.summary import collect, terminal_lines

    report = tmp_path / "data/08_reporting/detection"
    report.mkdir(parents=True)
    (report / "all_metrics.json").write_text(json.dumps({"map": 0.25, "map_50": 0.5, "ap/circle": 0.1, "val_images": 6}))
    (report / "registration.json").write_text(json.dumps(DECISION))
    old = time.time() - 3600
    os.utime(report / "registration.json", (old, old))  # from an earlier run: not news
    (tmp_path / "data/06_models/detection/model").mkdir(parents=True)
    summary = collect("detection", "detection", tmp_path, since=time.time() - 60)
    assert summary.metrics == {"map": 0.25, "map_50": 0.5}
    assert summary.registration is None
    lines = terminal_lines(summary)
    assert lines[0] == "detection"
    assert "  metrics  map 0.2500  map_50 0.5000" in lines
    assert any(line.startswith("  outputs") and "data/06_models/detection/model/" in line for line in lines)


def test_the_runs_view_is_saved_once_per_experiment_and_linked_from_the_summary(tmp_path):
    """MLflow 3's runs list opens a saved view (an experiment tag) named in the URL: the task's table metrics as
    columns, sorted by its primary metric, best first; saved again only when it changed."""
    from mlflow import MlflowClient

    from visionpipe.tracking.summary import RUNS_VIEW_TAG, RunSummary, runs_view_url, save_runs_view, terminal_lines

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("visionpipe-detection", artifact_location=str(tmp_path / "a"))
    save_runs_view(client, exp, "detection")
    view = json.loads(client.get_experiment(exp).tags[RUNS_VIEW_TAG])
    assert view["name"] == "detection: headline metrics, best first" and isinstance(view["createdAt"], int)
    assert json.loads(view["state"]) == {
        "searchFilter": "", "orderByKey": "metrics.`map`", "orderByAsc": False,
        "selectedColumns": ["metrics.`map`", "metrics.`map_50`", "metrics.`test_map`", "metrics.`test_map_50`"]}
    client.set_experiment_tag(exp, RUNS_VIEW_TAG, json.dumps({**view, "createdAt": 7}))
    save_runs_view(client, exp, "detection")  # unchanged: not rewritten
    assert json.loads(client.get_experiment(exp).tags[RUNS_VIEW_TAG])["createdAt"] == 7
    client.set_experiment_tag(exp, RUNS_VIEW_TAG, "not json")
    save_runs_view(client, exp, "detection")
    assert json.loads(client.get_experiment(exp).tags[RUNS_VIEW_TAG])["state"] == view["state"]
    url = runs_view_url(exp)
    assert url == f"http://127.0.0.1:5000/#/experiments/{exp}/runs?viewStateShareKey=visionpipe-headline"
    lines = terminal_lines(RunSummary(task="detection", pipeline="detection", run_id="abc", experiment_id=exp))
    assert lines[-2:] == [f"  browse   make mlflow-ui, then http://127.0.0.1:5000/#/experiments/{exp}/runs/abc",
                          f"  compare  {url} (every detection run, best first)"]


def test_run_note_describes_task_model_data_results_and_best_epoch():
    from visionpipe.tracking.summary import run_note

    tags = {"visionpipe.model_label": "fcos-resnet10t", "data.root": "/d", "data.format": "coco", "data.dvc_md5": "m.dir",
            "visionpipe.best_epoch": "6/8"}
    note = run_note("detection", tags, {"map": 0.5, "map_50": 0.7, "process/eval_time_s": 1.0}, DECISION)
    assert note.splitlines() == [
        "**detection** with `fcos-resnet10t`",
        "- data: `/d` (coco), dvc md5 `m.dir`",
        "- validation: map 0.5000, map_50 0.7000",
        "- best epoch 6/8 restored",
        "- registry: visionpipe-detection v3: map 0.5000 vs champion v2 0.6000; alias 'champion' kept on v2 (not better)",
    ]


# ---------------------------------------------------------------- logs

def test_project_logging_config_is_accepted_by_kedro_and_quiet():
    from kedro.framework.project import _ProjectLogging

    config = yaml.safe_load((PROJECT / "conf" / "logging.yml").read_text())
    before = logging.getLogger().manager.disable
    _ProjectLogging().configure(config)  # Kedro's own validation (allowed classes only)
    try:
        for name in ("kedro.io.data_catalog", "kedro.runner.sequential_runner", "kedro_mlflow.framework.hooks.mlflow_hook",
                     "kedro.framework.project"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger("visionpipe.stages").isEnabledFor(logging.INFO)
    finally:
        logging.disable(before)


def test_verbose_brings_the_details_back(monkeypatch):
    from visionpipe import console

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setattr(console, "interactive", lambda: True)  # download bars only where a person watches
    assert console.verbose_requested(True) and not console.verbose_requested(False)
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.verbose_requested(False)
    levels = {name: logging.getLogger(name).level for name in console.QUIET_LOGGERS}
    try:
        console.set_verbosity(True)
        assert logging.getLogger("kedro.io.data_catalog").isEnabledFor(logging.INFO)
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"
        logging.getLogger("kedro_mlflow").setLevel(logging.INFO)  # what `import kedro_mlflow` does
        console.set_verbosity(False)  # quiet: conf/logging.yml's levels, kedro-mlflow and MLflow held at WARNING
        assert not logging.getLogger("kedro_mlflow.framework.hooks.mlflow_hook").isEnabledFor(logging.INFO)
        assert not logging.getLogger("mlflow.store.db.utils").isEnabledFor(logging.INFO)
        assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        logging.getLogger("py.warnings").addFilter(console.clean_warning)


def test_a_log_that_is_not_a_terminal_gets_whole_plain_lines(monkeypatch, capsys):
    """`make run > run.log`, CI: Rich's 80-column wrapping would split an epoch line over several lines."""
    from kedro.logging import RichHandler

    from visionpipe import console

    root = logging.getLogger()
    saved = list(root.handlers)
    monkeypatch.setattr(console, "interactive", lambda: False)
    rich_handler = RichHandler(level=logging.INFO)
    root.handlers = [rich_handler]
    try:
        console.plain_logs_when_piped()
        (plain,) = root.handlers
        assert type(plain) is logging.StreamHandler and plain.level == logging.INFO
        line = "epoch 3/8 " + " ".join(f"term{i}=0.{i:04d}" for i in range(20))
        logging.getLogger("visionpipe.engine.trainer").warning(line)
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and out.rstrip().endswith(line) and "WARNING" in out, out
    finally:
        root.handlers = saved
    monkeypatch.setattr(console, "interactive", lambda: True)
    root.handlers = [rich_handler]
    try:
        console.plain_logs_when_piped()  # a terminal keeps Rich (and its live progress bars)
        assert root.handlers == [rich_handler]
    finally:
        root.handlers = saved


def test_warnings_lose_colour_codes_and_the_type_hint_nag():
    from visionpipe.console import clean_warning

    def record(text):
        return logging.LogRecord("py.warnings", logging.WARNING, __file__, 1, "%s", (text,), None)

    assert not clean_warning(record("x.py:1: UserWarning: \x1b[33mAdd type hints to the `predict` method to enable\x1b[0m"))
    kept = record("x.py:1: UserWarning: \x1b[31mSomething else\x1b[0m")
    assert clean_warning(kept) and kept.getMessage() == "x.py:1: UserWarning: Something else"


def test_help_and_pyfunc_import_print_no_log_line_or_warning(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "src")}
    env.pop("VISIONPIPE_VERBOSE", None)
    proc = subprocess.run([str(BIN / "visionpipe"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: visionpipe")
    assert proc.stderr == "" and "INFO" not in proc.stdout
    proc = subprocess.run([sys.executable, "-W", "always", "-c", "import visionpipe.serving.pyfunc"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "type hints" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------- plots and masks

def test_predicted_masks_are_palette_pngs_that_keep_class_indices(tmp_path):
    from visionpipe.plots import class_colours, palette_mask

    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    palette_mask(mask, 3).save(tmp_path / "m.png")
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P"
    assert (np.asarray(image) == mask).all()
    rgb = np.asarray(image.convert("RGB"))
    assert tuple(rgb[0, 1]) == tuple((class_colours(3)[1] * 255).round().astype(int))
    assert tuple(rgb[1, 1]) == (255, 255, 255) and len({tuple(p) for p in rgb.reshape(-1, 3)}) == 4


def test_box_grid_shows_the_top_k_above_the_threshold():
    from visionpipe.plots import top_detections

    preds = [{"image_id": 1, "score": s, "category_id": 1, "bbox": [0, 0, 1, 1]} for s in (0.2, 0.9, 0.5, 0.7, 0.35)]
    preds.append({"image_id": 2, "score": 0.99, "category_id": 1, "bbox": [0, 0, 1, 1]})
    assert [p["score"] for p in top_detections(preds, 1, 0.3, 3)] == [0.9, 0.7, 0.5]


def _coco(tmp_path):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0},
                          {"id": 2, "image_id": 1, "category_id": 2, "bbox": [16, 16, 8, 8], "area": 64, "iscrowd": 0}],
          "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]}
    preds = [{"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "score": 0.9},
             {"image_id": 1, "category_id": 2, "bbox": [0, 0, 4, 4], "score": 0.8}]
    return gt, preds


def test_pr_curves_put_each_class_ap_in_the_legend(tmp_path):
    from visionpipe.plots import box_grid, pr_curves
    from visionpipe.tasks.detection import coco_evaluate

    gt, preds = _coco(tmp_path)
    _, ev = coco_evaluate(gt, preds, ["circle", "square"])  # plots draw the COCOeval they are handed
    fig = pr_curves(ev, {c["id"]: c["name"] for c in gt["categories"]})
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["circle (AP50 1.000)", "square (AP50 0.000)"]
    grid = box_grid(preds, gt, {"root": str(tmp_path)}, min_score=0.85)
    # true boxes labelled with their class, predictions with class and score; one colour per class
    assert [t.get_text() for t in grid.axes[0].texts] == ["circle", "square", "circle 0.90"]
    true_circle, true_square, found_circle = grid.axes[0].patches
    assert true_circle.get_edgecolor() == found_circle.get_edgecolor() != true_square.get_edgecolor()
    assert true_circle.get_linestyle() == "solid" and found_circle.get_linestyle() != "solid"
    assert [t.get_text() for t in grid.legends[0].get_texts()][:2] == ["circle", "square"]


def test_detection_confusion_matrix_counts_misses_and_false_positives_as_background(tmp_path):
    from visionpipe.tasks.detection import detection_confusion

    gt, preds = _coco(tmp_path)
    preds += [{"image_id": 1, "category_id": 1, "bbox": [16, 16, 8, 8], "score": 0.7},  # the square, called a circle
              {"image_id": 1, "category_id": 2, "bbox": [2, 2, 10, 10], "score": 0.1}]  # under the score threshold
    # rows true (circle, square, background), columns predicted; the square at [0, 0, 4, 4] overlaps the circle
    # by IoU 4/112: a false positive
    assert detection_confusion(preds, gt).tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert detection_confusion(preds[:1], gt).tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]  # the square missed


def _smallest_text_px(fig) -> float:
    import matplotlib.text

    sizes = [t.get_fontsize() * fig.dpi / 72 for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    return min(sizes)


def test_every_figure_reads_at_its_saved_size(tmp_path):
    """Text at least 12 px in the saved PNG (MatplotlibDataset saves at the figure's dpi); results.png has a
    panel per curve, per-class curves coloured by class."""
    import pandas as pd

    from visionpipe import plots
    from visionpipe.engine.coco import coco_evaluate
    from visionpipe.tasks.detection import detection_confusion

    gt, preds = _coco(tmp_path)
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.0], "train_classification": [1.0, 0.5], "lr": [0.1, 0.0],
                            "map": [0.1, 0.3], "ap/circle": [0.1, 0.4], "ap/square": [0.1, 0.2]})
    classes = ["circle", "square"]
    predictions = pd.DataFrame({"target": [0, 1, 1], "top1": [0, 1, 0]})
    _, ev = coco_evaluate(gt, preds, classes)
    figures = {"results": plots.results(history), "pr": plots.pr_curves(ev, {c["id"]: c["name"] for c in gt["categories"]}),
               "boxes": plots.box_grid(preds, gt, {"root": str(tmp_path)}),
               "confusion": plots.detection_confusion_matrix(detection_confusion(preds, gt), classes, 0.25, 0.45),
               "classification": plots.confusion_matrix(predictions, [0, 1]), "accuracy": plots.per_class_accuracy(predictions, [0, 1])}
    for name, fig in figures.items():
        assert _smallest_text_px(fig) >= plots.MIN_TEXT_PX, name
        fig.savefig(tmp_path / f"{name}.png")
        with Image.open(tmp_path / f"{name}.png") as png:
            assert 300 <= png.width <= 2000 and png.size == tuple((fig.get_size_inches() * plots.DPI).round().astype(int)), name
    titles = [ax.get_title() for ax in figures["results"].axes if ax.has_data()]
    assert titles == ["loss", "train classification", "learning rate", "map", "ap per class"]
    per_class = figures["results"].axes[4].get_lines()
    assert [line.get_label() for line in per_class] == classes and len({tuple(line.get_color()) for line in per_class}) == 2


def test_segmentation_overlays_have_a_class_legend(tmp_path):
    from visionpipe.plots import class_colours, mask_overlays

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "a_mask.png")
    index = {"root": str(tmp_path), "classes": ["background", "cat", "dog"], "val": [{"image": "a.png", "mask": "a_mask.png"}]}
    predicted = np.zeros((8, 8), np.uint8)
    predicted[2:6, 2:6] = 2
    fig = mask_overlays({"a": predicted}, index)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["background", "cat", "dog"]
    # each class region outlined in its own colour (over a black stroke), not only tinted
    outlines = [c for ax in fig.axes for c in ax.collections if c.get_path_effects()]
    assert len(outlines) == 2 and {tuple(np.round(c.get_edgecolor()[0][:3], 3)) for c in outlines} == \
        {tuple(np.round(class_colours(3)[k], 3)) for k in (1, 2)}


# ---------------------------------------------------------------- pyfunc params

def test_detection_results_are_limited_by_score_and_count():
    from visionpipe.tasks.detection import limit_detections

    result = {"boxes": [[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], "labels": ["a", "b", "c"], "scores": [0.9, 0.6, 0.3]}
    assert limit_detections(result, 0.5, None)["labels"] == ["a", "b"]
    assert limit_detections(result, None, 1) == {"boxes": [[0, 0, 1, 1]], "labels": ["a"], "scores": [0.9]}


def test_pyfunc_params_schema_and_keyword_arguments():
    from mlflow.models import infer_signature

    from visionpipe.serving.predictor import encode_png
    from visionpipe.serving.pyfunc import VisionPipeModel, default_params

    spec = {"task": "detection", "evaluation": {"score_threshold": 0.05, "max_detections": 100}}
    assert default_params(spec) == {"score_threshold": 0.05, "max_detections": 100}
    assert default_params({"task": "classification"}) == {}
    signature = infer_signature(pd.DataFrame({"image": ["x"]}), params=default_params(spec))
    assert {p.name: (p.dtype.name, p.default) for p in signature.params.params} == {
        "score_threshold": ("double", 0.05), "max_detections": ("long", 100)}

    class Recorder:
        spec = {"task": "detection"}
        allow_paths = False

        def predict(self, images, **params):
            self.called = (images, params)
            return [{"boxes": [], "labels": [], "scores": []}]

    model = VisionPipeModel()
    model.predictor = Recorder()
    image = encode_png(np.zeros((5, 7, 3), dtype=np.uint8))
    model.predict(None, pd.DataFrame({"image": [image]}), params={"score_threshold": 0.5, "max_detections": 3})
    (decoded,), params = model.predictor.called
    assert decoded.shape == (5, 7, 3) and params == {"score_threshold": 0.5, "max_detections": 3}


def test_a_served_model_reads_no_server_files_unless_logged_to(tmp_path):
    from mlflow.exceptions import MlflowException

    from visionpipe.serving.predictor import decode_image, encode_png
    from visionpipe.serving.pyfunc import VisionPipeModel

    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)

    class Recorder:
        allow_paths = False

        def predict(self, images, **params):
            return [{"label": "a"} for _ in images]

    model = VisionPipeModel()
    model.predictor = Recorder()
    answers = []
    for path in (str(secret), str(tmp_path / "missing.png"), "/etc/hostname"):  # the same answer, whether the file exists or not
        with pytest.raises(MlflowException) as err:
            model.predict(None, pd.DataFrame({"image": [path]}))
        answers.append(str(err.value.message).replace(path[:80], "PATH"))
        assert err.value.get_http_status_code() == 400
    assert len(set(answers)) == 1 and "registry.serve_file_paths: true" in answers[0], answers
    model.predictor.allow_paths = True  # logged with registry.serve_file_paths: true
    assert model.predict(None, pd.DataFrame({"image": [str(secret)]}))["label"].tolist() == ["a"]
    assert decode_image(encode_png(np.zeros((3, 2, 3), dtype=np.uint8)), allow_paths=False).shape == (3, 2, 3)


# ---------------------------------------------------------------- dvc plots offline

def test_dvc_plots_page_needs_no_internet(tmp_path):
    template = PROJECT / ".dvc" / "offline_plots.html"
    if not template.is_file():
        pytest.skip("`make .dvc/offline_plots.html` (part of `make plots`) builds the template once, with npm")
    if not (BIN / "dvc").exists():
        pytest.skip("the dvc CLI is not installed beside this Python")
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.7, 0.5]}).to_csv(tmp_path / "history.csv", index=False)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env, timeout=120)
    subprocess.run([str(BIN / "dvc"), "plots", "show", "history.csv", "-x", "epoch", "-y", "train_loss", "-o", "out",
                    "--html-template", str(template)], cwd=tmp_path, check=True, env=env, timeout=120, capture_output=True)
    page = (tmp_path / "out" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page  # nothing to fetch
    assert page.count("<script>") >= 3 and "vegaEmbed(" in page and '"train_loss"' in page


def test_plain_dvc_metrics_show_reads_at_120_columns(tmp_path):
    """Plain `dvc metrics show` on the project's dvc.yaml: the four tasks' metrics.json as the evaluation node writes
    them through the catalog's dataset, from every metric a task has at its widest (0.98765..., top5 present):
    one table, only the table metrics, at most 120 columns (COLUMNS=120, as in a terminal of that width)."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    from visionpipe.pipelines.evaluation.nodes import dvc_metrics
    from visionpipe.tasks import TASKS, get_task_class

    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "COLUMNS": "120"}
    (tmp_path / "dvc.yaml").write_text((PROJECT / "dvc.yaml").read_text())
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, env=env, timeout=120)
    catalog = DataCatalog.from_config(OmegaConfigLoader(str(PROJECT / "conf"), base_env="base", default_run_env="base")["catalog"])
    expected = set()
    for task in TASKS:
        task_cls = get_task_class(task)
        written = dvc_metrics(task_cls, {name: 0.987654321 for name in task_cls.metrics} | {f"{task_cls.per_class_metric}/c": 0.5})
        dataset = catalog.get(f"{task}.dvc_metrics")
        path = tmp_path / Path(dataset._filepath).relative_to(PROJECT) if Path(dataset._filepath).is_absolute() \
            else tmp_path / dataset._filepath
        type(dataset)(str(path)).save(written)
        assert written == {k: 0.9877 for k in task_cls.table_metrics}
        expected |= set(written)
    shown = subprocess.run([str(BIN / "dvc"), "metrics", "show"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           check=True, timeout=120).stdout.splitlines()
    assert shown[0].split() == ["Path", *sorted(expected)] and len(shown) == 1 + len(TASKS)
    assert {line.split()[0] for line in shown[1:]} == {f"data/08_reporting/{t}/metrics.json" for t in TASKS}
    assert max(len(line) for line in shown) <= 120, "\n".join(shown)


def test_dvc_metrics_are_the_table_metrics_and_their_test_twins():
    from visionpipe.pipelines.evaluation.nodes import dvc_metrics
    from visionpipe.tasks import get_task_class

    cls = get_task_class("classification")
    metrics = {"val_loss": 0.3, "top1": 0.123456, "test/top1": 0.5, "test/val_loss": 1.0, "test/top5": 1}
    assert dvc_metrics(cls, metrics) == {"top1": 0.1235, "test/top1": 0.5, "test/top5": 1.0}  # no top5: 5 classes or fewer
    untold = type("Untold", (), {"table_metrics": (), "primary_metric": "miou"})
    assert dvc_metrics(untold, {"miou": 0.25, "dice": 0.3}) == {"miou": 0.25}  # a task naming none: its primary metric


def test_make_metrics_shows_every_metric_of_each_task(tmp_path, monkeypatch, capsys):
    """`make metrics` reads each task's all_metrics.json (not DVC's metrics file): every metric, per-class ones too,
    one block per task; paths among the arguments replace them."""
    from visionpipe.experiments import metrics_view

    for task, metrics in (("detection", {"map": 0.43027, "ap/circle": 0.26}), ("classification", {"top1": 0.9})):
        (tmp_path / "data/08_reporting" / task).mkdir(parents=True)
        (tmp_path / "data/08_reporting" / task / "all_metrics.json").write_text(json.dumps(metrics))
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=120)
    assert metrics_view.targets(["-A"], tmp_path) == [f"data/08_reporting/{t}/all_metrics.json" for t in ("classification", "detection")]
    assert metrics_view.targets(["--precision", "3", "data/x.json"], tmp_path) == []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    assert metrics_view.main([]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "classification  data/08_reporting/classification/all_metrics.json", "  top1 0.9000",
        "detection  data/08_reporting/detection/all_metrics.json", "  map 0.4303  ap/circle 0.2600"]


def test_metrics_view_reads_at_120_columns():
    """`make metrics`: DVC's one table would have a column per metric name of every task; one block per task instead."""
    from visionpipe.experiments.metrics_view import render

    per_class = {f"mask_ap/class_{i}": 0.5 for i in range(12)}
    shown = {"": {"data": {"data/08_reporting/instance_segmentation/all_metrics.json": {"data": {"mask_map": 0.25, **per_class}},
                           "data/08_reporting/classification/all_metrics.json": {"data": {"top1": 0.93333, "val_loss": 0.3}},
                           "data/08_reporting/detection/all_metrics.json": {"error": {"type": "FileNotFoundError"}}}}}
    lines = render(shown).splitlines()
    assert max(len(line) for line in lines) <= 120 and len(lines) > 5
    assert lines[0] == "classification  data/08_reporting/classification/all_metrics.json"
    assert lines[1] == "  top1 0.9333  val_loss 0.3000"
    assert lines[2].startswith("detection") and "cannot read" in lines[3]
    assert sum(line.count("mask_ap/") for line in lines) == 12  # every metric shown, none cut
