"""Semantic segmentation with segmentation-models-pytorch; IoU/accuracy/Dice accumulated by torchmetrics."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from visionpipe.data.shards import load_record_mask
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks.base import IMAGENET_MEAN, IMAGENET_STD, close_matches, load_pretrained, pop_reset_head, timm_normalization

logger = logging.getLogger(__name__)


def build_segmenter(spec: dict[str, Any]) -> nn.Module:
    import segmentation_models_pytorch as smp

    model_cfg = spec["model"]
    kwargs, reset_head = pop_reset_head(model_cfg.get("kwargs") or {})
    encoder = model_cfg.get("backbone") or "resnet18"
    try:
        model = smp.create_model(model_cfg["name"], encoder_name=encoder, encoder_weights=None, in_channels=3,
                                 classes=len(spec["classes"]), **kwargs)
    except KeyError as err:
        message = str(err).strip("\"'")
        if "encoder" in message:
            names = smp.encoders.get_encoder_names()
            raise ConfigError(f"segmentation.model.backbone: unknown encoder '{encoder}'; use an smp encoder or 'tu-<timm model>'."
                              f"{close_matches(encoder, names)}") from None
        raise ConfigError(f"segmentation.model.name: {message}") from None
    path = model_cfg.get("pretrained_path")
    if path:
        from visionpipe.engine.checkpoint import load_weights

        keys = set(load_weights(path))
        whole = len(keys & set(model.state_dict())) >= len(keys & set(model.encoder.state_dict()))
        load_pretrained(model if whole else model.encoder, path, reset_head, "segmentation")
    return model


LOSSES = {
    "ce": lambda ignore: nn.CrossEntropyLoss(ignore_index=ignore),
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

    def __init__(self, losses: list[dict[str, Any]], ignore_index: int):
        super().__init__()
        self.terms = nn.ModuleList(LOSSES[item["name"]](ignore_index) for item in losses)
        self.weights = [float(item.get("weight", 1.0)) for item in losses]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
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


class SegmentationEvaluator:
    """Confusion-matrix metrics over the whole split at each image's original resolution."""

    def __init__(self, task: "SegmentationTask", device: torch.device, keep_predictions: bool):
        k, ignore = len(task.classes), task.ignore_index
        self.task = task
        self.iou = MulticlassJaccardIndex(k, average="none", ignore_index=ignore, zero_division=float("nan")).to(device)
        self.acc = MulticlassAccuracy(k, average="micro", ignore_index=ignore).to(device)
        self.loss_sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.keep = keep_predictions
        self.predictions: dict[int, np.ndarray] = {}

    def update(self, model, batch) -> None:
        images, masks, metas = batch
        logits = model(images).float()
        self.loss_sum += self.task.criterion(logits, masks) * len(metas)
        self.count += len(metas)
        for logit, meta in zip(logits, metas):
            original = meta["mask"].to(logit.device)
            up = F.interpolate(logit[None], size=original.shape, mode="bilinear", align_corners=False)
            pred = up.argmax(1)
            self.iou.update(pred, original[None])
            self.acc.update(pred, original[None])
            if self.keep:
                self.predictions[meta["index"]] = pred[0].to(torch.uint8).cpu().numpy()

    def compute(self) -> dict[str, float]:
        from visionpipe.engine.distributed import all_gather_objects, global_mean

        if self.keep:  # under DDP each rank saw one shard of the split
            self.predictions = {i: m for part in all_gather_objects(self.predictions) for i, m in part.items()}
        iou = self.iou.compute().cpu()
        dice = 2 * iou / (1 + iou)  # per class, Dice = 2TP/(2TP+FP+FN) = 2 IoU / (1 + IoU) on the same counts
        metrics = {"val_loss": global_mean(self.loss_sum, self.count)[0], "miou": float(torch.nanmean(iou)),
                   "pixel_accuracy": float(self.acc.compute()), "dice": float(torch.nanmean(dice))}
        metrics.update({f"iou/{name}": float(v) for name, v in zip(self.task.classes, iou)})
        return metrics


class SegmentationTask:
    name = "segmentation"
    primary_metric = "miou"
    greater_is_better = True

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.classes = spec["classes"]
        self.ignore_index = spec["ignore_index"]
        self.criterion = CombinedLoss(spec["losses"], self.ignore_index)

    @staticmethod
    def normalization(model_cfg: dict[str, Any]):
        encoder = model_cfg.get("backbone") or "resnet18"
        return timm_normalization(encoder) if encoder.startswith("tu-") else (IMAGENET_MEAN, IMAGENET_STD)

    def build_model(self) -> nn.Module:
        return build_segmenter(self.spec)

    def make_sample(self, pixels, record, root, transform, index, for_eval: bool = False):
        h, w = pixels.shape[:2]
        mask = load_record_mask(root, record) if "mask" in record else rasterize_segments(record, h, w, self.ignore_index)
        out = transform(image=pixels, mask=mask)
        meta = {"index": index}
        if for_eval:  # metrics are computed at the ground truth's own size
            meta["mask"] = torch.as_tensor(mask)
        return out["image"], torch.as_tensor(out["mask"], dtype=torch.long), meta

    @staticmethod
    def collate(batch):
        images, masks, metas = zip(*batch)
        return torch.stack(images), torch.stack(masks), list(metas)

    @staticmethod
    def to_device(batch, runtime: Runtime):
        images, masks, metas = batch
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        return (images.to(runtime.device, non_blocking=True).contiguous(memory_format=fmt),
                masks.to(runtime.device, non_blocking=True), metas)

    @staticmethod
    def batch_size(batch) -> int:
        return batch[1].shape[0]

    def loss(self, model, batch) -> torch.Tensor:
        images, masks, _ = batch
        return self.criterion(model(images), masks)

    def evaluator(self, runtime: Runtime, keep_predictions: bool = False) -> SegmentationEvaluator:
        return SegmentationEvaluator(self, runtime.device, keep_predictions)
