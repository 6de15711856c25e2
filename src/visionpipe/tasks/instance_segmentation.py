"""Instance segmentation with torchvision's Mask R-CNN (on any timm backbone + FPN, or a torchvision
builder by name); COCO-protocol mask and box mAP from pycocotools.

What it shares with detection (box-aware augmentation, collate, loss, NMS settings, the timm FPN
body) it inherits from :class:`~visionpipe.tasks.detection.DetectionTask`; it adds per-instance
masks: decoded from COCO polygons/RLE or YOLO segmentation polygons, carried through the same
albumentations pipeline as the boxes, predicted, pasted back at each image's original size and
written as COCO results with RLE ``segmentation``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field, field_validator

from visionpipe.config import CocoFilesMixin, DataConfig, EvaluationConfig, TaskConfig
from visionpipe.data import builtin, formats
from visionpipe.data.images import load_rgb
from visionpipe.engine import distributed
from visionpipe.engine.coco import coco_evaluate, coco_ground_truth
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks.base import call_with_model_kwargs, close_matches, load_pretrained, pop_reset_head
from visionpipe.tasks.detection import (
    DetectionEvaluator,
    DetectionTask,
    DetectionTrain,
    TimmFPN,
    _builder_keys,
    _class_keys,
    CONFUSION_IOU,
    CONFUSION_SCORE,
    detection_confusion,
    detector_sizes,
    set_postprocess,
)

logger = logging.getLogger(__name__)

BLOCK = "instance_segmentation"
MASK_THRESHOLD = 0.5  # on the mask probability, as torchvision and the COCO reference evaluation do
TIMM_ARCH = "maskrcnn"
# keys build_mask_rcnn takes out of model.kwargs itself (detection's fpn_channels/anchor_scale/reset_head included)
_TIMM_ONLY = ("fpn_channels", "anchor_scale", "mask_head_channels", "box_head_dim")  # torchvision's builders fix these
_OWN_KEYS = ("reset_head", *_TIMM_ONLY)


class InstanceSegmentationData(DataConfig, CocoFilesMixin):
    format: Literal["coco", "yolo"] = "coco"
    # COCO and YOLO data name their own val split: a val_fraction would be accepted and ignored, so it is refused
    val_fraction: None = Field(None, exclude=True)

    @field_validator("val_fraction", mode="before")
    @classmethod
    def _no_val_fraction(cls, value):
        if value is not None:
            raise ValueError("not used by instance segmentation: COCO and YOLO data name their own val split "
                             "(val_annotations, images/val or data.yaml 'val'); remove the key")
        return value


class InstanceSegmentationEvaluation(EvaluationConfig):
    """Mask R-CNN's own post-processing settings (detection's tiling and class-agnostic NMS would have to
    carry the masks along: not offered here)."""

    score_threshold: float = Field(0.05, ge=0, le=1)  # detections below are dropped before NMS
    nms_threshold: float = Field(0.5, gt=0, le=1)  # IoU for non-maximum suppression
    max_detections: int = Field(100, ge=1)  # per image


class InstanceSegmentationConfig(TaskConfig):
    data: InstanceSegmentationData
    train: DetectionTrain = DetectionTrain()  # multi_scale and aspect-ratio grouping as for detection
    evaluation: InstanceSegmentationEvaluation = InstanceSegmentationEvaluation()


# ---------------------------------------------------------------- masks

def to_rle(segmentation: Any, height: int, width: int) -> dict:
    """One COCO segmentation (polygons, uncompressed or compressed RLE) as compressed RLE, with pycocotools."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def decode_segment(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation as an (height, width) uint8 0/1 mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(to_rle(segmentation, height, width)).astype(np.uint8)


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """(N, H, W) boolean masks as JSON-ready compressed RLE (``{"size": [H, W], "counts": str}``)."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.cpu().numpy().astype(np.uint8).transpose(1, 2, 0))
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()} for rle in mask_utils.encode(array)]


def segment_problems(segmentation: Any, width: int, height: int) -> list[str]:
    """What is wrong with one annotation's segmentation (empty when it decodes at the image's size)."""
    if not segmentation:
        return ["object without a segmentation (instance segmentation needs a polygon or RLE mask per object)"]
    if isinstance(segmentation, list):
        bad = [p for p in segmentation if not isinstance(p, list) or len(p) < 6 or len(p) % 2]
        if bad:
            return [f"polygon {str(bad[0])[:60]} is not a flat list of at least 3 x, y points"]
    elif isinstance(segmentation, dict):
        size = segmentation.get("size")
        if not (isinstance(size, list) and len(size) == 2) or "counts" not in segmentation:
            return [f"RLE segmentation needs 'size' [height, width] and 'counts', got keys {sorted(segmentation)}"]
        if list(size) != [height, width]:
            return [f"RLE size {size} does not match the {width}x{height} image (size is [height, width])"]
    else:
        return [f"segmentation must be polygons or RLE, got {type(segmentation).__name__}"]
    try:
        mask = decode_segment(segmentation, height, width)
    except Exception as err:  # pycocotools raises bare Exceptions/ValueErrors for corrupt RLE strings
        return [f"segmentation cannot be decoded ({err})"]
    if not mask.any():  # a collinear polygon, a polygon outside the image, an RLE of zeros
        return [f"segmentation {str(segmentation)[:60]} covers no pixel of the {width}x{height} image (zero area); "
                "fix or remove the object (it would train as an empty mask)"]
    return []


# ---------------------------------------------------------------- model

def build_mask_rcnn(spec: dict[str, Any]) -> nn.Module:
    """Mask R-CNN: ``maskrcnn`` on a timm backbone (+ FPN), or a torchvision Mask R-CNN builder by name."""
    import torchvision
    from torchvision.models import detection as tvd
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    model_cfg, num_classes = spec["model"], len(spec["classes"]) + 1  # + background
    name, backbone = model_cfg["name"], model_cfg.get("backbone")
    kwargs, reset_head = pop_reset_head(model_cfg.get("kwargs") or {})
    where = f"{BLOCK}.model.kwargs"
    mean, std = list(spec["mean"]), list(spec["std"])
    own = {key: kwargs.pop(key) for key in _TIMM_ONLY if key in kwargs}
    sizes = detector_sizes(spec, kwargs)  # the transform resizes keeping the aspect ratio, pastes masks at each input's size
    if backbone is None:
        builders = [b for b in torchvision.models.list_models(module=tvd) if b.startswith("maskrcnn")]
        if name not in builders:
            raise ConfigError(f"{BLOCK}.model.name: '{name}' is not a torchvision Mask R-CNN builder; use one of {builders}, or "
                              f"'{TIMM_ARCH}' with model.backbone set to a timm model.{close_matches(name, builders + [TIMM_ARCH])}")
        if own:
            raise ConfigError(f"{where}.{next(iter(own))}: only for '{TIMM_ARCH}' on a timm backbone; the builder '{name}' "
                              "fixes its FPN, anchors and heads")
        model = call_with_model_kwargs(torchvision.models.get_model, kwargs, where, name=name, weights=None, weights_backbone=None,
                                       num_classes=num_classes, image_mean=mean, image_std=std, **sizes,
                                       accepted=lambda: sorted(set(_builder_keys(name)) | set(_OWN_KEYS) - set(_TIMM_ONLY)),
                                       check_first=True)
    else:
        if name != TIMM_ARCH:
            raise ConfigError(f"{BLOCK}.model.name: with a timm backbone the model is '{TIMM_ARCH}', got '{name}' "
                              f"(or set model.backbone: null to use a torchvision builder such as maskrcnn_resnet50_fpn)")
        out_channels, anchor_scale = int(own.get("fpn_channels", 256)), float(own.get("anchor_scale", 4.0))
        body = TimmFPN(backbone, out_channels, extra="pool", block=BLOCK)
        levels = len(body.strides)
        anchors = AnchorGenerator(tuple((s * anchor_scale,) for s in body.strides), ((0.5, 1.0, 2.0),) * levels)
        # torchvision's default heads (two 1024-wide FC layers, four 256-channel mask convolutions) dominate the
        # cost of a small backbone; with its own predictors MaskRCNN wants num_classes unset, hence both given
        dim, width = int(own.get("box_head_dim", 1024)), int(own.get("mask_head_channels", 256))
        layers = (width,) * 4
        heads = {"num_classes": None, "box_head": TwoMLPHead(out_channels * 7 * 7, dim), "box_predictor": FastRCNNPredictor(dim, num_classes),
                 "mask_head": MaskRCNNHeads(out_channels, layers, 1), "mask_predictor": MaskRCNNPredictor(width, width, num_classes)}
        common = dict(**sizes, image_mean=mean, image_std=std)
        common.update(kwargs)
        model = call_with_model_kwargs(
            tvd.MaskRCNN, common, where, backbone=body, rpn_anchor_generator=anchors,
            box_roi_pool=MultiScaleRoIAlign(featmap_names=body.level_names, output_size=7, sampling_ratio=2),
            mask_roi_pool=MultiScaleRoIAlign(featmap_names=body.level_names, output_size=14, sampling_ratio=2), **heads,
            accepted=lambda: sorted(set(_class_keys(tvd.MaskRCNN)) | set(_OWN_KEYS)), check_first=True)
        if model_cfg.get("pretrained_path"):
            load_pretrained(body.body, model_cfg["pretrained_path"], True, BLOCK)
            model_cfg = {**model_cfg, "pretrained_path": None}
    if model_cfg.get("pretrained_path"):
        load_pretrained(model, model_cfg["pretrained_path"], reset_head, BLOCK)
    ev = InstanceSegmentationEvaluation.model_validate(spec["evaluation"])
    set_postprocess(model, ev.score_threshold, ev.nms_threshold, ev.max_detections)
    return model


# ---------------------------------------------------------------- evaluation

def instances_ground_truth(records: list[dict], classes: list[str], category_ids: list[int] | None = None) -> dict:
    """COCO ground truth with each object's segmentation (as annotated) and mask area; crowd objects
    stay ``iscrowd: 1``, so pycocotools treats them as ignore regions."""
    from pycocotools import mask as mask_utils

    gt = coco_ground_truth(records, classes, category_ids)
    annotations = iter(gt["annotations"])  # one per (record, box), in record order
    for rec in records:
        for segment in rec["segments"]:
            ann = next(annotations)
            ann["segmentation"] = segment["segmentation"]
            if segment["segmentation"]:
                ann["area"] = float(mask_utils.area(to_rle(segment["segmentation"], rec["height"], rec["width"])))
    return gt


def mask_ious(truth: list[dict], found: list[dict], image: dict) -> np.ndarray:
    """Mask IoU of each true instance (rows) with each predicted one (columns) of ``image``, pycocotools' RLE IoU."""
    from pycocotools import mask as mask_utils

    def rles(items):
        return [to_rle(a["segmentation"], image["height"], image["width"]) for a in items]

    return np.asarray(mask_utils.iou(rles(found), rles(truth), [0] * len(truth)), dtype=np.float64).reshape(len(found), len(truth)).T


