"""Whole `kedro run`s on tiny built-in data in a copy of the project; every output is read back."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from support import PROJECT, TASKS, TINY, free_port, kedro, make_project, tiny_params, wait_for_http

pytestmark = pytest.mark.slow


def _registry_name(task: str) -> str:
    return f"visionpipe-{task.replace('_', '-')}"  # registry.model_name null: the built-in data's own name


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project (configuration only: the package is installed) after one default run, started as
    `make run` starts it (`visionpipe run`); its terminal output is kept in run_output.txt."""
    root = make_project(tmp_path_factory.mktemp("project"))
    proc = kedro(root, "run", f"--params={tiny_params(onnx=True)}", program="visionpipe")  # registered with model.onnx
    (root / "run_output.txt").write_text(proc.stdout + proc.stderr)
    return root


@pytest.fixture(scope="module")
def client(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)


def _runs(client, task):
    exp = client.get_experiment_by_name(f"visionpipe-{task}")  # one MLflow experiment per task
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`visionpipe.task` = '{task}'",
                              order_by=["attributes.start_time ASC"])


def test_default_run_makes_one_mlflow_run_per_task(project, client):
    for task in TASKS:
        runs = _runs(client, task)
        assert len(runs) == 1, task
        run = runs[0]
        assert run.info.status == "FINISHED"
        assert run.data.params[f"{task}.train.epochs"] == "1"
        assert run.data.tags["visionpipe.task"] == task
        for tag in ("git.commit", "git.dirty", "data.fingerprint", "data.dvc_md5", "visionpipe.device_name", "visionpipe.torch_version",
                    "visionpipe.amp_dtype", "kedro.run_id"):
            assert tag in run.data.tags, (task, tag)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [1]  # epochs count from 1, as in the console and history.csv
        assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics), sorted(run.data.metrics)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert "plots/results.png" in artifacts
        assert {a.path for a in client.list_artifacts(run.info.run_id, "reports")} >= {"reports/validation.json", "reports/history.csv"}


def test_terminal_is_quiet_and_ends_each_task_with_a_summary(project, client):
    out = (project / "run_output.txt").read_text()
    assert "Loading data from" not in out and "Saving data to" not in out  # catalog lines are DEBUG detail
    assert "Registering new custom resolver" not in out and "has started" not in out  # kedro-mlflow start-up chatter
    assert "Add type hints" not in out and "\x1b[33m" not in out and "Downloading artifacts" not in out
    assert "as logging configuration" not in out
    for task in TASKS:
        run = _runs(client, task)[0]
        block = out[out.index(f"{task}  run {run.info.run_name}"):]
        for line in ("  metrics", "  best epoch  1/1 restored", f"  registry    {_registry_name(task)} v1:", "alias 'champion' moved to v1",
                     f"data/06_models/{task}/model/", f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}",
                     f"  compare     http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs?viewStateShareKey=visionpipe-headline"):
            # the label column is as wide as the widest label shown ("data warnings" when there are some)
            assert re.sub(r" {2,}", "  ", line) in re.sub(r" {2,}", "  ", block.split("\n\n")[0]), (task, line)
    # not a terminal: no progress bar fragments, and each epoch line whole (Rich would wrap it at 80 columns)
    assert "it/s]" not in out and "\r" not in out
    epoch_lines = [line for line in out.splitlines() if " epoch 1/1 train_loss=" in line]
    assert len(epoch_lines) == len(TASKS) and all(re.search(r"val_loss=|map=|miou=", line) for line in epoch_lines), epoch_lines


def test_each_task_has_its_own_mlflow_experiment_opening_on_loss_and_headline(project, client):
    from visionpipe.tasks import get_task_class

    experiments = {e.name: e for e in client.search_experiments()}
    for task in TASKS:
        exp = experiments[f"visionpipe-{task}"]
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI's "Model training" view
        metrics = client.get_run(_runs(client, task)[0].info.run_id).data.metrics
        # the UI's sections sort by prefix, final metrics last: train/ (loss first), then val/ (headline)
        sections = sorted({k.split("/")[0] for k in metrics if "/" in k and not k.startswith("system/")})
        assert sections[:2] == ["train", "val"], sections
        assert "train/loss" in metrics and f"val/{get_task_class(task).primary_metric}" in metrics
        assert get_task_class(task).primary_metric in metrics  # the runs list's column
        # the summary's `compare` link opens the saved view the run tagged its experiment with: these columns, best first
        view = json.loads(exp.tags["mlflow.sharedViewState.visionpipe-headline"])
        state = json.loads(view["state"])
        assert state["orderByKey"] == f"metrics.`{get_task_class(task).primary_metric}`" and state["orderByAsc"] is False
        shown = [c.split("`")[1] for c in state["selectedColumns"] if c.startswith("metrics.")]
        assert {c for c in shown if c in metrics} == set(get_task_class(task).table_metrics) & set(metrics) != set(), shown


