"""The task contract: the one place that knows what a task is.

A task is one module in ``visionpipe/tasks/`` holding a :class:`Task` subclass. The engine, the
pipelines, tracking, serving, export, the CLI and the data layer ask the task object; they never
branch on a task's name (``tests/test_task_contract.py`` greps for that). :class:`Task` is five roles;
each gives defaults, so a new task writes only the mandatory members (``mandatory()``: 15 of ~46;
``Task.missing()`` names what a class leaves out):

==============  ======================================================  ===================================
role            what it owns                                            mandatory
==============  ======================================================  ===================================
TaskData        class-level, before a spec exists: ``config_model``,    ``name``, ``formats``,
                readers by ``data.format``, built-in data, per-record   ``config_model``, ``write_builtin``
                ``check_record``, ``record_labels``/``relabel``,        (``relabel`` with ``record_labels``)
                ``make_spec``, metric names ``registry.metric`` may use
TaskSamples     ``compose`` (albumentations), ``make_sample`` (Mosaic   ``make_sample``
                donors where ``supports_mosaic``), ``collate``,
                ``to_device``, ``datasets``
TaskModel       ``build_model``, ``loss`` (a tensor or named terms),    ``build_model``, ``loss``
                ``forward`` (TTA included), fine-tuning: ``backbone``,
                ``param_groups``, ``train_batch``, ``training_spec``
TaskEvaluation  ``evaluator``, ONE ``postprocess(outputs, sizes)`` to   ``metrics``, ``primary_metric``,
                the original pixels (evaluation, Predictor, ONNX        ``output_datasets``, ``plot_names``,
                check), ``configure``, ``prediction_outputs``,          ``evaluator``, ``postprocess``,
                ``plots``, ``evaluation_figures`` (its own COCOeval)    ``prediction_outputs``, ``plots``
TaskServing     ``preprocess``/``stack`` for raw images,                none
                ``format_result``, ``inference_params``/
                ``apply_params``, ``export_onnx``/``onnx_forward``/
                ``compare_results``
==============  ======================================================  ===================================

Adding a task means adding its module, its ``conf/base/parameters_<task>.yml``, its catalog
entries for ``output_datasets``, its tests, a dvc.yaml stage and a README line.

A task may extend another task's class to reuse what they share (``instance_segmentation`` extends
``detection``: box-aware samples, collate, loss, NMS settings); importing that class into the module
is fine, since the task of a module is its one class whose ``name`` is the module's name.
"""

from __future__ import annotations

import abc
import difflib
import inspect
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import ValidationError

from visionpipe import models  # noqa: F401  (registers visionpipe's timm backbones, e.g. resnet10t_nano, for every task)
from visionpipe.config import flip_tta, validate_task_params
from visionpipe.data import transforms
from visionpipe.data.builtin import SHAPES
from visionpipe.data.datasets import IndexDataset
from visionpipe.data.shards import read_shards
from visionpipe.data.transforms import compose
from visionpipe.engine.checkpoint import load_weights
from visionpipe.engine.recipes import param_groups
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError, DataError, WeightsUnavailable

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def close_matches(name: str, options: list[str], n: int = 5) -> str:
    """A ' Close matches: a, b.' hint for an unknown name (empty when nothing is close)."""
    found = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    return f" Close matches: {', '.join(found)}." if found else ""


# the last class of a champion re-scored on other classes (see Task.per_class_logits): predicted when the
# champion's answer is a class today's data does not have; it has no images, so predicting it is always a miss
OTHER_CLASS = "\0a class of the champion that today's data does not have"


