"""Image classification with timm models; top-1/top-k from torchmetrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pydantic import Field

from visionpipe.config import ClassWeights, DataConfig, TaskConfig, TrainConfig, TTAEvaluationConfig, _Strict, flip_tta
from visionpipe.data import builtin, formats, gpu_decode
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks.base import (
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
from visionpipe.engine.distributed import all_gather_objects, global_mean
from visionpipe.engine.recipes import backbone_ids, class_counts, modules_except, resolve_class_weights, split_groups


class ClassificationData(DataConfig):
    format: Literal["imagefolder", "shards"] = "imagefolder"
    # cpu: workers decode and augment (albumentations); gpu: workers read bytes, JPEGs decoded on the device
    decode: Literal["cpu", "gpu"] = "cpu"


class ClassificationTrain(TrainConfig):
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    layer_decay: float | None = Field(None, gt=0, le=1)  # lr x layer_decay per layer from the head down (timm's groups)
    class_weights: ClassWeights = None


class AugmentBatchConfig(_Strict):
    """Batch-level mixing with timm's Mixup (off while both alphas are 0)."""

    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    prob: float = Field(1.0, ge=0, le=1)  # probability of mixing a batch
    switch_prob: float = Field(0.5, ge=0, le=1)  # with both alphas > 0: probability of cutmix instead of mixup
    off_epoch: int | None = Field(None, ge=0)  # from this epoch (0-based) on, no mixing (null: never off)


class ClassificationConfig(TaskConfig):
    data: ClassificationData
    evaluation: TTAEvaluationConfig = TTAEvaluationConfig()
    train: ClassificationTrain = ClassificationTrain()
    augment_batch: AugmentBatchConfig = AugmentBatchConfig()


def build_classifier(model_cfg: dict[str, Any], num_classes: int, block: str = "classification") -> torch.nn.Module:
    """A timm model with ``num_classes`` outputs; unknown names and kwargs are ConfigErrors."""
    import timm

    name = model_cfg["name"]
    kwargs, reset_head = pop_reset_head(model_cfg.get("kwargs") or {})
    if not timm.is_model(name):
        raise ConfigError(f"{block}.model.name: unknown timm model '{name}'.{close_matches(name, timm.list_models())}")
    hub = wants_hub_weights(model_cfg)

    def create():
        return call_with_model_kwargs(
            timm.create_model, kwargs, f"{block}.model.kwargs", model_name=name, pretrained=hub, num_classes=num_classes,
            accepted=lambda: signature_keys(type(timm.create_model(name, pretrained=False, num_classes=num_classes))),
        )

    # timm replaces a head sized for other classes itself when it loads published weights
    model = hub_weights(create, f"{block}.model.pretrained", f"timm model '{name}'") if hub else create()
    if model_cfg.get("pretrained_path"):
        load_pretrained(model, model_cfg["pretrained_path"], reset_head, block)
    if reset_head and (hub or model_cfg.get("pretrained_path")):
        # always a fresh classifier, also when the weights' head has as many classes as today's data (timm keeps it then)
        model.reset_classifier(num_classes)
    return model


class ClassificationEvaluator:
    """Accumulates loss and top-1/top-k over a whole split (torchmetrics syncs them across DDP ranks)."""

    def __init__(self, task: "ClassificationTask | int", device: torch.device, keep_predictions: bool):
        num_classes = task if isinstance(task, int) else len(task.classes)
        self.task = None if isinstance(task, int) else task
        self.num_classes = num_classes
        self.k = min(5, num_classes)
        # slow optional import: torchmetrics imports all its domains; a served model (no evaluation) never needs it
        from torchmetrics.classification import MulticlassAccuracy

        self.top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
        self.topk = MulticlassAccuracy(num_classes, top_k=self.k, average="micro").to(device)
        self.loss_sum = torch.zeros((), device=device)
        self.count = torch.zeros((), device=device)
        self.keep = keep_predictions
        self.predictions: list[dict[str, Any]] = []

    def update(self, model, batch) -> None:
        images, labels, metas = batch
        logits = (self.task.forward(model, images) if self.task is not None else model(images)).float()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        self.count += labels.numel()
        self.top1.update(logits, labels)
        self.topk.update(logits, labels)
        if self.keep:
            results = ClassificationTask.topk(logits, self.k)
            for meta, t, res in zip(metas, labels.tolist(), results):
                index = meta["index"] if isinstance(meta, dict) else int(meta)
                self.predictions.append({"index": index, "target": t, **res})

    def compute(self) -> dict[str, float]:
        if self.keep:  # under DDP each rank saw one shard of the split
            self.predictions = sorted((p for part in all_gather_objects(self.predictions) for p in part), key=lambda p: p["index"])
        metrics = {"val_loss": global_mean(self.loss_sum, self.count)[0], "top1": self.top1.compute().item()}
        if self.num_classes > 5:  # with 5 classes or fewer every label is among the top 5: top-5 would always be 1.0
            metrics["top5"] = self.topk.compute().item()
        return metrics


