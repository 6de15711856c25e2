"""Object detection with torchvision detectors on timm backbones; COCO-protocol mAP from pycocotools."""

from __future__ import annotations

import contextlib
import io
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from pydantic import Field

from visionpipe.config import CocoFilesMixin, DataConfig, EvaluationConfig, TaskConfig
from visionpipe.data import builtin, formats
from visionpipe.engine import distributed
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks.base import Task, call_with_model_kwargs, close_matches, load_pretrained, pop_reset_head, timm_normalization

logger = logging.getLogger(__name__)

TIMM_ARCHS = ("fcos", "retinanet", "fasterrcnn")


class DetectionData(DataConfig, CocoFilesMixin):
    format: Literal["coco", "voc", "yolo"] = "coco"


class DetectionEvaluation(EvaluationConfig):
    score_threshold: float = Field(0.05, ge=0, le=1)  # detections below are dropped before NMS
    nms_threshold: float = Field(0.5, gt=0, le=1)  # IoU for non-maximum suppression
    max_detections: int = Field(100, ge=1)  # per image


class DetectionConfig(TaskConfig):
    task_name: ClassVar[str] = "detection"
    data: DetectionData
    evaluation: DetectionEvaluation = DetectionEvaluation()


class TimmFPN(nn.Module):
    """Any timm CNN as a multi-scale body (``features_only``) under torchvision's FeaturePyramidNetwork."""

    def __init__(self, name: str, out_channels: int = 128, out_indices=(2, 3, 4), extra: str = "p6p7", block: str = "detection"):
        """``block``: the parameter block errors name (``<block>.model.backbone``)."""
        super().__init__()
        import timm
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

        if not timm.is_model(name):
            raise ConfigError(f"{block}.model.backbone: unknown timm model '{name}'.{close_matches(name, timm.list_models())}")
        try:
            self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices))
        except Exception as err:  # timm raises RuntimeError/AssertionError for models without feature maps
            raise ConfigError(f"{block}.model.backbone: '{name}' cannot serve multi-scale features ({err}); pick a CNN such as resnet18") from None
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
        model = call_with_model_kwargs(torchvision.models.get_model, kwargs, "detection.model.kwargs", name=name, weights=None,
                                       weights_backbone=None, num_classes=num_classes, image_mean=list(mean), image_std=list(std),
                                       **extra, accepted=lambda: _builder_keys(name), check_first=True)
    else:
        if name not in TIMM_ARCHS:
            raise ConfigError(f"detection.model.name: with a timm backbone the detector is one of {list(TIMM_ARCHS)}, got '{name}'."
                              f"{close_matches(name, list(TIMM_ARCHS))}")
        body = TimmFPN(backbone, out_channels, extra="pool" if name == "fasterrcnn" else "p6p7")
        levels = len(body.strides)
        common = dict(min_size=size, max_size=size, image_mean=list(mean), image_std=list(std))
        common.update(kwargs)
        where = "detection.model.kwargs"
        if name == "fcos":
            anchors = AnchorGenerator(tuple((s,) for s in body.strides), ((1.0,),) * levels)
            model = call_with_model_kwargs(tvd.FCOS, common, where, backbone=body, num_classes=num_classes, anchor_generator=anchors,
                                           accepted=lambda: _class_keys(tvd.FCOS), check_first=True)
        elif name == "retinanet":
            sizes = tuple(tuple(s * anchor_scale * 2 ** (i / 3) for i in range(3)) for s in body.strides)
            model = call_with_model_kwargs(tvd.RetinaNet, common, where, backbone=body, num_classes=num_classes,
                                           anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * levels),
                                           accepted=lambda: _class_keys(tvd.RetinaNet), check_first=True)
        else:
            anchors = AnchorGenerator(tuple((s * anchor_scale,) for s in body.strides), ((0.5, 1.0, 2.0),) * levels)
            pool = MultiScaleRoIAlign(featmap_names=body.level_names, output_size=7, sampling_ratio=2)
            model = call_with_model_kwargs(tvd.FasterRCNN, common, where, backbone=body, num_classes=num_classes, rpn_anchor_generator=anchors,
                                           box_roi_pool=pool, accepted=lambda: _class_keys(tvd.FasterRCNN), check_first=True)
        if model_cfg.get("pretrained_path"):
            load_pretrained(body.body, model_cfg["pretrained_path"], True, "detection")
            model_cfg = {**model_cfg, "pretrained_path": None}
    if model_cfg.get("pretrained_path"):
        load_pretrained(model, model_cfg["pretrained_path"], reset_head, "detection")
    ev = spec["evaluation"]
    set_postprocess(model, ev["score_threshold"], ev["nms_threshold"], ev["max_detections"])
    return model


# GeneralizedRCNNTransform's own keys: detectors pass unknown keyword arguments to it, which ignores them
_TRANSFORM_KEYS = ("size_divisible", "fixed_size")
# keys build_detector takes out of model.kwargs itself
_OWN_KEYS = ("fpn_channels", "anchor_scale", "reset_head")


def _class_keys(cls) -> list[str]:
    """Keys a detector class accepts, its transform's and ours included (for checks and messages)."""
    from visionpipe.tasks.base import signature_keys

    return sorted(set(signature_keys(cls)) | set(_TRANSFORM_KEYS) | set(_OWN_KEYS))


def _builder_keys(name: str) -> list[str]:
    """Keys a torchvision detection builder passes on to its model class (for checks and messages)."""
    import torchvision
    from torchvision.models import detection as tvd

    from visionpipe.tasks.base import signature_keys

    keys = set(signature_keys(torchvision.models.get_model_builder(name))) | set(_TRANSFORM_KEYS) | set(_OWN_KEYS)
    for cls in (tvd.FasterRCNN, tvd.RetinaNet, tvd.FCOS, tvd.SSD, tvd.MaskRCNN, tvd.KeypointRCNN):
        if cls.__name__.lower() in name.replace("_", "").lower():
            keys |= set(signature_keys(cls))
    return sorted(keys - {"weights", "weights_backbone", "progress"})


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


