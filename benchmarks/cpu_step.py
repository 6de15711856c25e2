"""CPU training-step micro-benchmarks behind this round's defaults (docs/benchmarks.md, sections 13-14), each
variant alternated with the others in one process, best of ``--rounds`` (a shared machine: read the ratios):

* ``models``: one training step (16 x 32 px, AdamW) of classification candidates, with their FLOPs at 32 px;
* ``layout``: NCHW against NHWC (``channels_last``) for a step of the default detector (16 x 128 px) and
  classifier (16 x 32 px);
* ``optimizer``: an AdamW step over the default detector's parameters: per-tensor loop, foreach, fused;
* ``onnx`` (with ``--onnx model.onnx --images DIR``): ONNX Runtime per detection image at default threads
  (spinning) against cores-less-one threads and spinning off.

    python benchmarks/cpu_step.py
    python benchmarks/cpu_step.py --only onnx --onnx /tmp/peer/vp-detection/model.onnx --images /tmp/peer/scenes/images/val
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import timm
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

import visionpipe.models  # noqa: F401  (registers resnet10t_nano)
from _common import emit
from visionpipe import stages
from visionpipe.engine import recipes
from visionpipe.engine.runtime import cpu_threads
from visionpipe.tasks import get_task, parse_task_config

PROJECT = Path(__file__).resolve().parents[1]


def best_of(variants: dict, rounds: int, repeat: int = 3) -> dict:
    """ms per call of each zero-argument callable, alternated, best of ``rounds``."""
    best = {k: float("inf") for k in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            for _ in range(repeat):
                fn()
            best[key] = min(best[key], (time.perf_counter() - start) / repeat)
    return {k: round(v * 1000, 2) for k, v in best.items()}


def classifier_step(name: str, layout=torch.contiguous_format):
    g = torch.Generator().manual_seed(0)
    model = timm.create_model(name, num_classes=10).to(memory_format=layout).train()
    x, y = torch.rand(16, 3, 32, 32, generator=g).contiguous(memory_format=layout), torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, step


def default_detector():
    block = yaml.safe_load((PROJECT / "conf/base/parameters_detection.yml").read_text())["detection"]
    cfg = parse_task_config("detection", block)
    spec = stages.make_spec("detection", cfg, [str(i) for i in range(10)])
    spec["image_size"] = 128
    return get_task(spec).build_model(), cfg


def detector_step(model, layout):
    g = torch.Generator().manual_seed(0)
    model = copy.deepcopy(model).to(memory_format=layout).train()
    images = [torch.rand(3, 128, 128, generator=g) for _ in range(16)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 60.0, 100.0, 110.0]]), "labels": torch.tensor([1, 2])}] * 16
    opt = torch.optim.AdamW(model.parameters(), 1e-3)

    def step():
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", default=["models", "layout", "optimizer"], choices=["models", "layout", "optimizer", "onnx"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--onnx", type=Path, default=None, help="an exported detection model.onnx (peer.py's --workdir has one)")
    ap.add_argument("--images", type=Path, default=None, help="a folder of PNG images for --only onnx")
    args = ap.parse_args()
    torch.set_num_threads(cpu_threads())
    out = {"benchmark": "cpu_step", "threads": torch.get_num_threads()}
    if "models" in args.only:
        names = ["resnet10t", "resnet10t_nano", "resnet18", "mobilenetv3_small_100"]
        steps, flops = {}, {}
        for name in names:
            model, steps[name] = classifier_step(name)
            with FlopCounterMode(display=False) as counter:
                model.eval()(torch.zeros(1, 3, 32, 32))
            model.train()
            flops[name] = round(counter.get_total_flops() / 1e9, 4)
        out["classifier_step_ms"] = best_of(steps, args.rounds)
        out["classifier_gflops_32px"] = flops
    if "layout" in args.only:
        detector, _ = default_detector()
        variants = {"detection_nchw": detector_step(detector, torch.contiguous_format),
                    "detection_nhwc": detector_step(detector, torch.channels_last),
                    "classification_nchw": classifier_step("resnet10t_nano")[1],
                    "classification_nhwc": classifier_step("resnet10t_nano", torch.channels_last)[1]}
        out["layout_step_ms"] = best_of(variants, args.rounds, repeat=2)
    if "optimizer" in args.only:
        detector, cfg = default_detector()
        variants = {}
        for name, kwargs in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
            model = copy.deepcopy(detector)
            for p in model.parameters():
                p.grad = torch.randn_like(p)
            variants[name] = torch.optim.AdamW(recipes.param_groups(model, None, cfg.train), lr=1e-3, **kwargs).step
        out["adamw_step_ms"] = best_of(variants, args.rounds, repeat=20)
    if "onnx" in args.only:
        import onnxruntime as ort

        from visionpipe.serving.predictor import decode_image

        def session(threads: int, spin: str | None):
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            if threads:
                options.intra_op_num_threads = threads
            if spin is not None:
                options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            return ort.InferenceSession(str(args.onnx), sess_options=options, providers=["CPUExecutionProvider"])

        images = [torch.from_numpy(decode_image(p).copy()).permute(2, 0, 1).float().div(255).numpy() for p in sorted(args.images.glob("*.png"))[:32]]
        sessions = {"default": session(0, None), "cores_less_one_nospin": session(cpu_threads(), "0")}
        name = sessions["default"].get_inputs()[0].name
        per_image = {k: (lambda s=s: [s.run(None, {name: x}) for x in images]) for k, s in sessions.items()}
        out["onnx_ms_per_image"] = {k: round(v / len(images), 2) for k, v in best_of(per_image, args.rounds, repeat=1).items()}
    emit(out)


if __name__ == "__main__":
    main()
