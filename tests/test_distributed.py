"""DDP on CPU: two gloo processes train to the same result as one process with the same global batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from support import free_port, task_params

pytestmark = pytest.mark.slow


def _params(tmp, batch_size: int) -> dict:
    # test_vit has no batch norm, so per-rank batches give the same gradients as one large batch
    return task_params("classification", tmp, model={"name": "test_vit", "kwargs": {"img_size": 32}},
                       train={"epochs": 2, "batch_size": batch_size, "lr": 0.001, "scheduler": "none"})


def _train(tmp, batch_size: int):
    from visionpipe import stages
    from visionpipe.tasks import parse_task_config

    cfg = parse_task_config("classification", _params(tmp, batch_size))
    index = stages.ingest("classification", cfg)
    bundle, history = stages.train("classification", index, stages.augmentation("classification", cfg), cfg, callbacks=[])
    metrics, evaluator, _ = stages.evaluate("classification", index, stages.augmentation("classification", cfg), bundle, cfg)
    return bundle, history, metrics, evaluator.predictions


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from visionpipe.engine import distributed

    assert distributed.init_from_env("gloo")
    os.chdir(tmp)
    torch.set_num_threads(1)
    bundle, history, metrics, predictions = _train(__import__("pathlib").Path(tmp), batch_size=4)
    if rank == 0:
        torch.save({"state": bundle["state_dict"], "history": history, "metrics": metrics, "n_predictions": len(predictions)},
                   os.path.join(tmp, "ddp.pt"))
    distributed.barrier()


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: one process, global batch 8."""
    tmp = tmp_path_factory.mktemp("one_process")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        return _train(tmp, batch_size=8)
    finally:
        os.chdir(cwd)


def _assert_matches_one_process(ddp: dict, one_process) -> None:
    single_bundle, single_history, single_metrics, single_predictions = one_process
    for key, value in single_bundle["state_dict"].items():
        torch.testing.assert_close(ddp["state"][key], value, atol=2e-4, rtol=1e-3)
    for a, b in zip(ddp["history"], single_history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3)
    assert ddp["metrics"]["top1"] == pytest.approx(single_metrics["top1"], abs=1 / 12 + 1e-6)  # at most one of 12 images flips
    assert ddp["n_predictions"] == len(single_predictions) == 12  # every rank's shard is gathered


def test_two_gloo_processes_match_one_process(tmp_path, one_process):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    _assert_matches_one_process(torch.load(tmp_path / "ddp.pt", weights_only=False), one_process)


_NODE_SCRIPT = """
import os, sys
from pathlib import Path
import torch
sys.path.insert(0, {tests!r})
from test_distributed import _train
from visionpipe.engine import distributed

assert distributed.init_from_env("gloo")
torch.set_num_threads(1)
bundle, history, metrics, predictions = _train(Path.cwd(), batch_size=4)
if distributed.rank() == 0:
    torch.save({{"state": bundle["state_dict"], "history": history, "metrics": metrics, "n_predictions": len(predictions),
                "world": os.environ["WORLD_SIZE"]}}, "ddp.pt")
distributed.barrier()
"""


def test_two_torchrun_nodes_match_one_process(tmp_path, one_process):
    """Two torchrun agents ("nodes", one process each) meet through a c10d rendezvous on 127.0.0.1, as on a cluster."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "node.py"
    script.write_text(_NODE_SCRIPT.format(tests=str(Path(__file__).parent)))
    endpoint = f"127.0.0.1:{free_port()}"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([str(torchrun), "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
                               "--rdzv_id=visionpipe-test", "--local_addr=127.0.0.1", "--max_restarts=0", str(script)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n---\n".join(out[-3000:] for out in outputs)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    assert ddp["world"] == "2"
    _assert_matches_one_process(ddp, one_process)


def test_kedro_pipeline_under_torchrun_writes_and_logs_once(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    import mlflow
    import pandas as pd

    from support import make_project
    from support import tiny_params

    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(KEDRO_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1")
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(bin_dir / "torchrun"), "--nproc_per_node=2", "--master_port", str(free_port()), str(bin_dir / "kedro"),
                           "run", "--pipelines=classification", f"--params={tiny_params(('classification',))}"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("visionpipe-classification").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["visionpipe.world_size"] == "2"
    assert len(client.search_model_versions("name='visionpipe-classification'")) == 1
    predictions = pd.read_csv(project / "data/07_model_output/classification/predictions.csv")
    details = json.loads((project / "data/08_reporting/classification/evaluation.json").read_text())
    assert len(predictions) == details["val_images"] == 12  # both ranks' shards, written once

    # a stage pipeline under torchrun reads its inputs (index, augmentation) from what the run above wrote:
    # ranks > 0 keep only the stage's outputs in memory
    model_file = project / "data/06_models/classification/model/model.safetensors"
    before = model_file.stat().st_mtime_ns
    proc = subprocess.run([str(bin_dir / "torchrun"), "--nproc_per_node=2", "--master_port", str(free_port()), str(bin_dir / "kedro"),
                           "run", "--pipelines=training", "--namespaces=classification", f"--params={tiny_params(('classification',))}"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert model_file.stat().st_mtime_ns > before
    runs = client.search_runs([client.get_experiment_by_name("visionpipe-classification").experiment_id],
                              filter_string="attributes.run_name LIKE 'classification-%-training-%'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