def _plot_inputs(project, task):
    """What the plot node was given: the clean index, history.csv and the task's evaluation outputs, read back."""
    from visionpipe.tasks import get_task_class

    outputs = {}
    folder = project / "data/07_model_output" / task
    for name in get_task_class(task).output_datasets:
        if (folder / f"{name}.csv").exists():
            outputs[name] = pd.read_csv(folder / f"{name}.csv")
        elif (folder / f"{name}.json").exists():
            outputs[name] = json.loads((folder / f"{name}.json").read_text())
        else:  # predicted masks: a folder of palette PNGs
            outputs[name] = {p.stem: np.asarray(Image.open(p)) for p in (folder / "masks").glob("*.png")}
    index = json.loads((project / "data/03_primary" / task / "clean_index.json").read_text())
    return outputs, index, pd.read_csv(project / "data/08_reporting" / task / "history.csv")


def test_every_plot_of_every_task_reads_at_its_saved_size(project):
    """Each task's figures, drawn again from what the run saved: text >= 12 px at the saved size (the PNGs the
    run wrote have that size), one legend colour per class where classes are drawn."""
    import matplotlib.text

    from visionpipe.tasks import get_task_class
    from visionpipe.plots import MIN_TEXT_PX

    for task in TASKS:
        task_cls = get_task_class(task)
        outputs, index, history = _plot_inputs(project, task)
        figures = task_cls.plots(outputs, index, history)
        # evaluation_plots (PR curves) are drawn by the evaluate node from its own COCOeval, not from saved files
        assert set(figures) | set(task_cls.evaluation_plots) == set(task_cls.plot_names) and "results" in figures, task
        for name, fig in figures.items():
            texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
            assert min(t.get_fontsize() for t in texts) * fig.dpi / 72 >= MIN_TEXT_PX, (task, name)
            with Image.open(project / "data/08_reporting" / task / "plots" / f"{name}.png") as png:
                assert png.size == tuple((fig.get_size_inches() * fig.dpi).round().astype(int)), (task, name)
            for legend in fig.legends:  # class legends: one distinct colour per class
                patches = [h for h in legend.get_patches()]
                assert len({tuple(np.round(p.get_facecolor(), 3)) for p in patches}) == len(patches), (task, name)
        if task != "classification":
            drawn = figures["val_boxes" if task == "detection" else "val_instances" if task == "instance_segmentation" else "val_overlays"]
            assert len(drawn.legends[0].get_patches()) == len(index["classes"]), task


def test_runs_are_named_described_and_carry_their_data_as_a_dataset(project, client):
    from visionpipe.tracking.lineage import dvc_dir_md5

    labels = {"classification": "resnet10t_nano", "detection": "rtdet-resnet10t_nano", "segmentation": "Unet-resnet18",
              "instance_segmentation": "maskrcnn-resnet10t"}
    for task in TASKS:
        run = _runs(client, task)[0]
        assert re.fullmatch(rf"{task}-{labels[task]}-\d{{4}}-\d{{6}}", run.info.run_name), run.info.run_name
        root = project / "data/01_raw/builtin" / task
        md5 = dvc_dir_md5(root)
        tags = run.data.tags
        assert tags["data.dvc_md5"] == md5 and tags["visionpipe.best_epoch"] == "1/1"
        assert "run_id" not in tags and tags["runner"] == "SequentialRunner"  # kedro-mlflow's noise tags
        assert run.data.params["data.root"] == str(root)
        (entry,) = run.inputs.dataset_inputs
        assert (entry.dataset.name, entry.dataset.digest) == (f"{task}-builtin", md5)
        assert json.loads(entry.dataset.profile)["val"] == TINY[task]["data"]["builtin"]["val_images"]
        note = tags["mlflow.note.content"]
        assert note.startswith(f"**{task}** with `{labels[task]}`") and md5 in note and "best epoch 1/1 restored" in note
        assert "registry: visionpipe-" in note


