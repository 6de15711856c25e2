"""conf/examples: every ready-made parameter file validates, and trains one step on tiny built-in data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from support import PROJECT, TINY, merge
from visionpipe import stages
from visionpipe.tasks import parse_task_config

EXAMPLES = sorted((PROJECT / "conf" / "examples").glob("*.yml"))
NAMES = {"classification_resnet50", "classification_efficientnet_b0", "classification_convnext_tiny", "detection_fasterrcnn_resnet50_fpn",
         "detection_fcos_resnet50_fpn", "segmentation_unet", "segmentation_deeplabv3plus"}


def _load(path: Path) -> tuple[str, dict]:
    (task, block), = yaml.safe_load(path.read_text()).items()
    return task, block


def test_every_architecture_has_an_example():
    assert {p.stem for p in EXAMPLES} == NAMES


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_validates_and_names_a_real_model(path):
    import segmentation_models_pytorch as smp
    import timm
    import torchvision

    task, block = _load(path)
    assert path.stem.startswith(task)
    cfg = parse_task_config(task, block)
    assert cfg.model.pretrained  # the examples fine-tune published weights
    if task == "classification":
        assert timm.is_model(cfg.model.name) and timm.models.get_pretrained_cfg(cfg.model.name) is not None
    elif task == "detection":
        assert cfg.model.name in torchvision.models.list_models(module=torchvision.models.detection)
    else:
        assert cfg.model.name.lower() in smp.MODEL_ARCHITECTURES_MAPPING and "imagenet" in smp.encoders.encoders[cfg.model.backbone]["pretrained_settings"]


@pytest.fixture
def no_hub(monkeypatch):
    """No network here: build the architecture without downloading (the offline path has its own test)."""
    original = stages.make_spec

    def make_spec(task, cfg, classes, *args):
        spec = original(task, cfg, classes, *args)
        spec["model"] = {**spec["model"], "pretrained": False}
        return spec

    monkeypatch.setattr(stages, "make_spec", make_spec)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_one_training_step(tmp_path, path, no_hub):
    task, block = _load(path)
    size = 64 if task == "detection" else 32
    tiny = merge(TINY[task], {"data": {"root": None, "num_workers": 0, "builtin": {"train_images": 2, "val_images": 2, "path": str(tmp_path)},
                                       "format": {"classification": "imagefolder", "detection": "coco", "segmentation": "masks"}[task],
                                       "classes": None},
                              "train": {"epochs": 1, "batch_size": 2, "image_size": size, "device": "cpu", "progress_bar": False,
                                        "checkpoint_dir": str(tmp_path / "ck")},
                              "evaluation": {"batch_size": 2}})
    cfg = parse_task_config(task, merge(block, tiny))
    index = stages.ingest(task, cfg)
    aug = stages.augmentation(task, cfg)
    bundle, history = stages.train(task, index, aug, cfg, callbacks=[])
    assert len(history) == 1 and torch.isfinite(torch.tensor(history[0]["train_loss"]))
    assert bundle["spec"]["model"]["name"] == cfg.model.name
