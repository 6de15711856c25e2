"""Object detection with torchvision detectors on timm backbones; COCO-protocol mAP from pycocotools."""

from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from torch import nn

from visionpipe.engine import distributed
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks.base import close_matches, load_pretrained, pop_reset_head, timm_normalization

logger = logging.getLogger(__name__)

TIMM_ARCHS = ("fcos", "retinanet", "fasterrcnn")


class TimmFPN(nn.Module):
    """Any timm CNN as a multi-scale body (``features_only``) under torchvision's FeaturePyramidNetwork."""

    def __init__(self, name: str, out_channels: int = 128, out_indices=(2, 3, 4), extra: str = "p6p7"):
        super().__init__()
        import timm
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

        if not timm.is_model(name):
            raise ConfigError(f"detection.model.backbone: unknown timm model '{name}'.{close_matches(name, timm.list_models())}")
        try:
            self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices))
        except Exception as err:  # timm raises RuntimeError/AssertionError for models without feature maps
            raise ConfigError(f"detection.model.backbone: '{name}' cannot serve multi-scale features ({err}); pick a CNN such as resnet18") from None
        channels = self.body.feature_info.channels()
        strides = list(self.body.feature_info.reduction())
        blocks = LastLevelP6P7(out_channels, out_channels) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=blocks)
        self.out_channels = out_channels
        self.strides = strides + ([strides[-1] * 2, strides[-1] * 4] if extra == "p6p7" else [strides[-1] * 2])
        self.level_names = [str(i) for i in range(len(channels))]

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(OrderedDict(zip(self.level_names, self.body(x))))


def set_postprocess(model: nn.Module, score: float, nms: float, max_det: int) -> None:
    """Score threshold, NMS IoU and detections cap: torchvision's own post-processing settings."""
    target = model.roi_heads if hasattr(model, "roi_heads") else model
    target.score_thresh, target.nms_thresh, target.detections_per_img = score, nms, max_det


def build_detector(spec: dict[str, Any]) -> nn.Module:
    import torchvision
    from torchvision.models import detection as tvd
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    model_cfg, num_classes, size = spec["model"], len(spec["classes"]) + 1, spec["image_size"]  # + background
    name, backbone = model_cfg["name"], model_cfg.get("backbone")
    kwargs, reset_head = pop_reset_head(model_cfg.get("kwargs") or {})
    mean, std = spec["mean"], spec["std"]
    anchor_scale = float(kwargs.pop("anchor_scale", 4.0))
    out_channels = int(kwargs.pop("fpn_channels", 128))
    if backbone is None:
        builders = torchvision.models.list_models(module=tvd)
        if name not in builders:
            raise ConfigError(f"detection.model.name: '{name}' is not a torchvision detection model; use one of {builders} "
                              f"or one of {list(TIMM_ARCHS)} with model.backbone set to a timm model.{close_matches(name, builders)}")
        extra = {"min_size": size, "max_size": size} if not name.startswith("ssd") else {}
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes,
                                             image_mean=list(mean), image_std=list(std), **extra, **kwargs)
    else:
        if name not in TIMM_ARCHS:
            raise ConfigError(f"detection.model.name: with a timm backbone the detector is one of {list(TIMM_ARCHS)}, got '{name}'."
                              f"{close_matches(name, list(TIMM_ARCHS))}")
        body = TimmFPN(backbone, out_channels, extra="pool" if name == "fasterrcnn" else "p6p7")
        levels = len(body.strides)
        common = dict(min_size=size, max_size=size, image_mean=list(mean), image_std=list(std), **kwargs)
        if name == "fcos":
            anchors = AnchorGenerator(tuple((s,) for s in body.strides), ((1.0,),) * levels)
            model = tvd.FCOS(body, num_classes=num_classes, anchor_generator=anchors, **common)
        elif name == "retinanet":
            sizes = tuple(tuple(s * anchor_scale * 2 ** (i / 3) for i in range(3)) for s in body.strides)
            model = tvd.RetinaNet(body, num_classes=num_classes, anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels), **common)
        else:
            anchors = AnchorGenerator(tuple((s * anchor_scale,) for s in body.strides), ((0.5, 1.0, 2.0),) * levels)
            pool = MultiScaleRoIAlign(featmap_names=body.level_names, output_size=7, sampling_ratio=2)
            model = tvd.FasterRCNN(body, num_classes=num_classes, rpn_anchor_generator=anchors, box_roi_pool=pool, **common)
        if model_cfg.get("pretrained_path"):
            load_pretrained(body.body, model_cfg["pretrained_path"], True, "detection")
            model_cfg = {**model_cfg, "pretrained_path": None}
    if model_cfg.get("pretrained_path"):
        load_pretrained(model, model_cfg["pretrained_path"], reset_head, "detection")
    ev = spec["evaluation"]
    set_postprocess(model, ev["score_threshold"], ev["nms_threshold"], ev["max_detections"])
    return model


