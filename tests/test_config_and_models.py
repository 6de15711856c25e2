"""Configuration mistakes give clear errors; augmentations keep annotations valid; weights load safely."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support import task_params
from visionpipe import stages
from visionpipe.tasks import parse_task_config
from visionpipe.data import transforms
from visionpipe.errors import ConfigError
from visionpipe.tasks.classification import build_classifier
from visionpipe.tasks.detection import DetectionTask, build_detector
from visionpipe.tasks.segmentation import SegmentationTask, build_segmenter


def test_unknown_parameter_key_is_named():
    params = task_params("classification", train={"epohcs": 3})
    with pytest.raises(ConfigError, match=r"classification\.train\.epohcs: unknown key"):
        parse_task_config("classification", params)


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"classification\.train\.optimizer"):
        parse_task_config("classification", task_params("classification", train={"optimizer": "lbfgs"}))


def test_unknown_timm_model_lists_close_matches():
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet19'.*resnet18"):
        build_classifier({"name": "resnet19"}, 3)


def test_unknown_detector_and_encoder():
    spec = {"model": {"name": "fcoss", "backbone": "resnet10t"}, "classes": ["a"], "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
            "evaluation": {"score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 100}}
    with pytest.raises(ConfigError, match="fcos"):
        build_detector(spec)
    with pytest.raises(ConfigError, match="not a torchvision detection model"):
        build_detector({**spec, "model": {"name": "yolo9000", "backbone": None}})
    with pytest.raises(ConfigError, match="unknown encoder 'resnet1'"):
        build_segmenter({"model": {"name": "Unet", "backbone": "resnet1"}, "classes": ["a", "b"]})
    with pytest.raises(ConfigError, match="unet"):
        build_segmenter({"model": {"name": "Unett", "backbone": "resnet18"}, "classes": ["a", "b"]})


def test_unknown_augmentation_suggests_names():
    params = task_params("classification", augment=[{"__class_fullname__": "HorizontalFlipp", "p": 0.5}])
    with pytest.raises(ConfigError, match=r"classification\.augment\[0\]: unknown albumentations transform 'HorizontalFlipp'.*HorizontalFlip"):
        stages.augmentation("classification", parse_task_config("classification", params))
    params = task_params("classification", augment=[{"__class_fullname__": "HorizontalFlip", "prob": 0.5}])
    with pytest.raises(ConfigError, match="prob"):
        stages.augmentation("classification", parse_task_config("classification", params))


def test_augmentation_round_trips_through_albumentations_serialisation():
    cfg = parse_task_config("detection", task_params("detection"))
    aug = stages.augmentation("detection", cfg)
    rebuilt = transforms.from_dict(aug["train"])
    assert transforms.to_dict(rebuilt) == aug["train"]
    assert aug["train"]["transform"]["bbox_params"]["format"] == "pascal_voc"


def test_box_aware_augmentation_keeps_boxes_valid():
    augment = [{"__class_fullname__": "RandomSizedBBoxSafeCrop", "height": 48, "width": 48, "p": 0.5},
               {"__class_fullname__": "Affine", "translate_percent": [-0.4, 0.4], "rotate": [-30, 30], "p": 1.0},
               {"__class_fullname__": "HorizontalFlip", "p": 0.5}]
    tf = DetectionTask.compose(augment, 64, (0, 0, 0), (1, 1, 1), train=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
    for seed in range(60):
        tf.set_random_seed(seed)
        out = tf(image=image, bboxes=np.array([[5, 5, 40, 30], [60, 40, 99, 79], [0, 0, 100, 80]], dtype=np.float32), labels=[0, 1, 2])
        boxes = np.asarray(out["bboxes"]).reshape(-1, 4)
        assert len(boxes) == len(out["labels"])
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        h, w = out["image"].shape[1:]  # no resize: the detector's own transform resizes keeping the aspect ratio
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all()


def test_mask_follows_geometric_augmentation():
    tf = SegmentationTask.compose([{"__class_fullname__": "HorizontalFlip", "p": 1.0}], 32, (0, 0, 0), (1, 1, 1), train=True)
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    image[:, :8] = 255
    mask = np.zeros((32, 32), dtype=np.int64)
    mask[:, :8] = 1
    out = tf(image=image, mask=mask)
    assert out["mask"][:, -8:].eq(1).all() and out["image"][0, :, -8:].gt(0).all()


def test_pretrained_weights_from_local_file(tmp_path):
    from safetensors.torch import save_file

    donor = build_classifier({"name": "resnet10t"}, 5)
    save_file(donor.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(donor.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        model = build_classifier({"name": "resnet10t", "pretrained_path": str(tmp_path / name)}, 5)
        assert torch.equal(model.state_dict()["fc.weight"], donor.state_dict()["fc.weight"])


def test_pretrained_head_mismatch_is_an_error_unless_reset(tmp_path):
    from safetensors.torch import save_file

    save_file(build_classifier({"name": "resnet10t"}, 1000).state_dict(), str(tmp_path / "imagenet.safetensors"))
    with pytest.raises(ConfigError, match=r"fc\.weight: file \(1000, 512\) vs model \(3, 512\).*reset_head"):
        build_classifier({"name": "resnet10t", "pretrained_path": str(tmp_path / "imagenet.safetensors")}, 3)
    model = build_classifier({"name": "resnet10t", "pretrained_path": str(tmp_path / "imagenet.safetensors"), "kwargs": {"reset_head": True}}, 3)
    assert model.fc.weight.shape == (3, 512)


def test_pickled_objects_are_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"fc.weight": Evil()}))
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        build_classifier({"name": "resnet10t", "pretrained_path": str(tmp_path / "evil.pt")}, 3)
    with pytest.raises(ConfigError, match="not found"):
        build_classifier({"name": "resnet10t", "pretrained_path": str(tmp_path / "missing.pt")}, 3)


@pytest.mark.parametrize("name,backbone", [("fcos", "resnet10t"), ("retinanet", "resnet10t"), ("fasterrcnn", "resnet10t"),
                                           ("ssdlite320_mobilenet_v3_large", None)])
def test_each_detector_trains_a_step_and_predicts(name, backbone):
    spec = {"model": {"name": name, "backbone": backbone, "kwargs": {"fpn_channels": 32} if backbone else {}}, "classes": ["a", "b"],
            "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3,
            "evaluation": {"score_threshold": 0.0, "nms_threshold": 0.5, "max_detections": 7}}
    model = build_detector(spec)
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}]
    losses = model(images, targets)
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert all(len(o["boxes"]) <= 7 for o in out)


def test_pretrained_backbone_and_encoder_from_local_files(tmp_path):
    from safetensors.torch import save_file

    classifier = build_classifier({"name": "resnet10t"}, 1000)  # an "ImageNet" checkpoint of the backbone
    save_file(classifier.state_dict(), str(tmp_path / "backbone.safetensors"))
    spec = {"model": {"name": "fcos", "backbone": "resnet10t", "pretrained_path": str(tmp_path / "backbone.safetensors"),
                      "kwargs": {"fpn_channels": 32}},
            "classes": ["a"], "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
            "evaluation": {"score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 10}}
    detector = build_detector(spec)
    assert torch.equal(detector.backbone.body.state_dict()["conv1.0.weight"], classifier.state_dict()["conv1.0.weight"])

    donor = build_segmenter({"model": {"name": "Unet", "backbone": "resnet18"}, "classes": ["bg", "fg"]})
    save_file(donor.encoder.state_dict(), str(tmp_path / "encoder.safetensors"))
    seg = build_segmenter({"model": {"name": "Unet", "backbone": "resnet18", "pretrained_path": str(tmp_path / "encoder.safetensors")},
                           "classes": ["bg", "fg", "x"]})
    assert torch.equal(seg.encoder.state_dict()["conv1.weight"], donor.encoder.state_dict()["conv1.weight"])