def test_metrics_have_one_name_and_timings_their_own_file(project, client):
    for task in TASKS:
        metrics = client.get_run(_runs(client, task)[0].info.run_id).data.metrics
        assert not {"val_loss", "eval_time_s", "val_images", "train/epoch_time_s"} & set(metrics), sorted(metrics)
        from visionpipe.tasks import get_task_class

        curve = "val/loss" if "val_loss" in get_task_class(task).metrics else f"val/{get_task_class(task).primary_metric}"
        assert {curve, "system/process/epoch_time_s", "system/process/data_wait_fraction",
                "system/process/rss_gb", "system/process/eval_time_s"} <= set(metrics)
        assert not [k for k in metrics if k.startswith("val/train")], sorted(metrics)  # loss terms are train/loss_<term>
        report = project / "data/08_reporting" / task
        full = json.loads((report / "all_metrics.json").read_text())
        assert not {"eval_time_s", "evaluation", "val_images"} & set(full)
        # metrics.json (DVC's): the task's few table metrics of all_metrics.json, at 4 decimals
        task_cls = get_task_class(task)
        assert json.loads((report / "metrics.json").read_text()) == {k: round(full[k], 4) for k in task_cls.table_metrics if k in full}
        assert metrics[task_cls.primary_metric] == pytest.approx(full[task_cls.primary_metric])  # MLflow's final metric
        history = pd.read_csv(report / "history.csv")
        assert not {"epoch_time_s", "images_per_s", "data_wait_fraction"} & set(history.columns)
        assert history["epoch"].tolist() == [1]
        timings = pd.read_csv(report / "timings.csv")
        assert timings["epoch"].tolist() == [1] and (timings["data_wait_fraction"].between(0, 1)).all()
        details = json.loads((report / "evaluation.json").read_text())
        assert details["eval_time_s"] > 0 and details["val_images"] == TINY[task]["data"]["builtin"]["val_images"] and details["evaluation"]


def test_classification_outputs(project, client):
    metrics = json.loads((project / "data/08_reporting/classification/all_metrics.json").read_text())
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    predictions = pd.read_csv(project / "data/07_model_output/classification/predictions.csv")
    assert list(predictions.columns[:7]) == ["image", "target", "top1", "top2", "top3", "top4", "top5"]
    assert len(predictions) == TINY["classification"]["data"]["builtin"]["val_images"]
    assert (predictions["target"] == predictions["top1"]).mean() == pytest.approx(metrics["top1"])
    hits5 = [row.target in (row.top1, row.top2, row.top3, row.top4, row.top5) for row in predictions.itertuples()]
    assert np.mean(hits5) == pytest.approx(metrics["top5"])
    run = _runs(client, "classification")[0]
    assert run.data.metrics["top1"] == pytest.approx(metrics["top1"])
    version = client.get_model_version_by_alias("visionpipe-classification", "champion")
    assert version.run_id == run.info.run_id and int(version.version) == 1


