"""Object detection with torchvision detectors on timm backbones; COCO-protocol mAP from pycocotools."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pydantic import Field

from visionpipe.config import MultiScaleTrain, CocoFilesMixin, DataConfig, EvaluationConfig, TaskConfig, TrainConfig, _Strict
from visionpipe.data import builtin, formats
from visionpipe.data.transforms import box_params, compose, tile_starts
from visionpipe.data.validation import check_annotated_size, check_boxes
from visionpipe.engine import distributed
from visionpipe.engine.coco import coco_evaluate, coco_ground_truth
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.models.rtdet import RTDet
from visionpipe.tasks.base import (Task, call_with_model_kwargs, close_matches, hub_weights, load_pretrained, pop_reset_head,
                                   signature_keys, timm_normalization, wants_hub_weights)

logger = logging.getLogger(__name__)

TIMM_ARCHS = ("rtdet", "fcos", "retinanet", "fasterrcnn")


class DetectionData(DataConfig, CocoFilesMixin):
    format: Literal["coco", "voc", "yolo", "shards"] = "coco"


class TileConfig(_Strict):
    """Tiled inference for images larger than the training scale (SAHI's idea): overlapping tiles of ``size``
    original pixels, plus the whole image, boxes merged with per-class NMS."""

    size: int = Field(ge=32)
    overlap: float = Field(0.2, ge=0.0, lt=0.9)  # fraction of a tile shared with its neighbour


class DetectionEvaluation(EvaluationConfig):
    score_threshold: float = Field(0.05, ge=0, le=1)  # detections below are dropped before NMS
    nms_threshold: float = Field(0.5, gt=0, le=1)  # IoU for non-maximum suppression
    max_detections: int = Field(100, ge=1)  # per image
    class_agnostic_nms: bool = False  # also suppress overlapping boxes of different classes (one box per object)
    tile: TileConfig | None = None  # null: whole images; {size, overlap}: tiled inference (evaluation, Predictor, pyfunc)


class DetectionTrain(TrainConfig, MultiScaleTrain):
    """``multi_scale``: shorter sides drawn per batch by torchvision's transform; image_size is evaluation's."""


class DetectionConfig(TaskConfig):
    data: DetectionData
    train: DetectionTrain = DetectionTrain()
    evaluation: DetectionEvaluation = DetectionEvaluation()


class TimmFPN(nn.Module):
    """Any timm CNN as a multi-scale body (``features_only``) under torchvision's FeaturePyramidNetwork."""

    def __init__(self, name: str, out_channels: int = 128, out_indices=(-3, -2, -1), extra: str = "p6p7", pretrained: bool = False,
                 block: str = "detection", neck: bool = True, backbone_kwargs: dict | None = None):
        """``block``: the parameter block errors name (``<block>.model.backbone``); ``neck=False``: the checked timm
        extractor only (``.body``), for detectors that bring their own neck (rtdet's PAFPN); ``backbone_kwargs``: passed
        to ``timm.create_model`` (e.g. ResNet ``channels``/``stem_width`` for a narrower backbone)."""
        super().__init__()
        import timm
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

        if not timm.is_model(name):
            raise ConfigError(f"{block}.model.backbone: unknown timm model '{name}'.{close_matches(name, timm.list_models())}")
        extra_kwargs = dict(backbone_kwargs or {})
        if not isinstance(backbone_kwargs or {}, dict):
            raise ConfigError(f"{block}.model.kwargs.backbone_kwargs: a mapping of timm keywords, got {backbone_kwargs!r}")
        for key in ("channels", "layers"):  # YAML lists; timm wants tuples
            if isinstance(extra_kwargs.get(key), list):
                extra_kwargs[key] = tuple(extra_kwargs[key])
        try:
            # negative indices count from the backbone's last level (timm's feature_info): (-3, -2, -1) are the
            # last three levels of any family (ResNet (2, 3, 4), ConvNeXt (1, 2, 3), EfficientNet, RegNet...)
            self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices), **extra_kwargs)
        except TypeError as err:  # a keyword timm's model does not take
            raise ConfigError(f"{block}.model.kwargs.backbone_kwargs: {err}; use keywords of the timm model '{name}' "
                              "(e.g. channels, stem_width for ResNets)") from None
        except Exception as err:  # timm raises RuntimeError/AssertionError/IndexError for models without those feature maps
            raise ConfigError(f"{block}.model.backbone: '{name}' cannot serve multi-scale features at model.kwargs.out_indices "
                              f"{list(out_indices)} ({err}); pick a CNN such as resnet18 or other out_indices") from None
        if pretrained:  # timm's published weights for the feature extractor, once the name is known to work
            self.body = hub_weights(lambda: timm.create_model(name, pretrained=True, features_only=True, out_indices=tuple(out_indices),
                                                              **extra_kwargs),
                                    f"{block}.model.pretrained", f"timm model '{name}'")
        if not neck:
            return
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