class ClassificationTask(Task):
    name = "classification"
    config_model = ClassificationConfig
    formats = {"imagefolder": lambda root, d: formats.read_imagefolder(root, d.val_fraction, d.split_seed, d.classes)}
    metrics = ("top1", "top5", "val_loss")  # top5 only with more than 5 classes
    primary_metric = "top1"
    table_metrics = ("top1", "top5")  # top5 only with more than 5 classes
    per_class_logits = True
    output_datasets = ("predictions",)
    plot_names = ("results", "confusion_matrix", "per_class_accuracy")
    history_plots = {"loss": ["train_loss", "val_loss"], "top1": ["top1"]}  # top5 exists with > 5 classes only

    @classmethod
    def normalization(cls, model_cfg: dict[str, Any]):
        return timm_normalization(model_cfg["name"])

    @classmethod
    def write_builtin(cls, root: Path, cfg: dict, rng: np.random.Generator) -> None:
        builtin.write_image_folders(root, cfg, rng)

    @classmethod
    def check_record(cls, root, rec, width, height, classes, data_cfg):
        if not 0 <= rec["label"] < len(classes):
            return [(str(root / rec["image"]), f"label {rec['label']} has no class in {classes}")]
        return []

    @classmethod
    def record_labels(cls, rec: dict) -> list[int]:
        return [rec["label"]]

    @classmethod
    def relabel(cls, rec, new_index):
        return {**rec, "label": new_index[rec["label"]]} if rec["label"] in new_index else None

    @classmethod
    def training_spec(cls, cfg, index):
        classes = index["classes"]
        weights = resolve_class_weights(cfg.train.class_weights, classes,
                                        lambda: class_counts((cls.record_labels(r) for r in index["train"]), len(classes)),
                                        "classification.train.class_weights")
        return {"label_smoothing": cfg.train.label_smoothing, "class_weights": weights, "augment_batch": cfg.augment_batch.model_dump()}

    def build_model(self) -> torch.nn.Module:
        return build_classifier(self.spec["model"], len(self.classes))

    def datasets(self, index: dict, aug: dict, cfg, eval_split: str = "val"):
        if cfg.data.decode == "gpu":  # workers read bytes; JPEGs decoded and augmented on the device

            return gpu_decode.device_decoding(self, index, aug, cfg, eval_split)
        return super().datasets(index, aug, cfg, eval_split)

    def backbone(self, model):
        """Everything but the classifier (timm's ``pretrained_cfg['classifier']``)."""
        head = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
        if not head:
            return None
        return modules_except(model, head)

    def param_groups(self, model, train_cfg):
        """Layer decay with timm's ``param_groups_layer_decay`` when ``train.layer_decay`` is set."""
        if getattr(train_cfg, "layer_decay", None) is None:
            return super().param_groups(model, train_cfg)
        from timm.optim import param_groups_layer_decay

        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_layer_decay(model, train_cfg.weight_decay, no_weight_decay_list=skip, layer_decay=train_cfg.layer_decay)
        return split_groups(groups, backbone_ids(self.backbone(model)), train_cfg.lr, train_cfg.backbone_lr_scale)

    def _mixup(self, epoch: int):
        cfg = self.spec.get("augment_batch") or {}
        if not (cfg.get("mixup_alpha") or cfg.get("cutmix_alpha")) or (cfg.get("off_epoch") is not None and epoch >= cfg["off_epoch"]):
            return None
        if getattr(self, "_mixer", None) is None:
            from timm.data import Mixup

            self._mixer = Mixup(mixup_alpha=cfg["mixup_alpha"], cutmix_alpha=cfg["cutmix_alpha"], prob=cfg["prob"],
                                switch_prob=cfg["switch_prob"], label_smoothing=self.spec.get("label_smoothing", 0.0),
                                num_classes=len(self.classes))
        return self._mixer

    def train_batch(self, batch, epoch: int):
        """Mixup / cutmix (timm's ``Mixup``) until ``augment_batch.off_epoch``: targets become soft (N, classes)."""
        mixer = self._mixup(epoch)
        if mixer is None:
            return batch
        images, labels, metas = batch
        even = len(labels) - len(labels) % 2  # timm mixes pairs; an odd last image keeps its own (smoothed) target
        mixed, soft = mixer(images[:even], labels[:even]) if even else (images[:0], labels.new_zeros((0, len(self.classes)), dtype=torch.float))
        if even < len(labels):
            from timm.data.mixup import mixup_target

            tail = mixup_target(labels[even:], len(self.classes), 1.0, mixer.label_smoothing)
            mixed, soft = torch.cat([mixed, images[even:]]), torch.cat([soft, tail])
        return mixed, soft, metas

    def make_sample(self, pixels, record, root, transform, index, for_eval: bool = False):
        return transform(image=pixels)["image"], record["label"], {"index": index}

    def loss(self, model, batch) -> torch.Tensor:
        """Cross-entropy with ``class_weights``; hard labels get ``label_smoothing``, soft targets (mixup,
        already smoothed by it) are used as they are, as timm's SoftTargetCrossEntropy does."""
        images, labels, _ = batch
        logits = model(images)
        weights = self.spec.get("class_weights")
        weight = torch.as_tensor(weights, dtype=torch.float, device=logits.device) if weights else None
        smoothing = 0.0 if labels.is_floating_point() else self.spec.get("label_smoothing", 0.0)
        return F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=smoothing)

    def forward(self, model, images):
        return flip_tta(model, images) if self.spec.get("evaluation", {}).get("tta") else model(images)

    def evaluator(self, runtime: Runtime, records: list[dict], keep_predictions: bool = False) -> ClassificationEvaluator:
        return ClassificationEvaluator(self, runtime.device, keep_predictions)

    @staticmethod
    def topk(logits: torch.Tensor, k: int = 5) -> list[dict[str, list]]:
        """Per image: the ``k`` best class indices and their softmax scores."""
        probs = logits.float().softmax(1)
        scores, classes = probs.topk(min(k, probs.shape[1]), dim=1)
        return [{"classes": c, "scores": s} for c, s in zip(classes.tolist(), scores.tolist())]

    def postprocess(self, outputs, original_sizes):
        return self.topk(outputs)

    def format_result(self, result):
        classes = self.classes
        return {"label": classes[result["classes"][0]], "score": float(result["scores"][0]),
                "top_labels": [classes[j] for j in result["classes"]], "top_scores": [float(v) for v in result["scores"]]}

    def prediction_outputs(self, index: dict, evaluator) -> dict[str, Any]:
        classes = index["classes"]
        rows = []
        for p in sorted(evaluator.predictions, key=lambda p: p["index"]):
            row = {"image": index["val"][p["index"]]["image"], "target": classes[p["target"]]}
            row.update({f"top{i + 1}": classes[c] for i, c in enumerate(p["classes"])})
            row.update({f"top{i + 1}": "" for i in range(len(p["classes"]), 5)})
            row["score"] = round(p["scores"][0], 6)
            rows.append(row)
        return {"predictions": pd.DataFrame(rows, columns=["image", "target", "top1", "top2", "top3", "top4", "top5", "score"])}

    @classmethod
    def plots(cls, outputs, index, history):
        from visionpipe import plots

        predictions = outputs["predictions"]
        return {"confusion_matrix": plots.confusion_matrix(predictions, index["classes"]),
                "per_class_accuracy": plots.per_class_accuracy(predictions, index["classes"]),
                "results": plots.results(history)}
