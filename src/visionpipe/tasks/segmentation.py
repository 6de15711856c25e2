"""Semantic segmentation with segmentation-models-pytorch; IoU/accuracy/Dice accumulated by torchmetrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pydantic import Field, model_validator

from visionpipe.config import MultiScaleTrain, ClassWeights, CocoFilesMixin, DataConfig, TaskConfig, TrainConfig, TTAEvaluationConfig, _Strict, flip_tta
from visionpipe.data import builtin, formats
from visionpipe.data.sampling import sample_seed
from visionpipe.data.shards import load_record_mask, load_record_rgb
from visionpipe.data.transforms import compose, tile_starts
from visionpipe.data.validation import check_annotated_size, check_mask_file
from visionpipe.engine.checkpoint import load_weights
from visionpipe.engine.distributed import all_gather_objects, global_mean
from visionpipe.engine.recipes import resolve_class_weights
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OTHER_CLASS,
    Task,
    call_with_model_kwargs,
    close_matches,
    hub_weights,
    load_pretrained,
    pop_reset_head,
    signature_keys,
    timm_normalization,
    wants_hub_weights,
)


class SlideConfig(_Strict):
    """Sliding-window inference (MMSegmentation's ``mode='slide'``) for images larger than the training size: the
    image is letterboxed to ``size`` (its longest side) instead of ``train.image_size``, and windows of the training
    size slide over it, sharing ``overlap`` of their width; each pixel's logits are averaged over its windows."""

    size: int = Field(ge=32)
    overlap: float = Field(0.25, ge=0.0, lt=0.9)


class SegmentationEvaluation(TTAEvaluationConfig):
    # null: the whole letterboxed image at train.image_size. Detection's ``evaluation.tile`` means tiles of original
    # pixels; this is another thing (letterbox to slide.size, slide training-size windows), so it has its own key
    slide: SlideConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _tile_is_slide(cls, data):
        """The key's old name ``tile`` is read as ``slide`` (a ``slide: null`` beside it, as conf/base has, gives way)."""
        if isinstance(data, dict) and "tile" in data:
            data = dict(data)
            tile = data.pop("tile")
            if data.get("slide") is not None and tile is not None:
                raise ValueError("evaluation.tile and evaluation.slide are both set; keep slide (tile is its old name)")
            data["slide"] = data.get("slide") if tile is None else tile
            logger.warning("segmentation.evaluation.tile is read as segmentation.evaluation.slide (the letterbox size "
                           "windows slide over); rename the key: detection's evaluation.tile means tiles of original pixels")
        return data


class SegmentationData(DataConfig, CocoFilesMixin):
    format: Literal["masks", "coco", "shards"] = "masks"
    ignore_index: int = 255  # mask value excluded from loss and metrics
    sampler: Literal["random"] = "random"  # balanced needs per-image class labels, which masks do not give cheaply


class LossConfig(_Strict):
    name: Literal["ce", "dice", "focal", "jaccard", "lovasz", "tversky"]
    weight: float = Field(1.0, gt=0)


class SegmentationTrain(TrainConfig, MultiScaleTrain):
    """``multi_scale``: each training batch (letterboxed to image_size) resized to a size drawn from the range."""

    class_weights: ClassWeights = None  # weights the ce loss term; auto: inverse pixel frequency in the train split


class SegmentationConfig(TaskConfig):
    data: SegmentationData
    train: SegmentationTrain = SegmentationTrain()
    losses: list[LossConfig] = Field(default_factory=lambda: [LossConfig(name="ce")])
    evaluation: SegmentationEvaluation = SegmentationEvaluation()

    @model_validator(mode="after")
    def _slide_size(self):
        slide = self.evaluation.slide
        if slide is not None and slide.size < self.train.image_size:
            raise ValueError(f"evaluation.slide.size {slide.size} is smaller than train.image_size {self.train.image_size}, the "
                             "window that slides over it; use a larger size, or slide: null")
        return self

    @model_validator(mode="after")
    def _class_weights(self):
        if self.train.class_weights is not None and not any(loss.name == "ce" for loss in self.losses):
            raise ValueError("train.class_weights weights the 'ce' loss term; add {name: ce} to losses or set class_weights: null")
        return self

logger = logging.getLogger(__name__)

PAD_MASK = 255  # mask value of the letterbox padding, turned into ignore_index


def slide(run, images: torch.Tensor, window: int, overlap: float, num_classes: int) -> torch.Tensor:
    """MMSegmentation's ``mode='slide'``: ``run`` on overlapping ``window`` x ``window`` crops of ``images``
    (N, 3, H, W), the logits of each pixel averaged over the windows that saw it."""
    n, _, h, w = images.shape
    logits = torch.zeros((n, num_classes, h, w), device=images.device)
    seen = torch.zeros((1, 1, h, w), device=images.device)
    for y in tile_starts(h, window, overlap):
        for x in tile_starts(w, window, overlap):
            logits[..., y:y + window, x:x + window] += run(images[..., y:y + window, x:x + window]).float()
            seen[..., y:y + window, x:x + window] += 1
    return logits / seen


def letterbox_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) of an image inside its letterbox: albumentations' LongestMaxSize arithmetic, exactly
    (``scale = max_size / max(h, w)``, sides truncated), so the crop matches the padding to the pixel."""
    scale = size / max(height, width)
    return max(1, int(height * scale)), max(1, int(width * scale))


def build_segmenter(spec: dict[str, Any]) -> nn.Module:
    import segmentation_models_pytorch as smp

    model_cfg = spec["model"]
    kwargs, reset_head = pop_reset_head(model_cfg.get("kwargs") or {})
    encoder = model_cfg.get("backbone") or "resnet18"
    weights = _encoder_weights(encoder) if wants_hub_weights(model_cfg) else None

    def create():
        return call_with_model_kwargs(smp.create_model, kwargs, "segmentation.model.kwargs", arch=model_cfg["name"], encoder_name=encoder,
                                      encoder_weights=weights, in_channels=3, classes=len(spec["classes"]),
                                      accepted=lambda: _arch_keys(model_cfg["name"], encoder), check_first=True)

    try:
        model = hub_weights(create, "segmentation.model.pretrained", f"smp encoder '{encoder}'") if weights is not None else create()
    except KeyError as err:
        message = str(err).strip("\"'")
        if "encoder" in message:
            names = smp.encoders.get_encoder_names()
            raise ConfigError(f"segmentation.model.backbone: unknown encoder '{encoder}'; use an smp encoder or 'tu-<timm model>'."
                              f"{close_matches(encoder, names)}") from None
        raise ConfigError(f"segmentation.model.name: {message}") from None
    path = model_cfg.get("pretrained_path")
    if path:
        keys = set(load_weights(path))
        whole = len(keys & set(model.state_dict())) >= len(keys & set(model.encoder.state_dict()))
        load_pretrained(model if whole else model.encoder, path, reset_head, "segmentation")
    return model


def _encoder_weights(encoder: str):
    """smp's published encoder weights: ``imagenet`` where the encoder has them, else its first; ``True`` for ``tu-`` (timm's default tag)."""
    import segmentation_models_pytorch as smp

    if encoder.startswith("tu-"):
        return True
    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings") or {}
    if not settings:
        raise ConfigError(f"segmentation.model.pretrained: smp publishes no weights for encoder '{encoder}'; use model.pretrained_path "
                          "or another encoder")
    return "imagenet" if "imagenet" in settings else next(iter(settings))


def _arch_keys(arch: str, encoder: str) -> list[str]:
    """Keys an smp architecture accepts; with a ``tu-`` encoder, also the timm model's (smp passes them on)."""
    import segmentation_models_pytorch as smp

    cls = smp.MODEL_ARCHITECTURES_MAPPING.get(arch.lower())
    keys = set(signature_keys(cls)) if cls else set()
    if encoder.startswith("tu-"):
        import timm

        try:
            keys |= set(signature_keys(type(timm.create_model(encoder.removeprefix("tu-"), pretrained=False))))
        except Exception:  # an unknown encoder is reported by smp itself
            pass
    return sorted(keys | {"reset_head"})


