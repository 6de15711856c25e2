"""Typed parameter blocks. Unknown keys are errors that name the key, as in kedro-mlflow's config.

The blocks every task shares live here; each task module defines its own config model (a subclass
of :class:`TaskConfig` with the task's data/evaluation blocks), so a key a task does not use is an
error for that task instead of a setting silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from visionpipe.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class BuiltinDataConfig(_Strict):
    """Size of the generated built-in dataset."""

    image_size: int = Field(64, ge=16, le=1024)
    train_images: int = Field(240, ge=2)
    val_images: int = Field(60, ge=1)
    num_classes: int = Field(6, ge=1, le=6)
    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(3, ge=1)
    seed: int = 0
    path: str = "data/01_raw/builtin"

    @model_validator(mode="after")
    def _objects(self):
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must not exceed max_objects")
        return self


class NearDuplicateConfig(_Strict):
    """Near-duplicate search (visionpipe.data.duplicates): perceptual-hash candidates, confirmed by pixels."""

    hash_bits: int = Field(4, ge=0, le=16)  # candidates: pHashes at most this many bits (of 64) apart
    max_pixel_difference: float = Field(0.09, ge=0.0, le=1.0)  # confirmed: aligned thumbnails nowhere further apart (0..1)


class DataConfig(_Strict):
    """What every task's ``data`` block has; tasks narrow ``format`` and add their own keys."""

    root: str | None = None
    format: str
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = 0  # seeds the val_fraction split of the user's data (the built-in data has builtin.seed)
    # hold out this share of the train split as a test split when the data has none (null: no test split)
    test_fraction: float | None = Field(None, gt=0.0, lt=1.0)
    classes: list[str] | None = None
    builtin: BuiltinDataConfig = BuiltinDataConfig()
    # validation policy: strict fails on the first bad file set, skip drops bad files and reports them
    validation: Literal["strict", "skip"] = "strict"
    max_image_pixels: int = Field(89_478_485, ge=1)
    # the same or nearly the same image in two splits: a warning finding, or fatal with "error"
    leakage: Literal["warn", "error"] = "warn"
    near_duplicates: NearDuplicateConfig = NearDuplicateConfig()
    # files named by annotations/lists that resolve outside data.root: a finding, unless allowed (then hashed into the lineage)
    allow_outside_root: bool = False
    num_workers: int | Literal["auto"] = "auto"
    # random: shuffle; balanced: draw images with probability inverse to their class frequency (DDP-aware)
    sampler: Literal["random", "balanced"] = "random"


class CocoFilesMixin(BaseModel):
    """COCO annotation files and image folders, relative to ``data.root``."""

    train_annotations: str = "annotations/instances_train.json"
    val_annotations: str = "annotations/instances_val.json"
    train_images: str = "images/train"
    val_images: str = "images/val"
    test_annotations: str = "annotations/instances_test.json"  # optional: read when the file exists
    test_images: str = "images/test"


class ModelConfig(_Strict):
    """``name`` is a timm model (classification), a detector (detection) or an smp architecture."""

    name: str
    backbone: str | None = None  # detection: timm backbone; segmentation: smp encoder (or tu-<timm>)
    # the architecture's published weights through timm / smp / torchvision (their hub cache); auto: on for a user's
    # data when the hub cache has them or they can be downloaded (else from scratch, said in the summary), off for
    # the built-in data
    pretrained: bool | Literal["auto"] = False
    pretrained_path: str | None = None  # a local weights file; used instead of the hub when set
    kwargs: dict[str, Any] = Field(default_factory=dict)


# loss weight per class: null (all 1), auto (inverse class frequency in the train split) or one positive number per class
ClassWeights = Literal["auto"] | list[Annotated[float, Field(gt=0)]] | None


class EmaConfig(_Strict):
    """Exponential moving average of the weights (timm's ModelEmaV3)."""

    enabled: bool = False
    decay: float = Field(0.9998, gt=0, lt=1)
    warmup: bool = True  # ramp the decay up over the first steps, so early weights are not averaged in for long


