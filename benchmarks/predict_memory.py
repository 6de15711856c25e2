"""Peak memory of `visionpipe predict`'s streaming loop on large photographs (run by hand, never in CI).

Writes N JPEGs of WxH into a scratch folder (kept between runs), then runs visionpipe.serving.batch over
them with an untrained classifier, sampling the process RSS every 50 ms. Reports the peak RSS after the
first 10 % of the images and at the end: a flat loop has the same peak at both points.

    python benchmarks/predict_memory.py --images 1000 --width 2000 --height 1500
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from _common import emit


def make_images(folder: Path, n: int, width: int, height: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"img_{i:05d}.jpg"
        if not path.exists():
            small = rng.integers(0, 255, size=(12, 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(path, quality=85)
        paths.append(path)
    return paths


class RssSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.proc, self.peak, self.samples, self.running = psutil.Process(), 0, [], True

    def run(self):
        while self.running:
            rss = self.proc.memory_info().rss
            self.peak = max(self.peak, rss)
            self.samples.append(rss)
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "visionpipe_predict_bench"))
    args = parser.parse_args()

    from visionpipe.serving.batch import predict_folder
    from visionpipe.serving.predictor import Predictor
    from visionpipe.tasks import get_task

    folder = Path(args.folder) / f"{args.width}x{args.height}"
    files = make_images(folder, args.images, args.width, args.height)
    spec = {"task": "classification", "classes": [f"c{i}" for i in range(10)], "model": {"name": "resnet10t", "kwargs": {}},
            "image_size": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "ignore_index": 255, "losses": [],
            "evaluation": {}}
    predictor = Predictor({"spec": spec, "state_dict": get_task(spec).build_model().state_dict()}, batch_size=args.batch_size)

    sampler = RssSampler()
    base = sampler.proc.memory_info().rss
    sampler.start()
    early = predict_folder(predictor, files[: max(2 * args.batch_size, args.images // 10)], folder, Path(args.folder) / "early.jsonl",
                           args.batch_size, progress=False)
    peak_early = sampler.peak
    start = time.perf_counter()
    summary = predict_folder(predictor, files, folder, Path(args.folder) / "out.jsonl", args.batch_size, progress=False)
    elapsed = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    emit({"images": summary.written, "size": f"{args.width}x{args.height}", "batch_size": args.batch_size,
          "rss_before_mib": round(base / 2**20, 1), f"peak_rss_after_{early.written}_images_mib": round(peak_early / 2**20, 1),
          f"peak_rss_after_{summary.written}_images_mib": round(sampler.peak / 2**20, 1),
          "images_per_s": round(summary.written / elapsed, 1)})


if __name__ == "__main__":
    main()