def test_detection_outputs_can_be_rescored(project):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = project / "data/07_model_output/detection"
    metrics = json.loads((project / "data/08_reporting/detection/all_metrics.json").read_text())
    assert {"map", "map_50", "map_75"} <= set(metrics) and any(k.startswith("ap/") for k in metrics)
    predictions = json.loads((out / "predictions.json").read_text())
    gt = json.loads((out / "ground_truth.json").read_text())
    image_ids = {i["id"] for i in gt["images"]}
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} and p["image_id"] in image_ids for p in predictions)
    per_image = pd.Series([p["image_id"] for p in predictions]).value_counts()
    assert per_image.empty or per_image.max() <= 100  # a 1-epoch detector may find nothing
    if predictions:
        coco = COCO(str(out / "ground_truth.json"))
        ev = COCOeval(coco, coco.loadRes(str(out / "predictions.json")), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
        assert ev.stats[0] == pytest.approx(metrics["map"], abs=1e-6)


def test_segmentation_masks_can_be_rescored(project):
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    metrics = json.loads((project / "data/08_reporting/segmentation/all_metrics.json").read_text())
    index = json.loads((project / "data/03_primary/segmentation/clean_index.json").read_text())
    masks = sorted((project / "data/07_model_output/segmentation/masks").glob("*.png"))
    assert len(masks) == len(index["val"])
    iou = MulticlassJaccardIndex(len(index["classes"]), average="none", ignore_index=255, zero_division=float("nan"))
    for rec in index["val"]:
        truth = np.asarray(Image.open(Path(index["root"]) / rec["mask"]))
        pred = np.asarray(Image.open(project / "data/07_model_output/segmentation/masks" / f"{Path(rec['image']).stem}.png"))
        assert pred.shape == truth.shape
        iou.update(torch.from_numpy(pred.astype(np.int64))[None], torch.from_numpy(truth.astype(np.int64))[None])
    per_class = iou.compute()
    assert float(torch.nanmean(per_class)) == pytest.approx(metrics["miou"], abs=1e-5)
    for name, value in zip(index["classes"], per_class.tolist()):
        assert metrics[f"iou/{name}"] is None if np.isnan(value) else metrics[f"iou/{name}"] == pytest.approx(value, abs=1e-5)


def test_champion_gate_keeps_the_alias_for_a_worse_model(project, client):
    name = "visionpipe-classification"
    champion = client.get_model_version_by_alias(name, "champion")
    assert int(champion.version) == 1
    client.set_model_version_tag(name, champion.version, "metric.top1", "1.0")  # no new model can beat a perfect champion
    proc = kedro(project, "run", "--pipelines=classification", f"--params={tiny_params(('classification',))}")
    assert "visionpipe-classification v2: top1" in proc.stdout and "alias 'champion' kept on v1 (not better)" in proc.stdout
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert versions == [1, 2]
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    decision = json.loads((project / "data/08_reporting/classification/registration.json").read_text())
    assert decision["promoted"] is False and decision["champion_score"] == 1.0 and decision["version"] == 2


def test_pyfunc_champion_predicts_like_the_in_process_model(project):
    from visionpipe.serving.predictor import Predictor

    images = sorted((project / "data/01_raw/builtin/classification/val").rglob("*.png"))[:5]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri('sqlite:///{project / 'mlflow.db'}')\n"
        "m = mlflow.pyfunc.load_model('models:/visionpipe-classification@champion', model_config={'allow_file_paths': True})\n"
        "out = m.predict(pd.DataFrame({'image': sys.argv[1:]}))\n"
        "print(json.dumps(out[['label', 'score']].to_dict(orient='records')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, images)], capture_output=True, text=True, cwd=project, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = json.loads(proc.stdout.strip().splitlines()[-1])
    local = Predictor.from_folder(project / "data/06_models/classification/model").predict(images)
    assert [r["label"] for r in remote] == [r["label"] for r in local]
    assert [r["score"] for r in remote] == pytest.approx([r["score"] for r in local], abs=1e-4)  # ONNX Runtime vs torch


def test_detection_pyfunc_takes_params_through_its_signature(project):
    images = sorted((project / "data/01_raw/builtin/detection/images/val").glob("*.png"))[:3]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri('sqlite:///{project / 'mlflow.db'}')\n"
        "m = mlflow.pyfunc.load_model('models:/visionpipe-detection@champion', model_config={'allow_file_paths': True})\n"
        "frame = pd.DataFrame({'image': sys.argv[1:]})\n"
        "full, cut = m.predict(frame), m.predict(frame, params={'score_threshold': 0.0, 'max_detections': 1})\n"
        "print(json.dumps({'params': {p.name: p.default for p in m.metadata.signature.params.params},\n"
        "                  'full': full['scores'].tolist(), 'cut': cut['scores'].tolist()}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, images)], capture_output=True, text=True, cwd=project, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["params"] == {"score_threshold": 0.05, "max_detections": 100}  # the run's evaluation block
    assert out["cut"] == [scores[:1] for scores in out["full"]]


def test_notebook_runs_top_to_bottom_on_the_store(project):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(PROJECT / "notebooks" / "compare_champions.ipynb", as_version=4)
    os.environ["VISIONPIPE_PROJECT"] = str(project)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(project)}}).execute()
    finally:
        os.environ.pop("VISIONPIPE_PROJECT")
    streams = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "IProgress" not in streams and "Downloading artifacts" not in streams and "%|" not in streams
    figures = [o for o in nb.cells[7].outputs if "image/png" in o.get("data", {})]
    assert len(figures) == int(nb.cells[7].outputs[-1]["text"].split()[0])  # one figure per plot, at its own size
    champions = nb.cells[5].outputs[0]["data"]["text/plain"]
    for task in TASKS:
        assert f"visionpipe-{task.replace('_', '-')}" in champions  # registry.model_name in conf/base
    assert "plots shown" in nb.cells[7].outputs[-1]["text"] and not nb.cells[7].outputs[-1]["text"].startswith("0 ")


