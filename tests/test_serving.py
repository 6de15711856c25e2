"""The logged pyfunc: its ONNX model and engine, and what a served model reads (file paths only on opt-in)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from support import task_params


@pytest.fixture(scope="module")
def bundle():
    from visionpipe import stages
    from visionpipe.tasks import parse_task_config
    from visionpipe.tasks import get_task

    cfg = parse_task_config("classification", task_params("classification"))
    spec = stages.make_spec("classification", cfg, ["circle", "square", "ring"])
    return {"spec": spec, "state_dict": get_task(spec).build_model().state_dict()}


@pytest.mark.slow  # logs and loads three pyfunc models (~15 s)
def test_the_logged_pyfunc_carries_its_onnx_model_and_the_registry_settings(bundle, tmp_path):
    import mlflow

    from visionpipe.serving.predictor import encode_png
    from visionpipe.tracking.registry import log_pyfunc_model

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            served = log_pyfunc_model(bundle, "with-onnx", onnx=True, allow_file_paths=False)  # registry.onnx, serve_file_paths
            plain = log_pyfunc_model(bundle, "no-onnx", onnx=False, allow_file_paths=True)
        mlflow.artifacts.download_artifacts(served.model_uri, dst_path=str(tmp_path / "served"))
        assert (tmp_path / "served" / "artifacts" / "bundle" / "model.onnx").is_file()
        mlflow.artifacts.download_artifacts(plain.model_uri, dst_path=str(tmp_path / "plain"))
        assert not (tmp_path / "plain" / "artifacts" / "bundle" / "model.onnx").exists()

        image = encode_png(np.random.default_rng(0).integers(0, 256, size=(40, 30, 3), dtype=np.uint8))
        model = mlflow.pyfunc.load_model(served.model_uri)
        predictor = model.unwrap_python_model().predictor
        assert (predictor.engine, predictor.allow_paths) == ("onnx", False)  # ONNX Runtime on CPU; no server files
        torch_model = mlflow.pyfunc.load_model(served.model_uri, model_config={"engine": "torch"})
        assert torch_model.unwrap_python_model().predictor.engine == "torch"
        frame = pd.DataFrame({"image": [image]})
        a, b = model.predict(frame), torch_model.predict(frame)
        assert a["label"].tolist() == b["label"].tolist() and a["score"].tolist() == pytest.approx(b["score"].tolist(), abs=1e-4)
        opted_in = mlflow.pyfunc.load_model(plain.model_uri).unwrap_python_model().predictor
        assert (opted_in.engine, opted_in.allow_paths) == ("torch", True)  # no model.onnx: torch; logged with the opt-in
    finally:
        mlflow.set_tracking_uri(None)


def test_serve_names_a_missing_model_in_one_line(tmp_path):
    from click.testing import CliRunner

    from visionpipe.cli import cli

    store = tmp_path / "mlflow.db"
    store.touch()
    result = CliRunner().invoke(cli, ["serve", "--task", "classification", "--model-uri", str(tmp_path / "no-model"),
                                      "--tracking-uri", f"sqlite:///{store}"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot load {tmp_path / 'no-model'}" in result.output and "--model-uri" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_torch_engine_on_cpu_uses_all_cores_but_one(bundle, monkeypatch):
    """The serving Predictor applies training's CPU thread rule (engine.runtime.cpu_threads): cores less one."""
    import torch

    from visionpipe.engine import runtime
    from visionpipe.serving.predictor import Predictor

    before = torch.get_num_threads()
    try:
        for cores, threads in ((16, 15), (2, 1)):
            monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
            torch.set_num_threads(cores)
            assert Predictor(bundle).engine == "torch" and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_the_onnx_engine_uses_all_cores_but_one_without_spinning(tmp_path, monkeypatch):
    import torch

    from visionpipe.engine import runtime
    from visionpipe.serving.predictor import onnx_session

    torch.onnx.export(torch.nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), str(tmp_path / "conv.onnx"), dynamo=False)
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    options = onnx_session(tmp_path / "conv.onnx").get_session_options()
    assert options.intra_op_num_threads == 15
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