class TrainConfig(_Strict):
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(32, ge=1)
    image_size: int = Field(64, ge=16)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["none", "cosine", "step", "onecycle", "plateau"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0)  # step: lr factor every step_size epochs; plateau: lr factor on a plateau
    plateau_patience: int = Field(2, ge=0)  # plateau: epochs without improvement of the selection metric before lr x gamma
    freeze_backbone_epochs: int = Field(0, ge=0)  # backbone (BatchNorm statistics too) frozen for the first N epochs
    backbone_lr_scale: float = Field(1.0, gt=0)  # backbone learning rate = lr x backbone_lr_scale
    ema: EmaConfig = EmaConfig()
    patience: int | None = Field(None, ge=1)  # early stopping: epochs without improvement of the selection metric
    min_delta: float = Field(0.0, ge=0)  # early stopping: smaller changes of the selection metric are not improvements
    seed: int = 42
    device: Literal["auto", "cpu", "cuda", "mps"] | str = "auto"
    amp: bool | Literal["auto", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    grad_accum_steps: int = Field(1, ge=1)
    max_grad_norm: float | None = None
    resume: bool = False
    checkpoint_dir: str | None = None
    deterministic: bool = True
    log_every_n_steps: int = Field(50, ge=1)
    # batches drawn from images of similar width/height (torchvision references' GroupedBatchSampler); 0: off
    aspect_ratio_group_factor: int = Field(0, ge=0)
    close_mosaic_epochs: int = Field(0, ge=0)  # albumentations' Mosaic (in augment) is off for the last N epochs
    progress_bar: bool = True

    @model_validator(mode="after")
    def _plateau(self):
        if self.scheduler == "plateau" and self.warmup_epochs:
            raise ValueError("scheduler 'plateau' steps once an epoch on the selection metric and has no warm-up; set warmup_epochs: 0")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda", "mps") or value.startswith("cuda:"):
            return value
        raise ValueError(f"device must be auto, cpu, cuda, cuda:<n> or mps, got {value!r}")


class MultiScaleTrain(BaseModel):
    """``train.multi_scale``: null, or [min, max] input sizes in steps of 32 drawn per batch (tasks that support it)."""

    multi_scale: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _multi_scale(self):
        if self.multi_scale is not None:
            lo, hi = self.multi_scale
            if lo % 32 or hi % 32 or not 32 <= lo <= hi:
                raise ValueError(f"multi_scale must be [min, max] with multiples of 32 and 32 <= min <= max, got {list(self.multi_scale)}")
            if not lo <= self.image_size <= hi:
                raise ValueError(f"image_size {self.image_size} (the evaluation size) must lie within multi_scale {list(self.multi_scale)}")
        return self


class EvaluationConfig(_Strict):
    """Evaluation-time settings, read when the evaluation stage runs (not frozen at training)."""

    batch_size: int = Field(32, ge=1)


class TTAEvaluationConfig(EvaluationConfig):
    """Evaluation with test-time augmentation (classification, segmentation)."""

    tta: bool = False  # average the outputs of the image and its horizontal flip (evaluation, Predictor, pyfunc)


def flip_tta(model, images):
    """The mean of the model's outputs on ``images`` and on their horizontal flip (flipped back): logits of
    classifiers (flip-invariant) or per-pixel logits (flipped back along the width)."""
    out = model(images).float()
    flipped = model(images.flip(-1)).float()
    return (out + (flipped.flip(-1) if flipped.ndim == 4 else flipped)) / 2


class RegistryConfig(_Strict):
    # null: visionpipe-<task> for the built-in data, visionpipe-<task>-<data folder name> for a user's data
    model_name: str | None = None
    alias: str = "champion"
    metric: str  # also the metric that chooses the best epoch
    greater_is_better: bool | None = None  # null: lower is better for losses, higher for everything else
    enabled: bool = True
    onnx: bool = True  # the logged pyfunc carries model.onnx: ONNX Runtime is its CPU engine
    serve_file_paths: bool = False  # the served model also reads server-local image paths (off: base64 images only)

    @property
    def greater(self) -> bool:
        """Whether a higher ``metric`` is better."""
        if self.greater_is_better is not None:
            return self.greater_is_better
        return "loss" not in self.metric


class TaskConfig(_Strict):
    """A task's whole parameter block; task modules subclass it with their data/evaluation blocks."""


    data: DataConfig
    model: ModelConfig
    train: TrainConfig = TrainConfig()
    augment: list[dict[str, Any]] = Field(default_factory=list)
    evaluation: EvaluationConfig = EvaluationConfig()
    registry: RegistryConfig

    @model_validator(mode="after")
    def _close_mosaic(self):
        if self.train.close_mosaic_epochs and not any(isinstance(t, dict) and str(t.get("__class_fullname__", "")).split(".")[-1] == "Mosaic"
                                                      for t in self.augment):
            raise ValueError(f"train.close_mosaic_epochs is {self.train.close_mosaic_epochs} but augment has no Mosaic; set it to 0 or add Mosaic")
        return self



def _format_errors(block: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in (block, *e["loc"]))
        if e["type"] == "extra_forbidden":
            lines.append(f"  {where}: unknown key for {block} (check the spelling; see conf/base/parameters_{block}.yml)")
        else:
            lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def validate_task_params(task, params: dict[str, Any]) -> TaskConfig:
    """Validate a task's parameter block with the config model of ``task`` (a Task class, handed down by the
    caller: this module never looks tasks up); ConfigError names every bad key."""
    block = task.name
    if isinstance(params, task.config_model):
        return params
    try:
        cfg = task.config_model.model_validate(params)
    except ValidationError as err:
        raise ConfigError(f"Invalid parameters under '{block}':\n{_format_errors(block, err)}") from None
    if not task.is_metric(cfg.registry.metric):  # the metric that picks the best epoch and gates the champion
        known = ", ".join([*task.metric_names(), *([f"{task.per_class_metric}/<class>"] if task.per_class_metric else [])])
        raise ConfigError(f"Invalid parameters under '{block}':\n  {block}.registry.metric: unknown metric '{cfg.registry.metric}'; "
                          f"{block} evaluation reports {known} (prefix test/ to compare on the test split)")
    return cfg