def _unshared(ground_truth: dict) -> dict:
    """The ground truth with its own annotation dicts: pycocotools' segm evaluation replaces each
    annotation's segmentation by RLE with bytes counts, which must not leak into the JSON we write."""
    return {**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]}


def instance_metrics(ground_truth: dict, predictions: list[dict], classes: list[str], max_detections: int = 100) -> tuple[dict, Any]:
    """Mask and box COCO mAP of ``predictions`` (COCO results with ``bbox`` and RLE ``segmentation``);
    returns (metrics, the segm COCOeval object)."""
    segm, segm_eval = coco_evaluate(_unshared(ground_truth), predictions, classes, max_detections, iou_type="segm")
    box, _ = coco_evaluate(ground_truth, predictions, classes, max_detections, iou_type="bbox")
    metrics = {f"mask_{k}": segm.get(k, 0.0) for k in ("map", "map_50", "map_75")}
    metrics.update({f"box_{k}": box.get(k, 0.0) for k in ("map", "map_50", "map_75")})
    metrics.update({f"mask_ap/{c}": segm[f"ap/{c}"] for c in classes})
    return metrics, segm_eval


class InstanceSegmentationEvaluator(DetectionEvaluator):
    """Detection's collection of COCO results (the task's ``coco_results`` adds each RLE mask); ``compute``
    scores masks and boxes."""

    def __init__(self, task: "InstanceSegmentationTask", records: list[dict]):
        super().__init__(task, records, keep_predictions=True)

    def compute(self) -> dict[str, float]:
        results = [r for part in distributed.all_gather_objects(self.results) for r in part]
        self.ground_truth = instances_ground_truth(self.records, self.task.classes, self.task.category_ids)
        metrics, self.last_eval = instance_metrics(self.ground_truth, results, self.task.classes, self.task.evaluation.max_detections)
        self.results = results
        return metrics


