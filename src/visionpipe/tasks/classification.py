"""Image classification with timm models; top-1/top-k from torchmetrics."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks.base import close_matches, load_pretrained, pop_reset_head, timm_normalization


def build_classifier(model_cfg: dict[str, Any], num_classes: int, block: str = "classification") -> torch.nn.Module:
    import timm

    name = model_cfg["name"]
    kwargs, reset_head = pop_reset_head(model_cfg.get("kwargs") or {})
    if not timm.is_model(name):
        raise ConfigError(f"{block}.model.name: unknown timm model '{name}'.{close_matches(name, timm.list_models())}")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if model_cfg.get("pretrained_path"):
        load_pretrained(model, model_cfg["pretrained_path"], reset_head, block)
    return model


class ClassificationEvaluator:
    """Accumulates loss and top-1/top-k over a whole split (torchmetrics syncs them across DDP ranks)."""

    def __init__(self, num_classes: int, device: torch.device, keep_predictions: bool):
        self.k = min(5, num_classes)
        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
        self.topk = MulticlassAccuracy(num_classes, top_k=self.k, average="micro").to(device)
        self.loss_sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.keep = keep_predictions
        self.predictions: list[dict[str, Any]] = []

    def update(self, model, batch) -> None:
        images, labels, indices = batch
        logits = model(images).float()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        self.count += labels.numel()
        self.top1.update(logits, labels)
        self.topk.update(logits, labels)
        if self.keep:
            probs = logits.softmax(1)
            scores, classes = probs.topk(self.k, dim=1)
            for i, t, c, s in zip(indices.tolist(), labels.tolist(), classes.tolist(), scores.tolist()):
                self.predictions.append({"index": i, "target": t, "classes": c, "scores": s})

    def compute(self) -> dict[str, float]:
        from visionpipe.engine.distributed import all_gather_objects, global_mean

        if self.keep:  # under DDP each rank saw one shard of the split
            self.predictions = sorted((p for part in all_gather_objects(self.predictions) for p in part), key=lambda p: p["index"])
        return {"val_loss": global_mean(self.loss_sum, self.count)[0], "top1": self.top1.compute().item(), "top5": self.topk.compute().item()}


class ClassificationTask:
    name = "classification"
    primary_metric = "top1"
    greater_is_better = True

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.classes = spec["classes"]

    @staticmethod
    def normalization(model_cfg: dict[str, Any]):
        return timm_normalization(model_cfg["name"])

    def build_model(self) -> torch.nn.Module:
        return build_classifier(self.spec["model"], len(self.classes))

    @staticmethod
    def make_sample(pixels, record, root, transform, index, for_eval: bool = False):
        return transform(image=pixels)["image"], record["label"], index

    @staticmethod
    def collate(batch):
        images, labels, indices = zip(*batch)
        return torch.stack(images), torch.tensor(labels, dtype=torch.long), torch.tensor(indices, dtype=torch.long)

    @staticmethod
    def to_device(batch, runtime: Runtime):
        images, labels, indices = batch
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        images = images.to(runtime.device, non_blocking=True).contiguous(memory_format=fmt)
        return images, labels.to(runtime.device, non_blocking=True), indices

    @staticmethod
    def batch_size(batch) -> int:
        return batch[1].shape[0]

    @staticmethod
    def loss(model, batch) -> torch.Tensor:
        images, labels, _ = batch
        return F.cross_entropy(model(images), labels)

    def evaluator(self, runtime: Runtime, keep_predictions: bool = False) -> ClassificationEvaluator:
        return ClassificationEvaluator(len(self.classes), runtime.device, keep_predictions)

    @staticmethod
    def postprocess(logits: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        probs = logits.float().softmax(1)
        return probs.topk(min(k, probs.shape[1]), dim=1)