def detector_sizes(spec: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``min_size``/``max_size`` for torchvision's GeneralizedRCNNTransform, which resizes each image keeping its
    aspect ratio (shorter side to ``min_size``, longer side at most ``max_size``) and maps boxes back.

    ``train.multi_scale: [lo, hi]``: training draws the shorter side per batch from ``lo..hi`` in steps of 32
    (the transform's own random choice); evaluation uses its last entry, ``image_size``. The default
    ``max_size`` keeps torchvision's 1333/800 ratio to the largest shorter side.
    """
    size = spec["image_size"]
    scales = spec.get("multi_scale")
    sizes = (size,) if not scales else tuple(s for s in range(scales[0], scales[1] + 1, 32) if s != size) + (size,)
    return {"min_size": kwargs.pop("min_size", sizes), "max_size": kwargs.pop("max_size", math.ceil(max(sizes) * 1333 / 800))}


def anchor_generator(kwargs: dict[str, Any], strides: list[int], default_sizes, default_ratios):
    """torchvision's AnchorGenerator from ``model.kwargs.anchor_sizes`` (one list per level, or one list for
    every level) and ``anchor_aspect_ratios`` (height/width ratios, the same at every level)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    levels = len(strides)
    sizes = kwargs.pop("anchor_sizes", None)
    ratios = kwargs.pop("anchor_aspect_ratios", None)
    if sizes is None:
        sizes = default_sizes
    else:
        if not isinstance(sizes, (list, tuple)) or not sizes:
            raise ConfigError(f"detection.model.kwargs.anchor_sizes: a list of sizes in pixels, or one list per level ({levels} levels), got {sizes!r}")
        if not isinstance(sizes[0], (list, tuple)):
            sizes = [sizes] * levels
        if len(sizes) != levels:
            raise ConfigError(f"detection.model.kwargs.anchor_sizes: {len(sizes)} lists for {levels} feature levels; give one list per "
                              f"level (strides {strides}) or a single list used at every level")
        sizes = tuple(tuple(float(v) for v in level) for level in sizes)
    if ratios is None:
        ratios = default_ratios
    else:
        if not isinstance(ratios, (list, tuple)) or not ratios or not all(isinstance(r, (int, float)) and r > 0 for r in ratios):
            raise ConfigError(f"detection.model.kwargs.anchor_aspect_ratios: a list of positive height/width ratios such as [0.5, 1.0, 2.0], got {ratios!r}")
        ratios = tuple(float(r) for r in ratios)
    return AnchorGenerator(tuple(sizes), (tuple(ratios),) * levels)


def _builder_anchors(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The anchor generator keyword for a torchvision builder, its own defaults replaced by the user's settings."""
    if name.startswith("retinanet"):  # five levels, strides 8..128, three scales per octave
        sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in (32, 64, 128, 256, 512))
        return {"anchor_generator": anchor_generator(kwargs, [8, 16, 32, 64, 128], sizes, (0.5, 1.0, 2.0))}
    if "mobilenet" in name:  # three levels, every size at each
        return {"rpn_anchor_generator": anchor_generator(kwargs, [16, 32, 64], ((32, 64, 128, 256, 512),) * 3, (0.5, 1.0, 2.0))}
    return {"rpn_anchor_generator": anchor_generator(kwargs, [4, 8, 16, 32, 64], ((32,), (64,), (128,), (256,), (512,)), (0.5, 1.0, 2.0))}


def build_detector(spec: dict[str, Any]) -> nn.Module:
    import torchvision
    from torchvision.models import detection as tvd
    from torchvision.ops import MultiScaleRoIAlign

    model_cfg, num_classes = spec["model"], len(spec["classes"]) + 1  # + background
    name, backbone = model_cfg["name"], model_cfg.get("backbone")
    kwargs, reset_head = pop_reset_head(model_cfg.get("kwargs") or {})
    mean, std = spec["mean"], spec["std"]
    anchor_scale = float(kwargs.pop("anchor_scale", 4.0))
    out_channels = int(kwargs.pop("fpn_channels", 128))
    out_indices = kwargs.pop("out_indices", (-3, -2, -1))
    backbone_kwargs = kwargs.pop("backbone_kwargs", None)
    sizes = detector_sizes(spec, kwargs)
    where = "detection.model.kwargs"
    if backbone is None:
        builders = torchvision.models.list_models(module=tvd)
        if name not in builders:
            raise ConfigError(f"detection.model.name: '{name}' is not a torchvision detection model; use one of {builders} "
                              f"or one of {list(TIMM_ARCHS)} with model.backbone set to a timm model.{close_matches(name, builders)}")
        if backbone_kwargs:
            raise ConfigError(f"{where}.backbone_kwargs: only for a timm backbone (model.backbone set); '{name}' builds its own")
        extra = sizes if not name.startswith("ssd") else {}
        if "anchor_sizes" in kwargs or "anchor_aspect_ratios" in kwargs:
            if not name.startswith(("fasterrcnn", "retinanet")):
                raise ConfigError(f"{where}.anchor_sizes/anchor_aspect_ratios: only for fasterrcnn/retinanet models, not '{name}'")
            extra.update(_builder_anchors(name, kwargs))
        # pretrained: the builder's ImageNet backbone weights (its COCO heads are sized for COCO's 91 classes)
        hub = wants_hub_weights(model_cfg)

        def create():
            return call_with_model_kwargs(torchvision.models.get_model, kwargs, where, name=name, weights=None,
                                          weights_backbone="DEFAULT" if hub else None, num_classes=num_classes, image_mean=list(mean),
                                          image_std=list(std), **extra, accepted=lambda: _builder_keys(name), check_first=True)

        model = hub_weights(create, "detection.model.pretrained", f"torchvision '{name}' backbone") if hub else create()
    else:
        if name not in TIMM_ARCHS:
            raise ConfigError(f"detection.model.name: with a timm backbone the detector is one of {list(TIMM_ARCHS)}, got '{name}'."
                              f"{close_matches(name, list(TIMM_ARCHS))}")
        body = TimmFPN(backbone, out_channels, out_indices=out_indices, extra="pool" if name == "fasterrcnn" else "p6p7",
                       pretrained=wants_hub_weights(model_cfg), neck=name != "rtdet", backbone_kwargs=backbone_kwargs)
        common = dict(**sizes, image_mean=list(mean), image_std=list(std))
        if name == "rtdet":
            if "anchor_sizes" in kwargs or "anchor_aspect_ratios" in kwargs:
                raise ConfigError(f"{where}.anchor_sizes/anchor_aspect_ratios: rtdet is anchor-free (one point per location, "
                                  "task-aligned assignment); use them with retinanet or fasterrcnn")
            common.update(kwargs)
            model = call_with_model_kwargs(RTDet, common, where, body=body.body, num_classes=num_classes, width=out_channels,
                                           accepted=lambda: _class_keys(RTDet) + _class_keys(tvd.FCOS), check_first=True)
            body = model.backbone  # the PAFPN; its .body is the timm extractor that pretrained_path loads into
        elif name == "fcos":
            if out_channels % 32:  # FCOS's head normalises with GroupNorm(32 groups)
                raise ConfigError(f"{where}.fpn_channels: FCOS needs a multiple of 32 (its head uses 32 GroupNorm groups), got {out_channels}")
            if "anchor_sizes" in kwargs or "anchor_aspect_ratios" in kwargs:
                raise ConfigError(f"{where}.anchor_sizes/anchor_aspect_ratios: FCOS is anchor-free (one point per location); "
                                  "use them with retinanet or fasterrcnn")
            common.update(kwargs)
            anchors = anchor_generator({}, body.strides, tuple((s,) for s in body.strides), (1.0,))
            model = call_with_model_kwargs(tvd.FCOS, common, where, backbone=body, num_classes=num_classes, anchor_generator=anchors,
                                           accepted=lambda: _class_keys(tvd.FCOS), check_first=True)
        elif name == "retinanet":
            anchors = anchor_generator(kwargs, body.strides, tuple(tuple(s * anchor_scale * 2 ** (i / 3) for i in range(3)) for s in body.strides),
                                       (0.5, 1.0, 2.0))
            common.update(kwargs)
            model = call_with_model_kwargs(tvd.RetinaNet, common, where, backbone=body, num_classes=num_classes, anchor_generator=anchors,
                                           accepted=lambda: _class_keys(tvd.RetinaNet), check_first=True)
        else:
            anchors = anchor_generator(kwargs, body.strides, tuple((s * anchor_scale,) for s in body.strides), (0.5, 1.0, 2.0))
            common.update(kwargs)
            pool = MultiScaleRoIAlign(featmap_names=body.level_names, output_size=7, sampling_ratio=2)
            model = call_with_model_kwargs(tvd.FasterRCNN, common, where, backbone=body, num_classes=num_classes, rpn_anchor_generator=anchors,
                                           box_roi_pool=pool, accepted=lambda: _class_keys(tvd.FasterRCNN), check_first=True)
        if model_cfg.get("pretrained_path"):
            load_pretrained(body.body, model_cfg["pretrained_path"], True, "detection")
            model_cfg = {**model_cfg, "pretrained_path": None}
    if model_cfg.get("pretrained_path"):
        load_pretrained(model, model_cfg["pretrained_path"], reset_head, "detection")
    ev = DetectionEvaluation.model_validate(spec["evaluation"])
    set_postprocess(model, ev.score_threshold, ev.nms_threshold, ev.max_detections)
    return model


# GeneralizedRCNNTransform's own keys: detectors pass unknown keyword arguments to it, which ignores them
_TRANSFORM_KEYS = ("size_divisible", "fixed_size")
# keys build_detector takes out of model.kwargs itself
_OWN_KEYS = ("fpn_channels", "anchor_scale", "reset_head", "out_indices", "anchor_sizes", "anchor_aspect_ratios", "backbone_kwargs")


def _class_keys(cls) -> list[str]:
    """Keys a detector class accepts, its transform's and ours included (for checks and messages)."""
    return sorted(set(signature_keys(cls)) | set(_TRANSFORM_KEYS) | set(_OWN_KEYS))


def _builder_keys(name: str) -> list[str]:
    """Keys a torchvision detection builder passes on to its model class (for checks and messages)."""
    import torchvision
    from torchvision.models import detection as tvd

    keys = set(signature_keys(torchvision.models.get_model_builder(name))) | set(_TRANSFORM_KEYS) | set(_OWN_KEYS)
    for cls in (tvd.FasterRCNN, tvd.RetinaNet, tvd.FCOS, tvd.ssd.SSD, tvd.MaskRCNN, tvd.KeypointRCNN):  # SSD is not re-exported
        if cls.__name__.lower() in name.replace("_", "").lower():
            keys |= set(signature_keys(cls))
    return sorted(keys - {"weights", "weights_backbone", "progress"})


def limit_detections(result: dict[str, Any], score_threshold: float | None = None, max_detections: int | None = None) -> dict[str, Any]:
    """A formatted detection row (``boxes``, ``labels``, ``scores``) cut to the boxes scoring at least
    ``score_threshold``, best first, then to the first ``max_detections``."""
    keep = [i for i, s in enumerate(result["scores"]) if score_threshold is None or s >= score_threshold]
    keep = sorted(keep, key=lambda i: -result["scores"][i])[:max_detections]
    return {**result, **{k: [result[k][i] for i in keep] for k in ("boxes", "labels", "scores")}}


CONFUSION_SCORE, CONFUSION_IOU = 0.25, 0.45  # Ultralytics' defaults for its detection confusion matrix


def box_ious(truth: list[dict], found: list[dict], image: dict | None = None) -> np.ndarray:
    """IoU of each true box (rows) with each predicted one (columns), COCO ``[x, y, w, h]`` boxes, torchvision's box_iou."""
    from torchvision.ops import box_convert, box_iou

    def xyxy(items):
        return box_convert(torch.tensor([a["bbox"] for a in items], dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")

    return box_iou(xyxy(truth), xyxy(found)).numpy()


def detection_confusion(predictions: list[dict], ground_truth: dict, ious=box_ious, conf: float = CONFUSION_SCORE,
                        iou_threshold: float = CONFUSION_IOU) -> np.ndarray:
    """Ultralytics' detection confusion matrix, (classes + 1) square, rows the true class, columns the predicted
    one, the last of each being background. Per image, the predictions scoring at least ``conf`` are matched to
    objects whatever their classes, one to one, highest IoU first (IoU > ``iou_threshold``): a match counts at
    (true class, predicted class); an unmatched object at (its class, background), a missed one; an unmatched
    prediction at (background, its class), a false positive. ``ious(truth, found, image)``: IoU of true vs predicted
    annotations (boxes here, masks for instance segmentation). Classes are the categories sorted by id."""
    order = {c["id"]: k for k, c in enumerate(sorted(ground_truth["categories"], key=lambda c: c["id"]))}
    n = len(order)
    matrix = np.zeros((n + 1, n + 1), dtype=np.int64)
    truth_of: dict[Any, list[dict]] = {}
    for ann in ground_truth["annotations"]:
        if not ann.get("iscrowd") and ann["category_id"] in order:
            truth_of.setdefault(ann["image_id"], []).append(ann)
    found_of: dict[Any, list[dict]] = {}
    for det in predictions:
        if det["score"] >= conf and det["category_id"] in order:
            found_of.setdefault(det["image_id"], []).append(det)
    for image in ground_truth["images"]:
        truth, found = truth_of.get(image["id"], []), found_of.get(image["id"], [])
        matched_t, matched_f = set(), set()
        if truth and found:
            iou = ious(truth, found, image)
            pairs = sorted(zip(*np.nonzero(iou > iou_threshold)), key=lambda ij: -iou[ij])
            for i, j in pairs:
                if i not in matched_t and j not in matched_f:
                    matched_t.add(i)
                    matched_f.add(j)
                    matrix[order[truth[i]["category_id"]], order[found[j]["category_id"]]] += 1
        for i, ann in enumerate(truth):
            if i not in matched_t:
                matrix[order[ann["category_id"]], n] += 1
        for j, det in enumerate(found):
            if j not in matched_f:
                matrix[n, order[det["category_id"]]] += 1
    return matrix


class DetectionEvaluator:
    """Collects COCO results over a split; ``compute`` scores them against the split's COCO ground truth."""

    def __init__(self, task: "DetectionTask", records: list[dict], keep_predictions: bool):
        self.task = task
        self.records = records
        self.keep = keep_predictions
        self.results: list[dict] = []
        self.ground_truth: dict | None = None
        self.last_eval = None

    def update(self, model, batch) -> None:
        images, _targets, metas = batch
        detections = self.task.postprocess(self.task.forward(model, images), [(m["height"], m["width"]) for m in metas])
        for det, meta in zip(detections, metas):
            self.results += self.task.coco_results(det, meta["image_id"])

    def compute(self) -> dict[str, float]:
        results = [r for part in distributed.all_gather_objects(self.results) for r in part]
        self.ground_truth = coco_ground_truth(self.records, self.task.classes, self.task.category_ids)
        metrics, self.last_eval = coco_evaluate(self.ground_truth, results, self.task.classes, self.task.evaluation.max_detections)
        self.results = results
        return metrics


def tiled_detections(run, image: torch.Tensor, size: int, overlap: float, iou: float, max_detections: int) -> dict:
    """Detections of one (3, H, W) image from its overlapping tiles and the whole image (for objects larger
    than a tile), each tile's boxes shifted to the image, merged by per-class NMS (torchvision's
    ``batched_nms``), the best ``max_detections`` kept. Images no larger than a tile run whole."""
    from torchvision.ops import batched_nms

    h, w = image.shape[-2:]
    if h <= size and w <= size:
        return run([image])[0]
    offsets = [(x, y) for y in tile_starts(h, size, overlap) for x in tile_starts(w, size, overlap)]
    tiles = [image[:, y:y + size, x:x + size] for x, y in offsets]
    # tiles in chunks (same size, so no padding between them), the whole image alone
    outputs = [o for start in range(0, len(tiles), 16) for o in run(tiles[start:start + 16])] + run([image])
    shifts = [torch.tensor([x, y, x, y], dtype=torch.float32) for x, y in offsets] + [torch.zeros(4)]
    boxes = torch.cat([o["boxes"].float().cpu() + s for o, s in zip(outputs, shifts)])
    scores = torch.cat([o["scores"].float().cpu() for o in outputs])
    labels = torch.cat([o["labels"].cpu() for o in outputs])
    keep = batched_nms(boxes, scores, labels, iou)[:max_detections]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


class _NamedDetections(nn.Module):
    """One image in, (boxes, scores, labels) out: ONNX names outputs by position, and torchvision's detectors
    order their dicts differently (Faster R-CNN: boxes, labels, scores; FCOS/RetinaNet: boxes, scores, labels)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        det = self.model([image])[0]
        return det["boxes"], det["scores"], det["labels"]


class DetectionTask(Task):
    name = "detection"
    config_model = DetectionConfig
    formats = {
        "coco": lambda root, d: formats.read_coco(root, d, annotations="boxes"),
        "voc": lambda root, d: formats.read_voc(root, d.val_fraction, d.split_seed, d.classes),
        "yolo": lambda root, d: formats.read_yolo(root, d.classes),
    }
    metrics = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
    per_class_metric = "ap"
    primary_metric = "map"
    table_metrics = ("map", "map_50")
    output_datasets = ("predictions", "ground_truth")
    plot_names = ("results", "pr_curves", "confusion_matrix", "val_boxes")
    evaluation_plots = ("pr_curves",)  # drawn by evaluation_figures from the evaluator's COCOeval
    history_plots = {"loss": ["train_loss"], "map": ["map", "map_50"]}

    def __init__(self, spec: dict[str, Any]):
        super().__init__(spec)
        # the user's COCO category id of each class (VOC/YOLO: 1..K in class order)
        self.category_ids: list[int] = [int(i) for i in spec.get("category_ids") or range(1, len(self.classes) + 1)]

    @classmethod
    def make_spec(cls, cfg, classes, category_ids=None):
        return {**super().make_spec(cfg, classes, category_ids), "multi_scale": list(cfg.train.multi_scale) if cfg.train.multi_scale else None,
                "category_ids": [int(i) for i in category_ids] if category_ids else list(range(1, len(classes) + 1))}

    @classmethod
    def normalization(cls, model_cfg: dict[str, Any]):
        return timm_normalization(model_cfg.get("backbone") or "resnet50")

    @classmethod
    def input_normalization(cls, mean, std):
        # torchvision's GeneralizedRCNNTransform normalises inside the model: the input is only scaled to [0, 1]
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    supports_mosaic = True

    @classmethod
    def compose(cls, augment, image_size, mean, std, train):
        """No resize: the detector's own transform resizes keeping the aspect ratio (``min_size``/``max_size``)
        and maps its boxes back to the size of the image it was given, the original image's."""
        return compose(augment, image_size, mean, std, train=train, block=cls.name, bbox_params=box_params(), resize=[])

    @classmethod
    def write_builtin(cls, root: Path, cfg: dict, rng: np.random.Generator) -> None:
        builtin.write_coco(root, cfg, rng)

    @classmethod
    def check_record(cls, root, rec, width, height, classes, data_cfg):
        image_path = root / rec["image"]
        return check_annotated_size(rec, image_path, width, height) + [(str(image_path), p) for p in check_boxes(rec, width, height, classes)]

    @classmethod
    def record_labels(cls, rec: dict) -> list[int]:
        return list(rec["labels"])

    @classmethod
    def relabel(cls, rec, new_index):
        keep = [k for k, label in enumerate(rec["labels"]) if label in new_index]
        out = {**rec, "boxes": [rec["boxes"][k] for k in keep], "labels": [new_index[rec["labels"][k]] for k in keep],
               "iscrowd": [rec["iscrowd"][k] for k in keep]}
        if "segments" in rec:
            out["segments"] = [{**rec["segments"][k], "label": new_index[rec["labels"][k]]} for k in keep]
        return out

    def build_model(self) -> nn.Module:
        return build_detector(self.spec)

    def backbone(self, model):
        """The feature extractor: the timm / torchvision body under the FPN (SSD: its whole backbone)."""
        backbone = getattr(model, "backbone", None)
        return getattr(backbone, "body", backbone)

    def configure(self, model: nn.Module, evaluation: DetectionEvaluation) -> None:
        set_postprocess(model, evaluation.score_threshold, evaluation.nms_threshold, evaluation.max_detections)

    @staticmethod
    def _usable_boxes(record: dict, h: int, w: int) -> tuple[np.ndarray, list[int]]:
        boxes, labels = [], []
        for box, label, crowd in zip(record["boxes"], record["labels"], record["iscrowd"]):
            x0, y0, x1, y1 = np.clip(box, 0, [w, h, w, h])  # validation allowed a pixel of overhang
            if crowd or x1 - x0 < 1 or y1 - y0 < 1:
                continue
            boxes.append([float(x0), float(y0), float(x1), float(y1)])
            labels.append(label)
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels

    def make_sample(self, pixels, record, root, transform, index, for_eval: bool = False, donors=None):
        """``donors``: (pixels, record) of other images for albumentations' ``Mosaic`` (its ``mosaic_metadata``)."""
        h, w = pixels.shape[:2]
        boxes, labels = self._usable_boxes(record, h, w)
        extra = {}
        if donors is not None:
            extra["mosaic_metadata"] = []
            for donor_pixels, donor in donors:
                donor_boxes, donor_labels = self._usable_boxes(donor, *donor_pixels.shape[:2])
                extra["mosaic_metadata"].append({"image": donor_pixels, "bboxes": donor_boxes, "labels": donor_labels})
        out = transform(image=pixels, bboxes=boxes, labels=labels, **extra)
        target = {"boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
                  "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64) + 1)}
        meta = {"index": index, "image_id": record["image_id"], "width": w, "height": h}
        return out["image"], target, meta

    def preprocess(self, pixels: np.ndarray, transform) -> torch.Tensor:
        return transform(image=pixels, bboxes=np.zeros((0, 4), dtype=np.float32), labels=[])["image"]

    @staticmethod
    def stack(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # images keep their own sizes: the detector's transform resizes and batches them
        return list(tensors)

    @staticmethod
    def collate(batch):
        images, targets, metas = zip(*batch)
        return list(images), list(targets), list(metas)

    @staticmethod
    def to_device(batch, runtime: Runtime):
        images, targets, metas = batch
        images = [image.to(runtime.device, non_blocking=True) for image in images]
        targets = [{k: v.to(runtime.device, non_blocking=True) for k, v in t.items()} for t in targets]
        return images, targets, metas

    def loss(self, model, batch) -> dict[str, torch.Tensor]:
        """torchvision's named loss terms (classification, bbox_regression, bbox_ctrness / objectness...);
        the trainer sums them and records each."""
        images, targets, _ = batch
        return {name.removeprefix("loss_"): value for name, value in model(list(images), targets).items()}

    def forward(self, model, images):
        return self._tiled(lambda batch: model(batch), list(images))

    def _tiled(self, run, images: list[torch.Tensor]) -> list[dict]:
        """``run`` (a list of images to raw detections) on whole images, or with ``evaluation.tile`` on each
        image's tiles and the whole image, merged per image."""
        ev = self.evaluation
        tile = getattr(ev, "tile", None)  # instance segmentation's evaluation model offers no tiling
        if tile is None:
            return run(images)
        return [tiled_detections(run, image, tile.size, tile.overlap, ev.nms_threshold, ev.max_detections) for image in images]

    def evaluator(self, runtime: Runtime, records: list[dict], keep_predictions: bool = False) -> DetectionEvaluator:
        return DetectionEvaluator(self, records, keep_predictions)

    def postprocess(self, outputs, original_sizes):
        """Detections to 0-based labels, boxes clipped to each original image.

        The model was given the original images: torchvision's transform already mapped its boxes back to
        their pixels. ``evaluation.class_agnostic_nms`` then suppresses overlaps across classes too.
        """
        from torchvision.ops import nms

        ev = self.evaluation
        results = []
        for det, (h, w) in zip(outputs, original_sizes):
            boxes, scores, labels = det["boxes"].float().cpu(), det["scores"].float().cpu(), det["labels"].cpu() - 1
            boxes = boxes.clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=boxes.dtype))
            if getattr(ev, "class_agnostic_nms", False) and len(boxes):  # instance segmentation has no such key
                keep = nms(boxes, scores, ev.nms_threshold)
                boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            results.append({"boxes": boxes, "labels": labels, "scores": scores})
        return results

    def coco_results(self, det: dict, image_id: int) -> list[dict]:
        """One postprocessed detection result as COCO results entries (xywh, the user's category id)."""
        out = []
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
            x0, y0, x1, y1 = box
            out.append({"image_id": image_id, "category_id": self.category_ids[int(label)],
                        "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)], "score": round(score, 5)})
        return out

    def format_result(self, result):
        return {"boxes": [[round(v, 2) for v in b] for b in result["boxes"].tolist()],
                "labels": [self.classes[i] for i in result["labels"].tolist()],
                "scores": [round(float(v), 5) for v in result["scores"].tolist()]}

    @classmethod
    def inference_params(cls, spec):
        # the model already dropped what is below the run's own settings: a call can raise the threshold, lower the cap
        ev = cls.evaluation_settings(spec)
        return {"score_threshold": ev.score_threshold, "max_detections": ev.max_detections}

    @classmethod
    def apply_params(cls, row, params):
        return limit_detections(row, params.get("score_threshold"), params.get("max_detections"))

    def prediction_outputs(self, index: dict, evaluator) -> dict[str, Any]:
        return {"predictions": evaluator.results, "ground_truth": evaluator.ground_truth}

    @classmethod
    def plots(cls, outputs, index, history):
        from visionpipe import plots

        predictions, ground_truth = outputs["predictions"], outputs["ground_truth"]
        categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
        return {"confusion_matrix": plots.detection_confusion_matrix(detection_confusion(predictions, ground_truth),
                                                                     [c["name"] for c in categories], CONFUSION_SCORE, CONFUSION_IOU),
                "val_boxes": plots.box_grid(predictions, ground_truth, index), "results": plots.results(history)}

    @classmethod
    def evaluation_figures(cls, evaluator):
        """The precision-recall curves of the COCOeval the evaluator ran (its ``last_eval``), per user category id."""
        from visionpipe import plots

        names = {c["id"]: c["name"] for c in evaluator.ground_truth["categories"]}  # the user's category ids
        return {"pr_curves": plots.pr_curves(evaluator.last_eval, names)}

    @staticmethod
    def compare_results(want, got, tol: float = 1e-3):
        """Detections as sets: near-tied scores (within ``tol``) may come out in either order, and at the
        detections cap an equal-score detection may stand in for another."""
        ws, gs = np.asarray(want["scores"], dtype=np.float64), np.asarray(got["scores"], dtype=np.float64)
        if ws.shape != gs.shape or not np.allclose(np.sort(ws), np.sort(gs), atol=tol):
            return f"scores differ ({len(ws)} vs {len(gs)} detections)"
        wb, gb = np.asarray(want["boxes"], dtype=np.float64), np.asarray(got["boxes"], dtype=np.float64)
        wl, gl = np.asarray(want["labels"]), np.asarray(got["labels"])
        floor = ws.min() + tol if len(ws) else 0.0
        for box, label, score in zip(wb, wl, ws):
            if score <= floor:  # at the cap: its stand-in may be another equal-score detection
                continue
            same = (gl == label) & (np.abs(gs - score) <= tol) & (np.abs(gb - box).max(axis=1) <= 100 * tol)
            if not same.any():
                return f"no onnxruntime detection matches {label} {box.round(2).tolist()} (score {score:.4f})"
        return None

    def export_onnx(self, model, output):
        """Input ``image`` (3, H, W), any size, scaled to [0, 1] (the model normalises and resizes keeping the
        aspect ratio); outputs ``boxes`` (x0, y0, x1, y1 in the input image's pixels), ``scores``, ``labels``
        (class index + 1), after NMS."""
        import warnings

        size = self.spec["image_size"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(_NamedDetections(model).eval(), (torch.rand(3, size, size + size // 2),), str(output), input_names=["image"],
                              output_names=["boxes", "scores", "labels"], opset_version=17, dynamo=False,
                              dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                            "scores": {0: "detections"}, "labels": {0: "detections"}})

    def onnx_forward(self, session, images):
        def run(batch):
            outputs = []
            for image in batch:
                boxes, scores, labels = session.run(None, {"image": image.contiguous().numpy()})
                outputs.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)})
            return outputs

        return self._tiled(run, list(images))