def test_predict_command_and_onnx_export(project, tmp_path):
    images = project / "data/01_raw/builtin/segmentation/val/images"
    out = tmp_path / "masks.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    proc = subprocess.run([str(Path(sys.executable).parent / "visionpipe"), "predict", "--task", "segmentation", "--images", str(images),
                           "--output", str(out)], cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]  # JSON Lines
    assert len(records) == len(list(images.glob("*.png")))
    import base64
    import io

    first = records[0]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["mask_png"]))))
    written = np.asarray(Image.open(project / "data/07_model_output/segmentation/masks" / Path(first["image"]).name))
    assert (mask == written).mean() > 0.99  # the registered model reproduces the evaluation's masks

    assert "(onnx engine)" in proc.stdout  # registered models carry model.onnx: ONNX Runtime is the CPU engine
    from visionpipe.serving.export import export_onnx

    assert export_onnx(project / "data/06_models/classification/model", tmp_path / "classification.onnx").is_file()


def test_served_models_answer_base64_images_and_refuse_server_paths(project, tmp_path):
    """`visionpipe serve` (what `make serve` runs) starts MLflow's real scoring server with the venv not activated;
    base64 images posted to /invocations get the in-process model's answers; a server-local path gets a 400."""
    import base64
    import signal
    import urllib.error
    import urllib.request

    from visionpipe.serving.predictor import Predictor
    from visionpipe.tasks import get_task_class

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["PATH"] = "/usr/bin:/bin"  # no venv on PATH: MLflow's `uvicorn` must still be found
    servers = {}

    def post(url, body):
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["predictions"]

    try:
        for task, extra in (("classification", ["--model-uri", "models:/visionpipe-classification@champion"]), ("detection", [])):
            port, log = free_port(), open(tmp_path / f"{task}.log", "w")
            proc = subprocess.Popen([str(Path(sys.executable).parent / "visionpipe"), "serve", "--task", task, "--port", str(port), *extra],
                                    cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            servers[task] = (proc, f"http://127.0.0.1:{port}", log)
        for task, (proc, url, log) in servers.items():
            wait_for_http(f"{url}/ping", proc, tmp_path / f"{task}.log", timeout=300)
            folder = project / "data/01_raw/builtin" / task
            images = sorted(folder.rglob("*.png"))[:2]
            served = post(url, {"dataframe_split": {"columns": ["image"],
                                                    "data": [[base64.b64encode(p.read_bytes()).decode()] for p in images]}})
            local = Predictor.from_folder(project / f"data/06_models/{task}/model").predict(images)
            assert len(served) == len(local) == 2
            for want, got in zip(local, served):
                if task == "classification":
                    assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-4)
                else:
                    assert get_task_class(task).compare_results(want, got) is None
            with pytest.raises(urllib.error.HTTPError) as refused:
                post(url, {"dataframe_split": {"columns": ["image"], "data": [[str(images[0])]]}})
            assert refused.value.code == 400 and "registry.serve_file_paths" in refused.value.read().decode()
    finally:
        for proc, _, log in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group: mlflow, uvicorn and its worker
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def test_bad_data_fails_with_a_message_not_a_traceback(project, tmp_path):
    root = tmp_path / "pets"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", (16, 16)).save(root / split / cls / "ok.png")
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(KEDRO_DISABLE_TELEMETRY="true", COLUMNS="200")
    proc = subprocess.run([str(Path(sys.executable).parent / "kedro"), "run", "--pipelines=classification",
                           f"--params={tiny_params(('classification',))},classification.data.root={root}"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    tail = proc.stderr.strip().splitlines()[-6:]
    message = "\n".join(tail)
    assert "broken.png" in message and "validation: skip" in message
    assert "Traceback" not in proc.stderr
    report = json.loads((project / "data/08_reporting/classification/validation.json").read_text())
    assert [Path(f["file"]).name for f in report["findings"]] == ["broken.png"]


def test_kedro_viz_build_draws_every_task_pipeline(project):
    """What `make viz` serves, built as static files: every stage and task pipeline, each task its own namespace."""
    if importlib.util.find_spec("kedro_viz") is None:
        pytest.skip("kedro-viz is not installed: it is the `viz` extra (`make test-viz` installs it and runs this test)")
    proc = kedro(project, "viz", "build")
    assert "Success" in proc.stdout + proc.stderr
    graph = json.loads((project / "build/api/main").read_text())
    assert {p["id"] for p in graph["pipelines"]} >= {"__default__", *TASKS, "training", "evaluation"}
    assert set(graph["modular_pipelines"]) >= {"__root__", *TASKS}
    for task in TASKS:
        nodes = json.loads((project / "build/api/pipelines" / task).read_text())["nodes"]
        names = sorted(n["name"] for n in nodes if n["type"] == "task")
        assert names == sorted(["ingest_dataset", "check_dataset", "apply_validation_policy", "report_data_quality", "build_augmentation",
                                "train_model", "evaluate", "plot", "register_model"]), (task, names)