def timm_normalization(model_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std from timm's pretrained config for ``model_name`` (ImageNet defaults otherwise)."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(model_name.removeprefix("tu-"))
    except Exception:  # unknown or non-timm names fall back to ImageNet statistics
        cfg = None
    if cfg is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(cfg.mean or IMAGENET_MEAN), tuple(cfg.std or IMAGENET_STD)


def load_pretrained(model: torch.nn.Module, path: str, reset_head: bool, block: str) -> None:
    """Load local weights (safetensors or ``torch.load(weights_only=True)``); shape mismatches are errors.

    With ``reset_head`` the mismatching tensors (a classifier sized for other classes) keep their
    fresh initialisation instead.
    """
    state = load_weights(path)
    own = model.state_dict()
    mismatched = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and own[k].shape != v.shape}
    if mismatched and not reset_head:
        shown = "; ".join(f"{k}: file {a} vs model {b}" for k, (a, b) in list(mismatched.items())[:5])
        raise ConfigError(
            f"{path}: pretrained weights do not fit the model ({shown}). If only the head differs because the number "
            f"of classes changed, set {block}.model.kwargs.reset_head: true to re-initialise it"
        )
    usable = {k: v for k, v in state.items() if k in own and k not in mismatched}
    missing = [k for k in own if k not in usable]
    if not usable:
        raise ConfigError(f"{path}: no tensor in the file matches the model's parameter names; is it weights for {block}.model.name?")
    model.load_state_dict(usable, strict=False)
    logger.info("Loaded %d tensors from %s (%d left at initialisation%s)", len(usable), path, len(missing),
                f", head re-initialised: {sorted(mismatched)}" if mismatched else "")


def hub_weights(load: Callable[[], Any], where: str, what: str) -> Any:
    """Call a library's own pretrained-weights loader (timm / smp / torchvision, through their hub
    cache); a failure to get the weights (offline, not cached, no such weights) is a ConfigError
    saying how to get them."""
    try:
        return load()
    except ConfigError:
        raise
    except Exception as err:  # each library raises its own (OSError, LocalEntryNotFoundError, URLError, RuntimeError)
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        if first.startswith("No pretrained weights exist"):  # timm: the model has none published (e.g. resnet10t_nano)
            raise WeightsUnavailable(
                f"{where}: {what} has no published weights. For ImageNet weights on your data pick a model that has them "
                f"(e.g. resnet10t), or give {where.rsplit('.', 1)[0]}.pretrained_path") from None
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") else ""
        raise WeightsUnavailable(
            f"{where}: the published weights of {what} could not be loaded{offline}: {type(err).__name__}: {first}. "
            "Run once with network access so the library caches them (HF_HOME / TORCH_HOME), or download the weights file and "
            f"set {where.rsplit('.', 1)[0]}.pretrained_path to it (a local file that can be tracked with DVC)"
        ) from None


def wants_hub_weights(model_cfg: dict[str, Any]) -> bool:
    """Whether a model block asks for the library's published weights: ``pretrained: true`` without a
    ``pretrained_path`` (``auto`` is resolved before the model is built, see ``stages.build_initial_model``;
    left unresolved it means no download)."""
    return model_cfg.get("pretrained") is True and not model_cfg.get("pretrained_path")


