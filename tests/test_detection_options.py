"""Detection options: multi-scale, grouped batches, loss terms, Mosaic, class-agnostic NMS, backbones and
anchors, faster-coco-eval, YOLO data.yaml."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from support import PROJECT, task_params
from visionpipe import stages
from visionpipe.tasks import get_task_class, parse_task_config
from visionpipe.data import formats
from visionpipe.data.datasets import EpochSampler
from visionpipe.data.sampling import GroupedBatchSampler, aspect_ratio_groups
from visionpipe.errors import ConfigError
from visionpipe.tasks import get_task
from visionpipe.tasks.detection import DetectionTask, coco_evaluate


def _spec(tmp_path, **override) -> dict:
    cfg = parse_task_config("detection", task_params("detection", tmp_path, **override))
    return stages.make_spec("detection", cfg, ["a", "b", "c"])


# ---------------------------------------------------------------- multi-scale and grouped batches

def test_multi_scale_draws_sizes_in_training_and_evaluates_at_image_size(tmp_path):
    model = DetectionTask(_spec(tmp_path, train={"image_size": 96, "multi_scale": [64, 128]})).build_model()
    assert sorted(model.transform.min_size) == [64, 96, 128] and model.transform.min_size[-1] == 96
    image = torch.rand(3, 50, 60)
    torch.manual_seed(0)
    model.train()
    seen = {model.transform([image])[0].image_sizes[0][0] for _ in range(30)}
    assert seen == {64, 96, 128}  # shorter side drawn per batch (the longer side stays under max_size)
    model.eval()
    assert model.transform([image])[0].image_sizes == [(96, 115)]  # aspect ratio kept


@pytest.mark.parametrize("bad, message", [([64, 100], "multiples of 32"), ([128, 192], "must lie within")])
def test_multi_scale_is_checked(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_task_config("detection", task_params("detection", tmp_path, train={"image_size": 96, "multi_scale": bad}))
    with pytest.raises(ConfigError, match="multi_scale: unknown key"):  # classification has no multi-scale training
        parse_task_config("classification", task_params("classification", tmp_path, train={"multi_scale": [32, 64]}))


def test_grouped_batches_hold_one_aspect_ratio_group():
    ratios = [0.55, 1.7, 1.8, 0.6, 1.0, 1.65, 0.57, 1.75, 0.52, 1.9, 0.58, 1.62]  # bins 2 ** linspace(-1, 1, 7)
    groups = aspect_ratio_groups(ratios, 3)
    assert groups[0] == groups[3] and groups[1] == groups[2] and groups[0] != groups[1]
    sampler = EpochSampler(len(ratios), shuffle=True, seed=0)
    batches = list(GroupedBatchSampler(sampler, groups, batch_size=2, drop_last=False))
    assert sorted(i for b in batches for i, _ in b) == list(range(len(ratios)))  # every image once
    pure = [b for b in batches if len({groups[i] for i, _ in b}) == 1]
    assert len(pure) >= len(batches) - 2  # only leftovers mix groups
    assert len(batches) == len(GroupedBatchSampler(sampler, groups, batch_size=2, drop_last=False))


# ---------------------------------------------------------------- loss terms

@pytest.mark.slow  # trains
def test_detector_loss_terms_are_recorded_and_sum_to_the_loss(tmp_path):
    cfg = parse_task_config("detection", task_params("detection", tmp_path, train={"aspect_ratio_group_factor": 3}))
    index = stages.ingest("detection", cfg)
    _, history = stages.train("detection", index, stages.augmentation("detection", cfg), cfg, callbacks=[])
    row = history[0]
    terms = {k: v for k, v in row.items() if k.startswith("train_") and k != "train_loss"}
    assert set(terms) == {"train_classification", "train_bbox_regression"}  # rtdet, the default (FCOS adds train_bbox_ctrness)
    assert sum(terms.values()) == pytest.approx(row["train_loss"], rel=1e-5)


# ---------------------------------------------------------------- Mosaic

MOSAIC = {"__class_fullname__": "Mosaic", "target_size": [64, 64], "cell_shape": [64, 64], "p": 1.0}


def _one_class_per_image(root: Path) -> dict:
    """Four images, each filled by one box of its own class: the labels in a sample name its sources."""
    records = []
    for k in range(4):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48 + 8 * k, 64, 3), 60 * k, np.uint8)).save(root / "images" / f"{k}.png")
        records.append({"image": f"images/{k}.png", "image_id": k + 1, "width": 64, "height": 48 + 8 * k,
                        "boxes": [[2.0, 2.0, 62.0, 46.0 + 8 * k]], "labels": [k], "iscrowd": [0]})
    return {"root": str(root), "classes": list("abcd"), "train": records, "val": records}


def test_mosaic_samples_hold_boxes_of_several_images_until_close_mosaic_epochs(tmp_path):
    cfg = parse_task_config("detection", task_params("detection", tmp_path, augment=[MOSAIC],
                                                     train={"epochs": 5, "close_mosaic_epochs": 2}))
    index = _one_class_per_image(tmp_path / "data")
    task_obj = get_task(stages.make_spec("detection", cfg, index["classes"]))
    _, train_ds, _ = task_obj.datasets(index, stages.augmentation("detection", cfg), cfg)
    assert train_ds.mosaic.until == 3
    for i in range(4):
        for epoch in (0, 2):
            image, target, _ = train_ds[(i, epoch)]
            assert image.shape[1:] == (64, 64) and len(set(target["labels"].tolist())) >= 2, (i, epoch)
        image, target, _ = train_ds[(i, 3)]  # the last two epochs: mosaic off, the image as it is
        assert image.shape[1:] == (48 + 8 * i, 64) and target["labels"].tolist() == [i + 1]


def test_mosaic_is_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(ConfigError, match="close_mosaic_epochs is 2 but augment has no Mosaic"):
        parse_task_config("detection", task_params("detection", tmp_path, train={"close_mosaic_epochs": 2}))
    from visionpipe.tasks.classification import ClassificationTask

    with pytest.raises(ConfigError, match="Mosaic needs donor images"):
        ClassificationTask.compose([MOSAIC], 32, (0, 0, 0), (1, 1, 1), train=True)


# ---------------------------------------------------------------- post-processing

@pytest.mark.parametrize("agnostic, kept", [(False, 2), (True, 1)])
def test_class_agnostic_nms_keeps_one_box_per_object(tmp_path, agnostic, kept):
    spec = _spec(tmp_path, evaluation={"class_agnostic_nms": agnostic})
    outputs = [{"boxes": torch.tensor([[10.0, 10, 50, 50], [11, 10, 50, 51]]), "scores": torch.tensor([0.9, 0.6]), "labels": torch.tensor([1, 2])}]
    result = DetectionTask(spec).postprocess(outputs, [(64, 64)])[0]
    assert len(result["boxes"]) == kept and result["labels"][0] == 0 and result["scores"][0] == pytest.approx(0.9)


# ---------------------------------------------------------------- backbones, heads, anchors

BACKBONES = ["resnet10t", "convnext_atto", "efficientnet_b0", "regnetx_002", "mobilenetv3_small_050"]


@pytest.mark.slow  # trains
@pytest.mark.parametrize("arch", ["rtdet", "fcos", "retinanet", "fasterrcnn"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_timm_families_with_every_head_take_a_training_step(tmp_path, backbone, arch):
    spec = _spec(tmp_path, model={"name": arch, "backbone": backbone, "kwargs": {"fpn_channels": 32}})
    task_obj = DetectionTask(spec)
    model = task_obj.build_model()
    assert model.backbone.strides[:3] == [8, 16, 32]  # the backbone's last three levels by default
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 6, 40, 50]]), "labels": torch.tensor([1])}, {"boxes": torch.tensor([[10.0, 4, 30, 20]]), "labels": torch.tensor([2])}]
    model.train()
    terms = task_obj.loss(model, (images, targets, None))
    loss = sum(terms.values())
    loss.backward()
    assert torch.isfinite(loss) and len(terms) >= 2
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.body.parameters())


def test_out_indices_and_anchor_settings_reach_the_model(tmp_path):
    spec = _spec(tmp_path, model={"name": "retinanet", "backbone": "resnet10t",
                                  "kwargs": {"fpn_channels": 16, "out_indices": [1, 2, 3, 4], "anchor_sizes": [16, 24],
                                             "anchor_aspect_ratios": [0.5, 1.0]}})
    model = DetectionTask(spec).build_model()
    assert model.backbone.strides == [4, 8, 16, 32, 64, 128]  # four backbone levels + P6, P7
    assert model.anchor_generator.sizes == ((16.0, 24.0),) * 6
    assert [tuple(r) for r in model.anchor_generator.aspect_ratios] == [(0.5, 1.0)] * 6
    assert model.head.classification_head.num_anchors == 4
    builder = _spec(tmp_path, model={"name": "fasterrcnn_resnet50_fpn", "backbone": None, "kwargs": {"anchor_aspect_ratios": [1.0]}})
    assert DetectionTask(builder).build_model().rpn.anchor_generator.aspect_ratios == ((1.0,),) * 5
    for kwargs, message in [({"anchor_sizes": [[16], [32]]}, "2 lists for 5 feature levels"), ({"anchor_aspect_ratios": [0]}, "positive")]:
        bad = _spec(tmp_path, model={"name": "retinanet", "backbone": "resnet10t", "kwargs": kwargs})
        with pytest.raises(ConfigError, match=message):
            DetectionTask(bad).build_model()
    with pytest.raises(ConfigError, match="anchor-free"):
        DetectionTask(_spec(tmp_path, model={"kwargs": {"anchor_sizes": [16]}})).build_model()


# ---------------------------------------------------------------- evaluation backends

def test_faster_coco_eval_gives_pycocotools_numbers(tmp_path):
    pytest.importorskip("faster_coco_eval")
    sys.path.insert(0, str(PROJECT / "benchmarks"))
    from evaluation import detection_files

    gt_path, pred_path, classes = detection_files(60, 5, tmp_path)
    gt, preds = json.loads(gt_path.read_text()), json.loads(pred_path.read_text())
    reference, _ = coco_evaluate(gt, preds, classes, backend="pycocotools")
    fast, _ = coco_evaluate(gt, preds, classes, backend="faster_coco_eval")
    assert set(fast) == set(reference) and all(fast[k] == reference[k] for k in reference)
    assert 0.2 < reference["map"] < 0.9


# ---------------------------------------------------------------- YOLO data.yaml

def test_yolo_data_yaml_is_read_fully(tmp_path):
    root = tmp_path / "yolo"
    for split, folder in (("train", "imgs/tr"), ("val", "imgs/va"), ("test", "imgs/te")):
        for k in range(2):
            image = root / "data" / folder.replace("imgs", "images") / f"{split}{k}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 20)).save(image)
            label = root / "data" / folder.replace("imgs", "labels") / f"{split}{k}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{k} 0.5 0.5 0.5 0.5\n")
    (root / "data" / "val.txt").write_text("images/va/val0.png\nimages/va/val1.png\n")
    (root / "data.yaml").write_text("path: data\ntrain: images/tr\nval: val.txt\ntest: [images/te]\nnames: {0: cat, 1: dog}\n")
    cfg = parse_task_config("detection", task_params("detection", tmp_path, data={"root": str(root), "format": "yolo"}))
    index = formats.read_dataset(get_task_class("detection"), root, cfg.data)
    assert index["classes"] == ["cat", "dog"] and not index["problems"]
    assert [r["image"] for r in index["val"]] == ["data/images/va/val0.png", "data/images/va/val1.png"]
    assert len(index["train"]) == 2 and len(index["test"]) == 2
    assert index["val"][1]["labels"] == [1] and index["val"][1]["boxes"] == [[10.0, 5.0, 30.0, 15.0]]
    (root / "data.yaml").write_text("path: data\ntrain: images/tr\nnames: [cat, dog]\n")
    with pytest.raises(Exception, match="no 'val' entry"):
        formats.read_dataset(get_task_class("detection"), root, cfg.data)