def coco_ground_truth(records: list[dict], classes: list[str]) -> dict:
    """The COCO ground truth of ``records``: category ids are class index + 1."""
    images, annotations = [], []
    for rec in records:
        images.append({"id": rec["image_id"], "file_name": rec["image"], "width": rec["width"], "height": rec["height"]})
        for box, label, crowd in zip(rec["boxes"], rec["labels"], rec["iscrowd"]):
            x0, y0, x1, y1 = box
            annotations.append({"id": len(annotations) + 1, "image_id": rec["image_id"], "category_id": label + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": crowd})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(classes)]}


def coco_evaluate(ground_truth: dict, predictions: list[dict], classes: list[str], max_detections: int = 100) -> tuple[dict, Any]:
    """COCO bbox evaluation with pycocotools; returns (metrics, the COCOeval object)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        if not predictions:
            metrics = {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
            metrics.update({f"ap/{c}": 0.0 for c in classes})
            return metrics, None
        dt = gt.loadRes([dict(p) for p in predictions])  # loadRes adds keys to the dicts it is given
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_detections]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]
    metrics = {n: float(v) for n, v in zip(names, ev.stats[:6]) if v >= 0}  # -1: no object of that size
    precision = ev.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        metrics[f"ap/{classes[cat_id - 1]}"] = float(p.mean()) if p.size else float("nan")
    return metrics, ev


class DetectionEvaluator:
    def __init__(self, task: "DetectionTask", keep_predictions: bool):
        self.task = task
        self.keep = keep_predictions
        self.results: list[dict] = []
        self.last_eval = None

    def update(self, model, batch) -> None:
        images, _targets, metas = batch
        outputs = model(images)
        size = self.task.spec["image_size"]
        for out, meta in zip(outputs, metas):
            sx, sy = meta["width"] / size, meta["height"] / size
            boxes = out["boxes"].float().cpu() * torch.tensor([sx, sy, sx, sy])
            for box, label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].float().cpu().tolist()):
                x0, y0, x1, y1 = box
                self.results.append({"image_id": meta["image_id"], "category_id": int(label),
                                     "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)], "score": round(score, 5)})

    def compute(self) -> dict[str, float]:
        results = [r for part in distributed.all_gather_objects(self.results) for r in part]
        records = self.task.val_records
        metrics, self.last_eval = coco_evaluate(coco_ground_truth(records, self.task.classes), results,
                                                self.task.classes, self.task.spec["evaluation"]["max_detections"])
        self.results = results
        return metrics


class DetectionTask:
    name = "detection"
    primary_metric = "map"
    greater_is_better = True

    def __init__(self, spec: dict[str, Any], val_records: list[dict] | None = None):
        self.spec = spec
        self.classes = spec["classes"]
        self.val_records = val_records or []

    @staticmethod
    def normalization(model_cfg: dict[str, Any]):
        return timm_normalization(model_cfg.get("backbone") or "resnet50")

    def build_model(self) -> nn.Module:
        return build_detector(self.spec)

    @staticmethod
    def make_sample(pixels, record, root, transform, index, for_eval: bool = False):
        h, w = pixels.shape[:2]
        boxes, labels = [], []
        for box, label, crowd in zip(record["boxes"], record["labels"], record["iscrowd"]):
            x0, y0, x1, y1 = np.clip(box, 0, [w, h, w, h])  # validation allowed a pixel of overhang
            if crowd or x1 - x0 < 1 or y1 - y0 < 1:
                continue
            boxes.append([float(x0), float(y0), float(x1), float(y1)])
            labels.append(label)
        out = transform(image=pixels, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=labels)
        target = {"boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
                  "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64) + 1)}
        meta = {"index": index, "image_id": record["image_id"], "width": w, "height": h}
        return out["image"], target, meta

    @staticmethod
    def collate(batch):
        images, targets, metas = zip(*batch)
        return torch.stack(images), list(targets), list(metas)

    @staticmethod
    def to_device(batch, runtime: Runtime):
        images, targets, metas = batch
        images = images.to(runtime.device, non_blocking=True)
        if runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: v.to(runtime.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return list(images), targets, metas

    @staticmethod
    def batch_size(batch) -> int:
        return len(batch[0])

    @staticmethod
    def loss(model, batch) -> torch.Tensor:
        images, targets, _ = batch
        return sum(model(images, targets).values())

    def evaluator(self, runtime: Runtime, keep_predictions: bool = False) -> DetectionEvaluator:
        return DetectionEvaluator(self, keep_predictions)