def pop_reset_head(kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``model.kwargs`` without ``reset_head``, and its value."""
    kwargs = dict(kwargs)
    return kwargs, bool(kwargs.pop("reset_head", False))


_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def signature_keys(target: Callable) -> list[str]:
    """Keyword names a callable (or a class's ``__init__``) accepts."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return []
    return [name for name, p in params.items() if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def call_with_model_kwargs(factory: Callable, kwargs: dict[str, Any], where: str, accepted: Callable[[], list[str]] | None = None,
                           check_first: bool = False, **fixed):
    """Call a model factory with the user's ``model.kwargs``; a typo is a ConfigError naming the key.

    ``accepted`` lists the keys the model takes (default: the factory's signature). It is consulted
    on the error path, or before the call with ``check_first`` for factories that swallow unknown
    keyword arguments (``**kwargs`` passed on and ignored).
    """

    def reject(key: str):
        keys = sorted(k for k in (accepted() if accepted else signature_keys(factory)) if k not in fixed)
        listed = f" Accepted keys: {', '.join(keys)}." if keys else ""
        return ConfigError(f"{where}.{key}: not accepted by the model.{close_matches(key, keys)}{listed}")

    if check_first and kwargs:
        known = set(accepted() if accepted else signature_keys(factory))
        unknown = [k for k in kwargs if k not in known]
        if unknown:
            raise reject(unknown[0])
    try:
        return factory(**fixed, **kwargs)
    except TypeError as err:
        match = _UNEXPECTED.search(str(err))
        if not match or match.group(1) not in kwargs:
            raise
        raise reject(match.group(1)) from None


class FlipTTA(torch.nn.Module):
    """``flip_tta`` as a module, so an exported model averages the flips as the torch forward does."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return flip_tta(self.model, images)


class TaskData(abc.ABC):
    """Data role, all class-level (it runs before a model spec exists): the config model, the readers by
    ``data.format``, the built-in data, per-record checks and labels. Mandatory: ``name``, ``formats``,
    ``config_model``, :meth:`write_builtin` (and :meth:`relabel` where :meth:`record_labels` is given)."""

    name: ClassVar[str]
    formats: ClassVar[dict[str, Callable]]  # data.format -> reader(root, data_cfg) -> index parts
    config_model: ClassVar[type]

    # configuration
    @classmethod
    def parse_config(cls, params: dict[str, Any]):
        """Validate this task's parameter block (:func:`visionpipe.config.validate_task_params`)."""
        return validate_task_params(cls, params)

    @classmethod
    def metric_names(cls, classes: list[str] | None = None) -> list[str]:
        """Every metric ``registry.metric`` may name (per-class ones when ``classes`` is given)."""
        names = list(cls.metrics)
        if cls.per_class_metric and classes:
            names += [f"{cls.per_class_metric}/{c}" for c in classes]
        return names

    @classmethod
    def is_metric(cls, name: str) -> bool:
        """Whether ``name`` is a metric of this task (``test/<metric>`` and per-class names included)."""
        name = name.removeprefix("test/")
        return name in cls.metrics or bool(cls.per_class_metric and name.startswith(f"{cls.per_class_metric}/"))

    @classmethod
    def make_spec(cls, cfg, classes: list[str], category_ids: list[int] | None = None) -> dict[str, Any]:
        """Everything needed to rebuild the model and its preprocessing, saved beside the weights.

        ``category_ids``: the user's COCO category id of each class (``index["category_ids"]``), for
        tasks whose outputs speak the user's ids."""
        mean, std = cls.normalization(cfg.model.model_dump())
        return {"task": cls.name, "classes": list(classes), "model": cfg.model.model_dump(), "image_size": cfg.train.image_size,
                "mean": list(mean), "std": list(std), "evaluation": cfg.evaluation.model_dump()}

    @classmethod
    def evaluation_settings(cls, spec: dict[str, Any]):
        """``spec["evaluation"]`` as this task's evaluation model (``config_model``'s ``evaluation`` field): what
        training stored, or what ``stages.serving_bundle`` put there at evaluation; a ConfigError names a bad key."""
        model = cls.config_model.model_fields["evaluation"].annotation
        try:
            return model.model_validate(spec.get("evaluation") or {})
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"{cls.name} model spec: evaluation settings do not validate ({problems}); pass them under "
                              f"{cls.name}.evaluation, or re-run training to write the spec again") from None

    # data
    @classmethod
    def default_format(cls) -> str:
        """The format of the built-in data (the first reader)."""
        return next(iter(cls.formats))

    @classmethod
    def read(cls, root: Path, data_cfg) -> dict:
        """Read ``root`` in ``data_cfg.format``: ``{"classes", "train", "val", ["test"], "problems"}``."""
        if data_cfg.format == "shards":  # written by `visionpipe shard`: any task's data, as tar shards
            return read_shards(root, cls.name, data_cfg.classes)
        reader = cls.formats.get(data_cfg.format)
        if reader is None:
            raise DataError(root, f"format '{data_cfg.format}' is not available for {cls.name}",
                            f"Use one of {[*cls.formats, 'shards']} in {cls.name}.data.format")
        return reader(root, data_cfg)

    @classmethod
    def builtin_classes(cls, num_classes: int) -> list[str]:
        """Class names of the built-in data."""
        return list(SHAPES[:num_classes])

    @classmethod
    @abc.abstractmethod
    def write_builtin(cls, root: Path, cfg: dict, rng: np.random.Generator) -> None:
        """Write the built-in data under ``root`` in this task's default format."""
        raise NotImplementedError

    @classmethod
    def check_record(cls, root: Path, rec: dict, width: int, height: int, classes: list[str], data_cfg) -> list[tuple[str, str]]:
        """(file, problem) pairs for one decoded record beyond the image itself; empty when usable."""
        return []

    @classmethod
    def record_labels(cls, rec: dict) -> list[int] | None:
        """Class indices present in a record (None when the record does not say cheaply)."""
        return None

    @classmethod
    def relabel(cls, rec: dict, new_index: dict[int, int]) -> dict | None:
        """The record with class indices mapped through ``new_index`` (classes not in it removed), or None
        when nothing of the record is left. Needed where ``record_labels`` says what a record holds."""
        raise NotImplementedError


class TaskSamples(abc.ABC):
    """Samples role: augmentation pipelines and the torch samples and batches training and evaluation read.
    Mandatory: :meth:`make_sample`."""

    supports_mosaic: ClassVar[bool] = False  # make_sample takes donors for albumentations' Mosaic

    @classmethod
    def input_normalization(cls, mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """What the input transform applies; detectors normalise inside the model instead."""
        return tuple(mean), tuple(std)

    @classmethod
    def normalization(cls, model_cfg: dict[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The model's own input statistics."""
        return timm_normalization(model_cfg.get("backbone") or model_cfg["name"])

    @classmethod
    def compose(cls, augment: list[dict], image_size: int, mean, std, train: bool):
        """User augmentations (train only), then resize, normalisation and tensor conversion."""
        cls.check_mosaic(augment)
        return compose(augment, image_size, mean, std, train=train, block=cls.name)

    def datasets(self, index: dict, aug: dict, cfg, eval_split: str = "val"):
        """(the loop's task adapter, train dataset, ``eval_split`` dataset): decoded records through
        ``make_sample`` by default; a task may return another adapter (e.g. decoding on the device)."""
        train_tf, val_tf = transforms.from_dict(aug["train"]), transforms.from_dict(aug["val"])
        max_px = cfg.data.max_image_pixels
        mosaic_epochs = cfg.train.epochs - cfg.train.close_mosaic_epochs  # Mosaic (if in augment) is off from this epoch on
        return (self, IndexDataset(index, "train", train_tf, self.make_sample, cfg.train.seed, max_px, mosaic_epochs=mosaic_epochs),
                IndexDataset(index, eval_split, val_tf, self.make_sample, cfg.train.seed, max_px, for_eval=True))

    @classmethod
    def check_mosaic(cls, augment: list[dict]) -> None:
        """A ConfigError when ``augment`` holds albumentations' Mosaic and the task cannot feed it donor images."""
        if not cls.supports_mosaic and any(isinstance(t, dict) and t.get("__class_fullname__", "").split(".")[-1] == "Mosaic" for t in augment):
            raise ConfigError(f"{cls.name}.augment: Mosaic needs donor images with their annotations, which only detection provides; "
                              "remove it from this task's augment list")

    @abc.abstractmethod
    def make_sample(self, pixels: np.ndarray, record: dict, root: Path, transform, index: int, for_eval: bool = False):
        """(input tensor, target, meta) for one decoded image. Tasks with ``supports_mosaic`` also take
        ``donors``: a list of (pixels, record) of other images of the split for albumentations' Mosaic."""
        raise NotImplementedError

    @staticmethod
    def collate(batch):
        """(image, target, meta) samples to (images, targets, metas): images and targets stacked."""
        images, targets, metas = zip(*batch)
        stacked = torch.stack(targets) if isinstance(targets[0], torch.Tensor) else torch.as_tensor(targets)
        return torch.stack(images), stacked, list(metas)

    @staticmethod
    def to_device(batch, runtime: Runtime):
        images, targets, metas = batch
        fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
        return images.to(runtime.device, non_blocking=True).contiguous(memory_format=fmt), targets.to(runtime.device, non_blocking=True), metas

    @staticmethod
    def batch_size(batch) -> int:
        return len(batch[0])


class TaskModel(abc.ABC):
    """Model role: the network, its loss, its inference forward and what fine-tuning needs of it. Mandatory:
    :meth:`build_model`, :meth:`loss`."""

    @abc.abstractmethod
    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def build_for_weights(self) -> torch.nn.Module:
        """The architecture with fresh weights, to load a saved state dict into: no published weights are fetched
        and no ``pretrained_path`` is read (evaluation, serving, re-scoring)."""
        return type(self)({**self.spec, "model": {**self.spec["model"], "pretrained": False, "pretrained_path": None}}).build_model()

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, batch) -> torch.Tensor | dict[str, torch.Tensor]:
        """The training loss, or a dict of named terms: the trainer sums them, and records each as
        ``train_<term>`` beside ``train_loss`` (history.csv, MLflow)."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, images: torch.Tensor):
        """The inference forward on a stacked batch of preprocessed images."""
        return model(images)

    # fine-tuning
    def backbone(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """The pretrained feature extractor inside ``model`` (None: the task names no backbone)."""
        return None

    def param_groups(self, model: torch.nn.Module, train_cfg) -> list[dict[str, Any]]:
        """Optimizer parameter groups; each has ``lr`` and ``name`` (``backbone`` or ``head``)."""
        return param_groups(model, self.backbone(model), train_cfg)

    def train_batch(self, batch, epoch: int):
        """Batch-level augmentation of a training batch already on the device (default: none)."""
        return batch

    @classmethod
    def training_spec(cls, cfg, index: dict) -> dict[str, Any]:
        """Loss settings resolved from the train split (``class_weights: auto``...), added to the spec."""
        return {}


class TaskEvaluation(abc.ABC):
    """Evaluation role: the evaluator and its metric names, the ONE post-processing to the original pixels, what
    evaluation writes and plots. Mandatory: ``metrics``, ``primary_metric``, ``output_datasets``, ``plot_names``,
    :meth:`evaluator`, :meth:`postprocess`, :meth:`prediction_outputs`, :meth:`plots`."""

    metrics: ClassVar[tuple[str, ...]]  # scalar metric names the evaluator returns
    per_class_metric: ClassVar[str | None] = None  # "ap" -> metrics "ap/<class name>"
    primary_metric: ClassVar[str]
    # the few metrics of tables that list many runs, at most 120 columns for the four tasks: metrics.json
    # (`dvc metrics show`, `dvc exp show`) and the MLflow runs list's columns; empty: the primary metric alone
    table_metrics: ClassVar[tuple[str, ...]] = ()
    output_datasets: ClassVar[tuple[str, ...]]  # what evaluation writes besides metrics (catalog names)
    plot_names: ClassVar[tuple[str, ...]]
    evaluation_plots: ClassVar[tuple[str, ...]] = ()  # the plot_names drawn by evaluation_figures, from the evaluator
    history_plots: ClassVar[dict[str, list[str]]] = {}  # dvc.yaml plots: name -> history.csv columns against epoch
    # the model's output holds one logit per class on dim 1 (classifiers, per-pixel segmenters): a champion trained
    # on other classes is re-scored by mapping its outputs to today's classes by name, plus a last OTHER_CLASS column
    # for "one of the champion's classes that today's data does not have" (always a miss). Other tasks (detectors)
    # are re-scored with their class rows re-indexed: a class the champion never learnt never fires.
    per_class_logits: ClassVar[bool] = False


    def configure(self, model: torch.nn.Module, evaluation) -> None:
        """Apply evaluation-time settings (the task's typed evaluation model: thresholds...) to a built model."""

    @abc.abstractmethod
    def evaluator(self, runtime: Runtime, records: list[dict], keep_predictions: bool = False):
        raise NotImplementedError

    @abc.abstractmethod
    def postprocess(self, outputs, original_sizes: list[tuple[int, int]]) -> list[dict[str, Any]]:
        """Network outputs to one result per image, in that image's original (height, width) pixels."""
        raise NotImplementedError

    @abc.abstractmethod
    def prediction_outputs(self, index: dict, evaluator) -> dict[str, Any]:
        """The datasets evaluation writes besides metrics, keyed by ``output_datasets``."""
        raise NotImplementedError

    @classmethod
    def evaluation_figures(cls, evaluator) -> dict[str, Any]:
        """Figures keyed by ``evaluation_plots``, drawn in the evaluation node from what the evaluator computed
        (detection: its COCOeval), so nothing is evaluated twice; the other ``plot_names`` come from :meth:`plots`."""
        return {}

    @classmethod
    @abc.abstractmethod
    def plots(cls, outputs: dict[str, Any], index: dict, history) -> dict[str, Any]:
        """Figures keyed by ``plot_names``."""
        raise NotImplementedError


class TaskServing:
    """Serving role: raw images in, JSON-ready rows out, prediction-time parameters, ONNX export. Every method has
    a default that fits a model taking one stacked batch of images."""

    def eval_image_size(self) -> int:
        """The input size evaluation and serving resize to (``image_size`` unless the task slides windows)."""
        return self.spec["image_size"]

    def preprocess(self, pixels: np.ndarray, transform) -> torch.Tensor:
        """One decoded HxWx3 image to the network's input tensor (serving path)."""
        return transform(image=pixels)["image"]

    @staticmethod
    def stack(tensors: list[torch.Tensor]):
        """Preprocessed images as the batch ``forward`` takes (a stacked tensor; detection: a list)."""
        return torch.stack(tensors)

    def format_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """One postprocessed result as a JSON-ready row (pyfunc, ``visionpipe predict``)."""
        return result

    @classmethod
    def inference_params(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """Parameters a caller may pass at prediction time (the pyfunc's params schema), with their defaults."""
        return {}

    @classmethod
    def apply_params(cls, row: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """A formatted row under the caller's ``inference_params``."""
        return row

    @staticmethod
    def compare_results(want: dict[str, Any], got: dict[str, Any], tol: float = 1e-3) -> str | None:
        """None when two postprocessed results agree (the ONNX check), else what differs."""
        for key, value in want.items():
            a, b = np.asarray(value, dtype=np.float64), np.asarray(got[key], dtype=np.float64)
            if a.shape != b.shape or not np.allclose(a, b, atol=tol, rtol=tol):
                diff = np.abs(a - b).max() if a.shape == b.shape else f"shapes {a.shape} vs {b.shape}"
                return f"'{key}' ({diff})"
        return None

    def export_onnx(self, model: torch.nn.Module, output: Path) -> None:
        """Export: input ``images`` (N, 3, S, S) normalised as spec.json says; output ``logits`` (with
        ``evaluation.tta``, the flip-averaged logits :meth:`forward` computes)."""
        size = self.spec["image_size"]
        if getattr(self.evaluation, "tta", False):  # the tasks whose evaluation model is a TTAEvaluationConfig
            model = FlipTTA(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(model, (torch.randn(2, 3, size, size),), str(output), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)

    def onnx_forward(self, session, images: torch.Tensor):
        """The same outputs as :meth:`forward`, computed by an onnxruntime session."""
        return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


class Task(TaskData, TaskSamples, TaskModel, TaskEvaluation, TaskServing):
    """Base class of every task; see the module docstring for the contract.

    Instances wrap a model *spec* (``spec.json`` beside the weights): ``task``, ``classes``,
    ``model``, ``image_size``, ``mean``/``std`` and whatever the task adds in :meth:`make_spec`.
    """

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.classes: list[str] = list(spec["classes"])
        # the evaluation and serving settings as the task's typed model, validated again on load: code reads
        # attributes (``self.evaluation.tile``), never ``spec["evaluation"][...]`` with a default repeated by hand
        self.evaluation = type(self).evaluation_settings(spec)

    @classmethod
    def missing(cls) -> list[str]:
        """What this task class leaves out of the contract: mandatory methods it does not implement and mandatory
        attributes it does not set (empty for a complete task; ``tests/test_task_contract.py`` checks)."""
        attrs = [a for a in MANDATORY_ATTRIBUTES if not getattr(cls, a, None)]
        relabel = ["relabel"] if "record_labels" in _own(cls) and "relabel" not in _own(cls) else []
        return sorted({*cls.__abstractmethods__, *attrs, *relabel})


MANDATORY_ATTRIBUTES = ("name", "formats", "config_model", "metrics", "primary_metric", "output_datasets", "plot_names")


def _own(cls) -> set[str]:
    """Names defined by ``cls`` or a task class it extends (not by the roles)."""
    return {n for k in cls.__mro__ if issubclass(k, Task) and k is not Task for n in vars(k)}


def mandatory() -> list[str]:
    """Every name a new task must provide: the roles' abstract methods and the mandatory attributes."""
    return sorted({*Task.__abstractmethods__, *MANDATORY_ATTRIBUTES})