LOSSES = {
    "ce": lambda ignore, weight=None: nn.CrossEntropyLoss(weight=weight, ignore_index=ignore),
    "dice": lambda ignore: _smp_loss("DiceLoss", ignore),
    "focal": lambda ignore: _smp_loss("FocalLoss", ignore),
    "jaccard": lambda ignore: _smp_loss("JaccardLoss", ignore),
    "lovasz": lambda ignore: _smp_loss("LovaszLoss", ignore),
    "tversky": lambda ignore: _smp_loss("TverskyLoss", ignore),
}


def _smp_loss(name: str, ignore_index: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return getattr(smp.losses, name)(mode="multiclass", ignore_index=ignore_index)


class CombinedLoss(nn.Module):
    """Weighted sum of losses chosen in parameters (``losses: [{name: ce}, {name: dice, weight: 0.5}]``)."""

    def __init__(self, losses: list[dict[str, Any]], ignore_index: int, class_weights: list[float] | None = None):
        super().__init__()
        weight = torch.as_tensor(class_weights, dtype=torch.float) if class_weights else None
        self.terms = nn.ModuleList(LOSSES[item["name"]](ignore_index, weight) if item["name"] == "ce" else LOSSES[item["name"]](ignore_index)
                                   for item in losses)
        self.weights = [float(item.get("weight", 1.0)) for item in losses]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if any(b.device != logits.device for b in self.buffers()):  # class weights follow the model's device
            self.to(logits.device)
        return sum(w * term(logits, target) for w, term in zip(self.weights, self.terms))


def rasterize_segments(record: dict, height: int, width: int, ignore_index: int) -> np.ndarray:
    """COCO polygons/RLE to a class-index mask with pycocotools; crowd regions become ignore pixels."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=np.int64)
    for seg in record["segments"]:
        segmentation = seg["segmentation"]
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        region = mask_utils.decode(rle).astype(bool)
        mask[region] = ignore_index if seg.get("iscrowd") else seg["label"]
    return mask


def empty_segments(record: dict, height: int, width: int) -> list[str]:
    """Problems for a record's COCO segments that cover no pixel (a collinear polygon, one outside the image)."""
    problems = []
    for seg in record.get("segments", []):
        try:
            covered = rasterize_segments({"segments": [{**seg, "iscrowd": 0, "label": 1}]}, height, width, 0).any()
        except Exception as err:  # pycocotools raises bare Exceptions for malformed polygons / RLE
            problems.append(f"segmentation {str(seg['segmentation'])[:60]} cannot be decoded ({err})")
            continue
        if not covered:
            problems.append(f"segmentation {str(seg['segmentation'])[:60]} covers no pixel of the {width}x{height} image "
                            "(zero area); fix or remove the object")
    return problems


class SegmentationEvaluator:
    """Confusion-matrix metrics over the whole split at each image's original resolution."""

    def __init__(self, task: "SegmentationTask", device: torch.device, keep_predictions: bool):
        k, ignore = len(task.classes), task.ignore_index
        self.task = task
        # slow optional import: torchmetrics imports all its domains; a served model (no evaluation) never needs it
        from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

        self.iou = MulticlassJaccardIndex(k, average="none", ignore_index=ignore, zero_division=float("nan")).to(device)
        self.acc = MulticlassAccuracy(k, average="micro", ignore_index=ignore).to(device)
        self.loss_sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.keep = keep_predictions
        self.predictions: dict[int, np.ndarray] = {}

    def update(self, model, batch) -> None:
        images, masks, metas = batch
        logits = self.task.forward(model, images).float()
        self.loss_sum += self.task.criterion(logits, masks) * len(metas)
        self.count += len(metas)
        results = self.task.postprocess(logits, [tuple(meta["mask"].shape) for meta in metas])
        for result, meta in zip(results, metas):
            pred, original = result["mask"][None], meta["mask"].to(logits.device)[None]
            self.iou.update(pred, original)
            self.acc.update(pred, original)
            if self.keep:
                self.predictions[meta["index"]] = result["mask"].to(torch.uint8).cpu().numpy()

    def compute(self) -> dict[str, float]:
        if self.keep:  # under DDP each rank saw one shard of the split
            self.predictions = {i: m for part in all_gather_objects(self.predictions) for i, m in part.items()}
        iou = self.iou.compute().cpu()
        if self.task.classes[-1] == OTHER_CLASS:  # a champion re-scored on other classes: that column is no class of today's
            iou = iou[:-1]
        dice = 2 * iou / (1 + iou)  # per class, Dice = 2TP/(2TP+FP+FN) = 2 IoU / (1 + IoU) on the same counts
        metrics = {"val_loss": global_mean(self.loss_sum, self.count)[0], "miou": float(torch.nanmean(iou)),
                   "pixel_accuracy": float(self.acc.compute()), "dice": float(torch.nanmean(dice))}
        metrics.update({f"iou/{name}": float(v) for name, v in zip(self.task.classes, iou)})
        return metrics


class SegmentationTask(Task):
    name = "segmentation"
    config_model = SegmentationConfig
    formats = {
        "masks": lambda root, d: formats.read_mask_folders(root, d.classes),
        "coco": lambda root, d: {**formats.read_coco(root, d, annotations="segments", background=True),
                                 **({"classes": list(d.classes)} if d.classes else {})},
    }
    metrics = ("miou", "pixel_accuracy", "dice", "val_loss")
    per_class_metric = "iou"
    primary_metric = "miou"
    table_metrics = ("miou",)
    per_class_logits = True
    output_datasets = ("predicted_masks",)
    plot_names = ("results", "val_overlays")
    history_plots = {"loss": ["train_loss", "val_loss"], "miou": ["miou", "pixel_accuracy"]}

    def __init__(self, spec: dict[str, Any]):
        super().__init__(spec)
        self.ignore_index = spec["ignore_index"]
        self.criterion = CombinedLoss(spec["losses"], self.ignore_index, spec.get("class_weights"))

    @classmethod
    def make_spec(cls, cfg, classes, category_ids=None):
        return {**super().make_spec(cfg, classes, category_ids), "ignore_index": cfg.data.ignore_index,
                "losses": [loss.model_dump() for loss in cfg.losses], "seed": cfg.train.seed,
                "multi_scale": list(cfg.train.multi_scale) if cfg.train.multi_scale else None}

    @classmethod
    def normalization(cls, model_cfg: dict[str, Any]):
        encoder = model_cfg.get("backbone") or "resnet18"
        return timm_normalization(encoder) if encoder.startswith("tu-") else (IMAGENET_MEAN, IMAGENET_STD)

    @classmethod
    def builtin_classes(cls, num_classes: int) -> list[str]:
        return ["background", *super().builtin_classes(num_classes)]

    @classmethod
    def write_builtin(cls, root: Path, cfg: dict, rng: np.random.Generator) -> None:
        builtin.write_mask_folders(root, cfg, rng)

    @classmethod
    def check_record(cls, root, rec, width, height, classes, data_cfg):
        if "mask" in rec:
            return check_mask_file(root, rec, width, height, classes, data_cfg.ignore_index)
        found = check_annotated_size(rec, root / rec["image"], width, height)
        return found or [(str(root / rec["image"]), p) for p in empty_segments(rec, height, width)]

    @classmethod
    def training_spec(cls, cfg, index):
        return {"class_weights": resolve_class_weights(cfg.train.class_weights, index["classes"],
                                                       lambda: cls.pixel_counts(index, cfg.data.ignore_index),
                                                       "segmentation.train.class_weights")}

    @classmethod
    def pixel_counts(cls, index: dict, ignore_index: int) -> list[int]:
        """Pixels of each class over the train split's ground truth (masks at their own size)."""
        root, k = Path(index["root"]), len(index["classes"])
        counts = np.zeros(k, dtype=np.int64)
        for rec in index["train"]:
            if "mask" in rec:
                mask = load_record_mask(root, rec)
            else:
                h, w = (rec["height"], rec["width"]) if "height" in rec else load_record_rgb(root, rec).shape[:2]
                mask = rasterize_segments(rec, h, w, ignore_index)
            values = mask[mask != ignore_index].astype(np.int64)
            counts += np.bincount(values[values < k], minlength=k)[:k]
        return counts.tolist()

    def build_model(self) -> nn.Module:
        return build_segmenter(self.spec)

    @classmethod
    def compose(cls, augment, image_size, mean, std, train):
        """Letterbox: the longer side to ``image_size`` keeping the aspect ratio, then padding at the bottom and
        right to a square (mask padding is ignored by the loss; ``postprocess`` crops it off)."""
        import albumentations as A

        cls.check_mosaic(augment)
        letterbox = [A.LongestMaxSize(max_size=image_size),
                     A.PadIfNeeded(min_height=image_size, min_width=image_size, position="top_left", border_mode=0, fill=0,
                                   fill_mask=PAD_MASK)]
        return compose(augment, image_size, mean, std, train=train, block=cls.name, resize=letterbox)

    def forward(self, model, images):
        ev = self.evaluation

        def run(batch):
            return flip_tta(model, batch) if ev.tta else model(batch)

        if ev.slide is not None:  # letterboxed to slide.size; windows of the training size slide over it
            return slide(run, images, self.spec["image_size"], ev.slide.overlap, len(self.classes))
        return run(images)

    def onnx_forward(self, session, images):
        ev = self.evaluation
        if ev.slide is not None:
            return slide(lambda batch: Task.onnx_forward(self, session, batch), images, self.spec["image_size"], ev.slide.overlap,
                         len(self.classes))
        return super().onnx_forward(session, images)

    def train_batch(self, batch, epoch: int):
        """``train.multi_scale``: the batch (images bilinear, masks nearest) at a size drawn per batch, seeded by
        (seed, epoch, first sample) so resumed and distributed runs draw the same sizes."""
        scales = self.spec.get("multi_scale")
        if not scales:
            return batch
        import random

        images, masks, metas = batch
        size = random.Random(sample_seed(self.spec.get("seed", 0), epoch, metas[0]["index"])).choice(range(scales[0], scales[1] + 1, 32))
        if size == images.shape[-1]:
            return batch
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        masks = F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        return images, masks, metas

    def eval_image_size(self) -> int:
        return self.evaluation.slide.size if self.evaluation.slide is not None else self.spec["image_size"]

    def datasets(self, index: dict, aug: dict, cfg, eval_split: str = "val"):
        adapter, train_ds, eval_ds = super().datasets(index, aug, cfg, eval_split)
        if self.eval_image_size() != self.spec["image_size"]:  # evaluation.tile: letterboxed larger, windows slide over it
            eval_ds.transform = self.compose([], self.eval_image_size(), aug["mean"], aug["std"], train=False)
        return adapter, train_ds, eval_ds

    def backbone(self, model):
        """smp's encoder."""
        return getattr(model, "encoder", None)

    def make_sample(self, pixels, record, root, transform, index, for_eval: bool = False):
        h, w = pixels.shape[:2]
        mask = load_record_mask(root, record) if "mask" in record else rasterize_segments(record, h, w, self.ignore_index)
        out = transform(image=pixels, mask=mask)
        target = torch.as_tensor(out["mask"], dtype=torch.long)
        if self.ignore_index != PAD_MASK:  # validation admits no mask value >= the class count but ignore_index
            target[target == PAD_MASK] = self.ignore_index
        meta = {"index": index}
        if for_eval:  # metrics are computed at the ground truth's own size
            meta["mask"] = torch.as_tensor(mask)
        return out["image"], target, meta

    def loss(self, model, batch) -> torch.Tensor:
        images, masks, _ = batch
        return self.criterion(model(images), masks)

    def evaluator(self, runtime: Runtime, records: list[dict], keep_predictions: bool = False) -> SegmentationEvaluator:
        return SegmentationEvaluator(self, runtime.device, keep_predictions)

    def postprocess(self, outputs, original_sizes):
        """Per image: the letterbox padding cropped off, the logits upsampled (bilinear) to the original size,
        then the class with the highest score."""
        results = []
        for logit, size in zip(outputs, original_sizes):
            h, w = letterbox_size(int(size[0]), int(size[1]), logit.shape[-1])
            up = F.interpolate(logit[None, :, :h, :w].float(), size=tuple(size), mode="bilinear", align_corners=False)
            results.append({"mask": up.argmax(1)[0]})
        return results

    def format_result(self, result):
        return {"mask": result["mask"].to(torch.uint8).cpu().numpy()}

    def prediction_outputs(self, index: dict, evaluator) -> dict[str, Any]:

        from visionpipe.plots import palette_mask

        # palette PNGs: values stay class indices, a viewer shows the classes in the overlay colours
        masks = {Path(index["val"][i]["image"]).stem: palette_mask(m, len(index["classes"])) for i, m in sorted(evaluator.predictions.items())}
        return {"predicted_masks": masks}

    @classmethod
    def plots(cls, outputs, index, history):
        from visionpipe import plots

        return {"val_overlays": plots.mask_overlays(outputs["predicted_masks"], index), "results": plots.results(history)}