# ---------------------------------------------------------------- the task

class _NamedInstances(nn.Module):
    """One image in, (boxes, labels, scores, masks) out, in that order (ONNX names outputs by position)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        det = self.model([image])[0]
        return det["boxes"], det["labels"], det["scores"], det["masks"]


class InstanceSegmentationTask(DetectionTask):
    name = BLOCK
    config_model = InstanceSegmentationConfig
    formats = {
        "coco": lambda root, d: formats.read_coco(root, d, annotations="instances"),
        "yolo": lambda root, d: formats.read_yolo(root, d.classes, segments=True),
    }
    metrics = ("mask_map", "mask_map_50", "mask_map_75", "box_map", "box_map_50", "box_map_75")
    per_class_metric = "mask_ap"
    primary_metric = "mask_map"
    table_metrics = ("mask_map", "box_map")
    output_datasets = ("predictions", "ground_truth")
    plot_names = ("results", "mask_pr_curves", "confusion_matrix", "val_instances")
    evaluation_plots = ("mask_pr_curves",)  # drawn by evaluation_figures from the evaluator's segm COCOeval
    history_plots = {"loss": ["train_loss"], "mask_map": ["mask_map", "box_map"]}

    @classmethod
    def write_builtin(cls, root: Path, cfg: dict, rng: np.random.Generator) -> None:
        builtin.write_coco(root, cfg, rng, segmentation=True)

    @classmethod
    def check_record(cls, root, rec, width, height, classes, data_cfg):
        found = super().check_record(root, rec, width, height, classes, data_cfg)
        image_path = str(root / rec["image"])
        for segment in rec.get("segments", []):
            found += [(image_path, p) for p in segment_problems(segment["segmentation"], width, height)]
        return found

    def build_model(self) -> nn.Module:
        return build_mask_rcnn(self.spec)

    supports_mosaic = False  # Mosaic's donors would need their masks too

    def make_sample(self, pixels, record, root, transform, index, for_eval: bool = False, donors=None):
        """Boxes and per-instance masks through the same transform (an instance whose box is cropped away
        is dropped with its mask). Evaluation samples carry no masks: they are scored against the records."""
        h, w = pixels.shape[:2]
        boxes, labels, masks = [], [], []
        for box, label, crowd, segment in zip(record["boxes"], record["labels"], record["iscrowd"], record["segments"]):
            x0, y0, x1, y1 = np.clip(box, 0, [w, h, w, h])  # validation allowed a pixel of overhang
            if crowd or x1 - x0 < 1 or y1 - y0 < 1:  # crowd regions are ignored in evaluation, not training targets
                continue
            boxes.append([float(x0), float(y0), float(x1), float(y1)])
            labels.append(label)
            if not for_eval:
                masks.append(decode_segment(segment["segmentation"], h, w))
        # the box label field carries each instance's position, so surviving boxes find their masks and classes
        arrays = {"masks": masks} if masks else {}
        out = transform(image=pixels, bboxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4), labels=list(range(len(boxes))), **arrays)
        kept = [int(i) for i in out["labels"]]
        target = {"boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
                  "labels": torch.as_tensor([labels[i] + 1 for i in kept], dtype=torch.int64)}
        if not for_eval:
            size = tuple(out["image"].shape[-2:])
            target["masks"] = (torch.stack([torch.as_tensor(out["masks"][i], dtype=torch.uint8) for i in kept]) if kept
                               else torch.zeros((0, *size), dtype=torch.uint8))
        meta = {"index": index, "image_id": record["image_id"], "width": w, "height": h}
        return out["image"], target, meta

    def evaluator(self, runtime: Runtime, records: list[dict], keep_predictions: bool = False) -> InstanceSegmentationEvaluator:
        return InstanceSegmentationEvaluator(self, records)

    def postprocess(self, outputs, original_sizes):
        """Boxes rescaled to each original image; mask probabilities (pasted by torchvision at the network's
        input size) resized bilinearly to the original size and thresholded at 0.5. Labels 0-based."""
        results = super().postprocess(outputs, original_sizes)
        for result, det, (h, w) in zip(results, outputs, original_sizes):
            probs = det["masks"].float().cpu()  # (N, 1, S, S)
            if len(probs):
                result["masks"] = F.interpolate(probs, size=(int(h), int(w)), mode="bilinear", align_corners=False)[:, 0] >= MASK_THRESHOLD
            else:
                result["masks"] = torch.zeros((0, int(h), int(w)), dtype=torch.bool)
        return results

    def coco_results(self, det: dict, image_id: int) -> list[dict]:
        """One postprocessed result as COCO results entries: ``bbox`` and RLE ``segmentation`` per instance
        (one file serves pycocotools' bbox and segm evaluation, as detectron2's instances results do)."""
        entries = super().coco_results(det, image_id)
        for entry, rle in zip(entries, encode_masks(det["masks"])):
            entry["segmentation"] = rle
        return entries

    def format_result(self, result):
        """Boxes (x0, y0, x1, y1), class names, scores and COCO RLE masks, all at the image's original size."""
        return {**super().format_result(result), "masks": encode_masks(result["masks"])}

    @classmethod
    def plots(cls, outputs, index, history):
        from visionpipe import plots

        predictions, ground_truth = outputs["predictions"], outputs["ground_truth"]
        classes = [c["name"] for c in sorted(ground_truth["categories"], key=lambda c: c["id"])]
        confusion = detection_confusion(predictions, _unshared(ground_truth), mask_ious, CONFUSION_SCORE, CONFUSION_IOU)
        return {"val_instances": instance_overlays(predictions, ground_truth, index),
                "confusion_matrix": plots.detection_confusion_matrix(confusion, classes, CONFUSION_SCORE, CONFUSION_IOU),
                "results": plots.results(history)}

    @classmethod
    def evaluation_figures(cls, evaluator):
        """Mask precision-recall from the segm COCOeval the evaluator ran, each class named by its own category id
        (the user's ids may be sparse)."""
        from visionpipe import plots

        names = {c["id"]: c["name"] for c in evaluator.ground_truth["categories"]}
        return {"mask_pr_curves": plots.pr_curves(evaluator.last_eval, names, title="Mask precision-recall at IoU 0.5")}

    def export_onnx(self, model, output):
        """Input ``image`` (3, H, W), any size, scaled to [0, 1]; outputs ``boxes``, ``labels`` (class index + 1),
        ``scores`` and ``masks`` (N, 1, H, W probabilities pasted in the input's pixels), after NMS."""
        import warnings

        size = self.spec["image_size"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about data-dependent shapes: the graph handles them
            torch.onnx.export(_NamedInstances(model).eval(), (torch.rand(3, size, size + size // 2),), str(output), input_names=["image"],
                              output_names=["boxes", "labels", "scores", "masks"], opset_version=17, dynamo=False,
                              dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"},
                                            "scores": {0: "detections"}, "masks": {0: "detections", 2: "height", 3: "width"}})

    @staticmethod
    def compare_results(want, got, tol: float = 1e-3):
        """Detections as sets (as for detection), and the thresholded masks covering the same area (within
        1%: a pixel whose probability sits at the threshold may flip)."""
        problem = DetectionTask.compare_results(want, got, tol)
        if problem:
            return problem
        a, b = int(want["masks"].sum()), int(got["masks"].sum())
        return None if abs(a - b) <= 0.01 * max(a, 1) else f"masks cover {a} vs {b} pixels"

    def onnx_forward(self, session, images):
        outputs = []
        for image in images:
            got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": image.numpy()})))
            outputs.append({k: torch.from_numpy(v) for k, v in got.items()})
        return outputs


# ---------------------------------------------------------------- plots

def instance_overlays(predictions: list[dict], ground_truth: dict, index: dict, min_score: float = 0.5):
    """True and predicted instances (score >= ``min_score``) over the first validation images: each filled and
    outlined in its class's colour (over black, so it reads on any image), true ones labelled with the class,
    predicted ones with class and score; a legend of the class colours."""
    from pycocotools import mask as mask_utils

    from visionpipe.plots import MAX_IMAGES, SMALL_PT, _class_legend, _grid, _outlined, object_colours, plt, text_colour

    images = ground_truth["images"][:MAX_IMAGES // 2]
    categories = sorted(ground_truth["categories"], key=lambda c: c["id"])
    colours = object_colours(len(categories))
    colour = {c["id"]: colours[k] for k, c in enumerate(categories)}
    names = {c["id"]: c["name"] for c in categories}
    fig, axes = _grid(len(images) * 2, cols=4, cell=3.6)
    for i, image in enumerate(images):
        pixels = load_rgb(Path(index["root"]) / image["file_name"])
        h, w = pixels.shape[:2]
        truth = [(a["category_id"], to_rle(a["segmentation"], h, w), None) for a in ground_truth["annotations"]
                 if a["image_id"] == image["id"] and a.get("segmentation")]
        found = [(p["category_id"], p["segmentation"], p["score"]) for p in predictions
                 if p["image_id"] == image["id"] and p["score"] >= min_score]
        for j, (title, instances) in enumerate((("true", truth), (f"predicted (score >= {min_score:g})", found))):
            ax = axes[i * 2 + j]
            overlay = pixels.astype(np.float32) / 255
            regions = [(cat_id, mask_utils.decode(rle).astype(bool), score) for cat_id, rle, score in instances]
            for cat_id, region, _ in regions:
                overlay[region] = 0.5 * overlay[region] + 0.5 * np.asarray(colour.get(cat_id, (1, 1, 1))[:3])
            ax.imshow(overlay)
            for cat_id, region, score in regions:  # each instance outlined, so touching objects of one class stay apart
                if region.any():
                    c = colour.get(cat_id, (1, 1, 1))
                    ax.contour(region, levels=[0.5], colors=[c], linewidths=1.6, path_effects=_outlined(3))
                    ys, xs = np.nonzero(region)
                    label = names.get(cat_id, "?") if score is None else f"{names.get(cat_id, '?')} {score:.2f}"
                    ax.text(xs.min(), ys.min(), label, color=text_colour(c), fontsize=SMALL_PT, va="bottom", clip_on=True,
                            bbox={"facecolor": c, "alpha": 0.85, "edgecolor": "black", "linewidth": 0.6, "pad": 1.2})
            ax.set_title(f"{Path(image['file_name']).stem}: {len(regions)} {title}")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    _class_legend(fig, [c["name"] for c in categories], colours)
    return fig
