"""Inference engines side by side (run by hand, never in CI): model load time and images/s at batch 1 and 16 for
the torch and the ONNX Runtime engine, and for the logged pyfunc (what `mlflow models serve` runs), one process,
back to back.

The model is a trained model folder (``--model-dir data/06_models/<task>/model``) or, without one, the task's
conf/base model untrained (``--image-size`` overrides its input size). Images are random photos-sized arrays
(``--height`` x ``--width``), the same for every engine; the pyfunc gets them as base64 PNGs, as a client sends.

    python benchmarks/serving.py --task detection --image-size 128 --images 100
    python benchmarks/serving.py --task classification --model-dir data/06_models/classification/model
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support.task_params: the conf/base block, shrunk to CPU


def untrained_bundle(task: str, image_size: int | None) -> dict:
    from support import task_params

    from visionpipe import stages
    from visionpipe.tasks import parse_task_config
    from visionpipe.tasks import get_task

    override = {"train": {"image_size": image_size}} if image_size else {}
    cfg = parse_task_config(task, task_params(task, **override))
    spec = stages.make_spec(task, cfg, [f"class{i}" for i in range(cfg.data.builtin.num_classes)])
    return {"spec": spec, "state_dict": get_task(spec).build_model().state_dict()}


def throughput(run, images: list, batch: int, seconds: float = 5.0) -> tuple[float, float]:
    """Images per second of ``run(chunk)`` over ``images`` in chunks of ``batch`` (after one warm-up chunk), and
    the process CPU milliseconds per image (all threads: the figure a shared machine does not distort)."""
    run(images[:batch])
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds or done == 0:
        for i in range(0, len(images), batch):
            run(images[i:i + batch])
            done += len(images[i:i + batch])
    return round(done / (time.perf_counter() - started), 1), round(1000 * (time.process_time() - cpu) / done, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="detection")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum time per measurement")
    args = parser.parse_args()

    import mlflow
    import pandas as pd
    import torch

    from visionpipe.serving.bundle import ONNX_FILE, load_bundle, save_bundle
    from visionpipe.serving.export import export_bundle
    from visionpipe.serving.predictor import Predictor, encode_png
    from visionpipe.tracking.registry import log_pyfunc_model

    torch.set_num_threads(torch.get_num_threads())
    bundle = load_bundle(args.model_dir) if args.model_dir else untrained_bundle(args.task, args.image_size)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8) for _ in range(args.images)]
    figures = {"task": bundle["spec"]["task"], "model": bundle["spec"]["model"]["name"], "image_size": bundle["spec"]["image_size"],
               "trained": args.model_dir is not None, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bundle"
        save_bundle(bundle, folder)
        started = time.perf_counter()
        export_bundle(bundle, folder / ONNX_FILE)
        figures["export_and_check_s"] = round(time.perf_counter() - started, 2)
        engines = {}
        for engine in ("torch", "onnx", "torch", "onnx"):  # the second round: libraries imported, caches warm
            started, cpu = time.perf_counter(), time.process_time()
            engines[engine] = Predictor.from_folder(folder, engine=engine)
            figures[f"load_{engine}_s"] = round(time.perf_counter() - started, 3)
            figures[f"load_{engine}_cpu_s"] = round(time.process_time() - cpu, 3)
        for engine, predictor in engines.items():
            for batch in (1, 16):
                predictor.batch_size = batch
                figures[f"{engine}_b{batch}_img_s"], figures[f"{engine}_b{batch}_cpu_ms_per_img"] = throughput(
                    predictor.predict_arrays, arrays, batch, args.seconds)

        # the logged pyfunc, loaded as the scoring server loads it (a local model folder; ONNX engine by default)
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        with mlflow.start_run():
            info = log_pyfunc_model(bundle, "bench")
        local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(Path(tmp) / "model"))
        for round_ in ("first", "second"):
            started, cpu = time.perf_counter(), time.process_time()
            model = mlflow.pyfunc.load_model(local, suppress_warnings=round_ == "second")
            figures[f"pyfunc_load_{round_}_s"] = round(time.perf_counter() - started, 3)
            figures[f"pyfunc_load_{round_}_cpu_s"] = round(time.process_time() - cpu, 3)
        figures["pyfunc_engine"] = model.unwrap_python_model().predictor.engine
        frames = [pd.DataFrame({"image": [encode_png(a)]}) for a in arrays]
        figures["pyfunc_b1_img_s"], figures["pyfunc_b1_cpu_ms_per_img"] = throughput(
            lambda chunk: [model.predict(f) for f in chunk], frames, 1, args.seconds)
        mlflow.set_tracking_uri(None)
    emit(figures)


if __name__ == "__main__":
    main()