def coco_evaluate(ground_truth: dict, predictions: list[dict], classes: list[str], max_detections: int = 100,
                  iou_type: str = "bbox") -> tuple[dict, Any]:
    """COCO evaluation (``iou_type`` bbox or segm) with pycocotools; returns (metrics, the COCOeval object)."""
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
        ev = COCOeval(gt, dt, iou_type)
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
        self.ground_truth = coco_ground_truth(self.records, self.task.classes)
        metrics, self.last_eval = coco_evaluate(self.ground_truth, results, self.task.classes, self.task.spec["evaluation"]["max_detections"])
        self.results = results
        return metrics


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
    output_datasets = ("predictions", "ground_truth")
    plot_names = ("pr_curves", "val_boxes", "loss_curves")

    @classmethod
    def normalization(cls, model_cfg: dict[str, Any]):
        return timm_normalization(model_cfg.get("backbone") or "resnet50")

    @classmethod
    def input_normalization(cls, mean, std):
        # torchvision's GeneralizedRCNNTransform normalises inside the model: the input is only scaled to [0, 1]
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    @classmethod
    def compose(cls, augment, image_size, mean, std, train):
        from visionpipe.data.transforms import box_params, compose

        return compose(augment, image_size, mean, std, train=train, block=cls.name, bbox_params=box_params())

    @classmethod
    def write_builtin(cls, root: Path, cfg: dict, rng: np.random.Generator) -> None:
        builtin.write_coco(root, cfg, rng)

    @classmethod
    def check_record(cls, root, rec, width, height, classes, data_cfg):
        from visionpipe.data.validation import check_annotated_size, check_boxes

        image_path = root / rec["image"]
        return check_annotated_size(rec, image_path, width, height) + [(str(image_path), p) for p in check_boxes(rec, width, height, classes)]

    @classmethod
    def record_labels(cls, rec: dict) -> list[int]:
        return list(rec["labels"])

    def build_model(self) -> nn.Module:
        return build_detector(self.spec)

    def configure(self, model: nn.Module, evaluation_cfg: dict[str, Any]) -> None:
        set_postprocess(model, evaluation_cfg["score_threshold"], evaluation_cfg["nms_threshold"], evaluation_cfg["max_detections"])

    def make_sample(self, pixels, record, root, transform, index, for_eval: bool = False):
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

    def preprocess(self, pixels: np.ndarray, transform) -> torch.Tensor:
        return transform(image=pixels, bboxes=np.zeros((0, 4), dtype=np.float32), labels=[])["image"]

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
        return images, targets, metas

    def loss(self, model, batch) -> torch.Tensor:
        images, targets, _ = batch
        return sum(model(list(images), targets).values())

    def forward(self, model, images):
        return model(list(images))

    def evaluator(self, runtime: Runtime, records: list[dict], keep_predictions: bool = False) -> DetectionEvaluator:
        return DetectionEvaluator(self, records, keep_predictions)

    def postprocess(self, outputs, original_sizes):
        """Boxes from the network's input pixels to each original image's pixels; labels 0-based."""
        size = self.spec["image_size"]
        results = []
        for det, (h, w) in zip(outputs, original_sizes):
            scale = torch.tensor([w / size, h / size, w / size, h / size])
            results.append({"boxes": det["boxes"].float().cpu() * scale, "labels": det["labels"].cpu() - 1, "scores": det["scores"].float().cpu()})
        return results

    @staticmethod
    def coco_results(det: dict, image_id: int) -> list[dict]:
        """One postprocessed detection result as COCO results entries (xywh, category id = class index + 1)."""
        out = []
        for box, label, score in zip(det["boxes"].tolist(), det["labels"].tolist(), det["scores"].tolist()):
            x0, y0, x1, y1 = box
            out.append({"image_id": image_id, "category_id": int(label) + 1,
                        "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)], "score": round(score, 5)})
        return out

    def format_result(self, result):
        return {"boxes": [[round(v, 2) for v in b] for b in result["boxes"].tolist()],
                "labels": [self.classes[i] for i in result["labels"].tolist()],
                "scores": [round(float(v), 5) for v in result["scores"].tolist()]}

    def prediction_outputs(self, index: dict, evaluator) -> dict[str, Any]:
        return {"predictions": evaluator.results, "ground_truth": evaluator.ground_truth}

    @classmethod
    def plots(cls, outputs, index, history):
        from visionpipe.tracking import plots

        predictions, ground_truth = outputs["predictions"], outputs["ground_truth"]
        return {"pr_curves": plots.pr_curves(predictions, ground_truth, index["classes"]),
                "val_boxes": plots.box_grid(predictions, ground_truth, index), "loss_curves": plots.loss_curves(history)}

    def export_onnx(self, model, output):
        """Input ``image`` (3, S, S) scaled to [0, 1] (the model normalises); outputs ``boxes`` (x0, y0, x1, y1
        in input pixels), ``scores``, ``labels`` (class index + 1), after NMS."""
        import warnings

        size = self.spec["image_size"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, ([torch.rand(3, size, size)],), str(output), input_names=["image"],
                              output_names=["boxes", "scores", "labels"], opset_version=17, dynamo=False)

    def onnx_forward(self, session, images):
        outputs = []
        for image in images:
            boxes, scores, labels = session.run(None, {"image": image.numpy()})
            outputs.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores), "labels": torch.from_numpy(labels)})
        return outputs
