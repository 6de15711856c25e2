"""Fine-tuning recipes (issue 11): each tested for what it does, on tiny models and data."""

from __future__ import annotations

import pytest
import torch

from support import task_params
from visionpipe import stages
from visionpipe.tasks import parse_task_config
from visionpipe.data.datasets import BalancedSampler
from visionpipe.engine import recipes
from visionpipe.engine.checkpoint import load_checkpoint
from visionpipe.engine.runtime import resolve_runtime
from visionpipe.engine.trainer import Callback, Trainer, build_optimizer, build_scheduler
from visionpipe.errors import ConfigError
from visionpipe.tasks import get_task
from visionpipe.tasks.classification import ClassificationEvaluator, ClassificationTask, build_classifier

NO_SCHEDULE = {"scheduler": "none", "warmup_epochs": 0}
SMALL = {"builtin": {"train_images": 8, "val_images": 6}}  # for scripted metrics: the data only has to flow


def _prepare(tmp_path, task="classification", **override):
    cfg = parse_task_config(task, task_params(task, tmp_path, **override))
    index = stages.ingest(task, cfg)
    return cfg, index, stages.augmentation(task, cfg)


def _trainer(cfg, index, aug, task="classification", callbacks=(), **kwargs):
    spec = stages.make_spec(task, cfg, index["classes"])
    spec.update(type(get_task(spec)).training_spec(cfg, index))
    task_obj = get_task(spec)
    _, train_ds, val_ds = task_obj.datasets(index, aug, cfg)
    trainer = Trainer(task_obj, task_obj.build_model(), cfg.train, resolve_runtime(cfg.train, cfg.data), None, list(callbacks),
                      records=index["val"], selection=(cfg.registry.metric, cfg.registry.greater), **kwargs)
    return trainer, train_ds, val_ds


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- freezing and parameter groups

def _head_state(trainer):
    inside = {id(p) for p in trainer.backbone.parameters()}
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if id(p) not in inside}


@pytest.mark.slow  # trains
@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_frozen_backbone_is_unchanged_bit_for_bit_then_trains(tmp_path, task):
    cfg, index, aug = _prepare(tmp_path, task, train={"epochs": 2, "freeze_backbone_epochs": 1, **NO_SCHEDULE})
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, metrics):
            snapshots.append((_state(trainer.backbone), _head_state(trainer)))

    trainer, train_ds, val_ds = _trainer(cfg, index, aug, task, callbacks=[Snapshot()])
    backbone0, head0 = _state(trainer.backbone), _head_state(trainer)
    assert any("running_mean" in k for k in backbone0)  # BatchNorm statistics are part of what must not move
    trainer.fit(train_ds, val_ds)
    (backbone1, head1), (backbone2, _) = snapshots
    assert _equal(backbone0, backbone1)  # parameters and BN running stats untouched while frozen
    assert not _equal(head0, head1)  # the rest trained
    changed = [k for k in backbone1 if not torch.equal(backbone1[k], backbone2[k])]
    assert any(k.endswith("weight") for k in changed) and any("running_mean" in k for k in changed)


def test_each_task_names_its_backbone(tmp_path):
    from visionpipe.models.rtdet import PAFPN
    from visionpipe.tasks.detection import DetectionTask
    from visionpipe.tasks.segmentation import SegmentationTask

    cls_cfg, cls_index, _ = _prepare(tmp_path)
    task = get_task(stages.make_spec("classification", cls_cfg, cls_index["classes"]))
    model = task.build_model()
    backbone, head = {id(p) for p in task.backbone(model).parameters()}, {id(p) for p in model.get_classifier().parameters()}
    assert not backbone & head and backbone | head == {id(p) for p in model.parameters()}

    seg_cfg = parse_task_config("segmentation", task_params("segmentation"))
    seg = get_task(stages.make_spec("segmentation", seg_cfg, ["bg", "a"]))
    seg_model = seg.build_model()
    assert isinstance(seg, SegmentationTask) and seg.backbone(seg_model) is seg_model.encoder

    det_cfg = parse_task_config("detection", task_params("detection"))
    det = get_task(stages.make_spec("detection", det_cfg, ["a"]))
    det_model = det.build_model()
    assert isinstance(det, DetectionTask) and isinstance(det_model.backbone, PAFPN)  # the default detector is rtdet
    assert det.backbone(det_model) is det_model.backbone.body  # the timm body; the FPN and heads are trained from the start


def test_backbone_group_has_scaled_lr_and_groups_cover_the_model(tmp_path):
    cfg, index, aug = _prepare(tmp_path, train={"backbone_lr_scale": 0.1, "lr": 0.01})
    task = get_task(stages.make_spec("classification", cfg, index["classes"]))
    model = task.build_model()
    groups = task.param_groups(model, cfg.train)
    head = {id(p) for p in model.get_classifier().parameters()}
    for g in groups:
        assert g["lr"] == pytest.approx(0.01 * (0.1 if g["name"] == "backbone" else 1.0))
        assert all((id(p) in head) == (g["name"] == "head") for p in g["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    optimizer = build_optimizer(model, cfg.train, groups)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == {"backbone": pytest.approx(0.001), "head": pytest.approx(0.01)}
    # onecycle keeps the ratio: one max_lr per group
    sched = build_scheduler(optimizer, cfg.train.model_copy(update={"scheduler": "onecycle"}), 4)
    assert [g["max_lr"] for g in optimizer.param_groups] == pytest.approx([0.001 if g["name"] == "backbone" else 0.01 for g in groups])
    del sched


def test_layer_decay_uses_timms_groups(tmp_path):
    from timm.optim import param_groups_layer_decay

    cfg, index, aug = _prepare(tmp_path, train={"layer_decay": 0.5, "backbone_lr_scale": 0.5, "lr": 0.01})
    task = get_task(stages.make_spec("classification", cfg, index["classes"]))
    model = task.build_model()
    reference = param_groups_layer_decay(model, cfg.train.weight_decay, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in reference for p in g["params"]}
    head = {id(p) for p in model.get_classifier().parameters()}
    groups = task.param_groups(model, cfg.train)
    assert len({g["lr"] for g in groups}) > 3  # several layers, several rates
    for g in groups:
        for p in g["params"]:
            assert g["lr"] == pytest.approx(0.01 * scale_of[id(p)] * (1.0 if id(p) in head else 0.5))


def test_backbone_settings_need_a_backbone():
    class NoBackbone:
        name = "toy"
        primary_metric = "top1"

        def backbone(self, model):
            return None

    cfg = parse_task_config("classification", task_params("classification", train={"freeze_backbone_epochs": 1}))
    with pytest.raises(ConfigError, match="freeze_backbone_epochs"):
        Trainer(NoBackbone(), torch.nn.Linear(2, 2), cfg.train, resolve_runtime(cfg.train, cfg.data))


# ---------------------------------------------------------------- EMA

@pytest.mark.slow  # trains
def test_ema_weights_are_evaluated_chosen_and_saved(tmp_path):
    cfg, index, aug = _prepare(tmp_path, train={"epochs": 2, "ema": {"enabled": True, "decay": 0.9, "warmup": False},
                                               "checkpoint_dir": str(tmp_path / "ck")})
    bundle, history = stages.train("classification", index, aug, cfg, callbacks=[])
    ckpt = load_checkpoint(tmp_path / "ck" / "last.pt")
    raw, ema = ckpt["model"], ckpt["ema"]
    assert not _equal(raw, ema)  # the average differs from the raw weights
    assert _equal(bundle["state_dict"], ema) or bundle["spec"]["best_epoch"] == 1
    best = history[bundle["spec"]["best_epoch"] - 1]  # epochs count from 1

    def val_loss(state):
        cfg_eval = cfg.model_copy(update={"train": cfg.train.model_copy(update={"ema": cfg.train.ema.model_copy(update={"enabled": False})})})
        metrics, _, _ = stages.evaluate("classification", index, aug, {"spec": bundle["spec"], "state_dict": state}, cfg_eval)
        return metrics["val_loss"]

    assert val_loss(bundle["state_dict"]) == pytest.approx(best["val_loss"], rel=1e-5)  # what was evaluated is what is saved
    assert val_loss(raw) != pytest.approx(history[-1]["val_loss"], rel=1e-6)  # and it was not the raw model


class _StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, epoch, metrics):
        raise KeyboardInterrupt("killed")


@pytest.mark.slow  # trains
def test_resume_with_ema_equals_an_uninterrupted_run(tmp_path):
    ema = {"enabled": True, "decay": 0.95, "warmup": True}
    full_cfg, index, aug = _prepare(tmp_path, data={"builtin": {"train_images": 16, "val_images": 6}},
                                    train={"epochs": 2, "ema": ema, "checkpoint_dir": str(tmp_path / "full")})
    full_bundle, full_hist = stages.train("classification", index, aug, full_cfg, callbacks=[])
    cut_cfg = full_cfg.model_copy(update={"train": full_cfg.train.model_copy(update={"checkpoint_dir": str(tmp_path / "cut")})})
    with pytest.raises(KeyboardInterrupt):
        stages.train("classification", index, aug, cut_cfg, callbacks=[_StopAfterFirstEpoch()])
    resume_cfg = cut_cfg.model_copy(update={"train": cut_cfg.train.model_copy(update={"resume": True})})
    resumed_bundle, resumed_hist = stages.train("classification", index, aug, resume_cfg, callbacks=[])
    keys = ("train_loss", "val_loss", "top1")
    assert [[h[k] for k in keys] for h in resumed_hist] == [[h[k] for k in keys] for h in full_hist]
    assert _equal(resumed_bundle["state_dict"], full_bundle["state_dict"])
    assert _equal(load_checkpoint(tmp_path / "cut" / "last.pt")["ema"], load_checkpoint(tmp_path / "full" / "last.pt")["ema"])


# ---------------------------------------------------------------- early stopping and plateau

def test_early_stopping_on_a_scripted_sequence():
    stop = recipes.EarlyStopping(patience=2, min_delta=0.01, greater=True)
    assert [stop.step(e, s) for e, s in enumerate([0.1, 0.5, 0.505, 0.49, 0.9])] == [False, False, False, True, False]
    low = recipes.EarlyStopping(patience=1, min_delta=0.0, greater=False)
    assert [low.step(e, s) for e, s in enumerate([1.0, 0.9, 0.95])] == [False, False, True]
    never = recipes.EarlyStopping(patience=None, min_delta=0.0, greater=True)
    assert not any(never.step(e, 0.0) for e in range(10))


def _scripted_top1(monkeypatch, values):
    calls = iter(values)
    original = ClassificationEvaluator.compute

    def compute(self):
        return {**original(self), "top1": next(calls)}

    monkeypatch.setattr(ClassificationEvaluator, "compute", compute)


@pytest.mark.slow  # trains
def test_patience_stops_training_and_reports_the_stop(tmp_path, monkeypatch):
    cfg, index, aug = _prepare(tmp_path, data=SMALL, train={"epochs": 8, "patience": 2, "min_delta": 0.01, "checkpoint_dir": str(tmp_path / "ck")})
    _scripted_top1(monkeypatch, [0.1, 0.5, 0.505, 0.49, 0.9, 0.9, 0.9, 0.9])
    events = []

    class Spy(Callback):
        def on_early_stop(self, epoch, best_epoch):
            events.append((epoch, best_epoch))

    bundle, history = stages.train("classification", index, aug, cfg, callbacks=[Spy()])
    assert len(history) == 4 and events == [(4, 3)]  # no improvement > 0.01 after epoch 3: stop after epoch 4 (1-based)
    assert history[-1]["early_stop_epoch"] == 4 and history[-1]["early_stop_best_epoch"] == 3
    assert bundle["spec"]["best_epoch"] == 3
    # a resumed run does not train past the stop
    resumed, resumed_history = stages.train("classification", index, aug,
                                            cfg.model_copy(update={"train": cfg.train.model_copy(update={"resume": True})}), callbacks=[])
    assert len(resumed_history) == 4 and _equal(resumed["state_dict"], bundle["state_dict"])


@pytest.mark.slow  # trains
def test_plateau_scheduler_lowers_lr_on_the_selection_metric(tmp_path, monkeypatch):
    cfg, index, aug = _prepare(tmp_path, data=SMALL, train={"epochs": 4, "scheduler": "plateau", "warmup_epochs": 0, "plateau_patience": 1,
                                               "gamma": 0.5, "lr": 0.01})
    _scripted_top1(monkeypatch, [0.5, 0.5, 0.5, 0.5])
    _, history = stages.train("classification", index, aug, cfg, callbacks=[])
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.01, 0.01, 0.005])


def test_plateau_rejects_warmup():
    with pytest.raises(ConfigError, match="plateau"):
        parse_task_config("classification", task_params("classification", train={"scheduler": "plateau", "warmup_epochs": 1}))


# ---------------------------------------------------------------- losses and batch mixing

def _task(**spec_extra):
    return ClassificationTask({"classes": ["a", "b", "c", "d"], "model": {"name": "resnet10t"}, **spec_extra})


def test_mixup_gives_soft_targets_and_stops_at_off_epoch():
    from timm.loss import SoftTargetCrossEntropy

    task = _task(label_smoothing=0.1, augment_batch={"mixup_alpha": 0.4, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5,
                                                     "off_epoch": 2})
    torch.manual_seed(0)
    images, labels = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0])
    mixed, soft, _ = task.train_batch((images.clone(), labels, [{}] * 5), epoch=1)
    assert soft.shape == (5, 4) and torch.allclose(soft.sum(1), torch.ones(5))
    assert (soft[:4].max(1).values < 0.95).any()  # mixed pairs: no longer one-hot
    assert torch.allclose(soft[4], torch.tensor([0.925, 0.025, 0.025, 0.025]))  # the odd one out keeps its smoothed label
    assert not torch.equal(mixed[:4], images[:4])

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
    assert task.loss(model, (mixed, soft, None)).item() == pytest.approx(SoftTargetCrossEntropy()(model(mixed), soft).item(), rel=1e-6)

    after = task.train_batch((images, labels, [{}] * 5), epoch=2)
    assert after[1] is labels and after[0] is images  # off from off_epoch on


def test_label_smoothing_and_class_weights_in_the_loss():
    from timm.loss import LabelSmoothingCrossEntropy

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images, labels = torch.randn(6, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0, 1])
    smoothed = _task(label_smoothing=0.2).loss(model, (images, labels, None))
    assert smoothed.item() == pytest.approx(LabelSmoothingCrossEntropy(0.2)(model(images), labels).item(), rel=1e-5)
    weights = [1.0, 2.0, 0.5, 1.0]
    weighted = _task(class_weights=weights).loss(model, (images, labels, None))
    logp = model(images).log_softmax(1)
    w = torch.tensor(weights)[labels]
    assert weighted.item() == pytest.approx((-(w * logp[torch.arange(6), labels]).sum() / w.sum()).item(), rel=1e-5)


def test_class_weights_auto_are_inverse_frequency():
    assert recipes.inverse_frequency([1, 3]) == pytest.approx([1.5, 0.5])  # 1/f normalised to mean 1
    assert recipes.inverse_frequency([2, 0, 2]) == pytest.approx([1.0, 0.0, 1.0])
    index = {"classes": ["a", "b"], "train": [{"label": 0}] + [{"label": 1}] * 3}
    cfg = parse_task_config("classification", task_params("classification", train={"class_weights": "auto"}))
    assert ClassificationTask.training_spec(cfg, index)["class_weights"] == pytest.approx([1.5, 0.5])
    with pytest.raises(ConfigError, match="2 weights given for 3 classes"):
        recipes.resolve_class_weights([1.0, 2.0], ["a", "b", "c"], lambda: [1, 1, 1], "classification.train.class_weights")


def test_segmentation_class_weights_auto_from_pixels_weight_the_ce_term(tmp_path):
    cfg, index, aug = _prepare(tmp_path, "segmentation", train={"class_weights": "auto"})
    from visionpipe.tasks.segmentation import SegmentationTask

    counts = SegmentationTask.pixel_counts(index, cfg.data.ignore_index)
    weights = SegmentationTask.training_spec(cfg, index)["class_weights"]
    assert weights == pytest.approx(recipes.inverse_frequency(counts)) and counts[0] > max(counts[1:])  # background dominates
    assert weights[0] < min(weights[1:])
    task = get_task({**stages.make_spec("segmentation", cfg, index["classes"]), "class_weights": weights})
    assert torch.allclose(task.criterion.terms[0].weight, torch.tensor(weights, dtype=torch.float))
    with pytest.raises(ConfigError, match="class_weights"):
        parse_task_config("segmentation", task_params("segmentation", train={"class_weights": "auto"}, losses=[{"name": "dice"}]))


# ---------------------------------------------------------------- sampling

def test_balanced_sampler_draws_each_class_equally_and_shards_for_ddp():
    labels = [[0]] * 900 + [[1]] * 90 + [[2]] * 10
    weights = recipes.balanced_sample_weights(labels, 3)
    sampler = BalancedSampler(weights, seed=3)
    sampler.set_epoch(1)
    drawn = [i for i, epoch in sampler]
    assert len(drawn) == 1000 and all(epoch == 1 for _, epoch in sampler)
    share = torch.bincount(torch.tensor([labels[i][0] for i in drawn]), minlength=3).float() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.05)
    ranks = [list(BalancedSampler(weights, seed=3, rank=r, world_size=2)) for r in range(2)]
    for r in ranks:
        assert len(r) == 500
    whole = [i for i, _ in BalancedSampler(weights, seed=3, world_size=1)]
    assert sorted(i for r in ranks for i, _ in r) == sorted(whole)  # the ranks split one draw, no overlap in positions


def test_balanced_sampler_is_used_for_training(tmp_path):
    cfg, index, aug = _prepare(tmp_path, data={"sampler": "balanced"})
    weights = stages.sample_weights("classification", index, cfg)
    trainer, train_ds, val_ds = _trainer(cfg, index, aug, sample_weights=weights)
    _, _, sampler = trainer.loaders(train_ds, val_ds)
    assert isinstance(sampler, BalancedSampler) and len(weights) == len(index["train"])
    with pytest.raises(ConfigError, match="sampler"):
        parse_task_config("segmentation", task_params("segmentation", data={"sampler": "balanced"}))


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("task, block", [("detection", {"train": {"label_smoothing": 0.1}}),
                                         ("segmentation", {"augment_batch": {"mixup_alpha": 0.2}}),
                                         ("detection", {"train": {"class_weights": "auto"}})])
def test_keys_a_task_does_not_use_are_rejected(task, block):
    with pytest.raises(ConfigError, match="unknown key"):
        parse_task_config(task, task_params(task, **block))


# ---------------------------------------------------------------- pretrained weights

@pytest.fixture
def offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and empty hub caches (huggingface_hub reads its settings at import: patch them too)."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))


def _build(library: str):
    from visionpipe.tasks.detection import build_detector
    from visionpipe.tasks.segmentation import build_segmenter

    if library == "timm":
        return build_classifier({"name": "resnet10t", "pretrained": True}, 3)
    if library == "smp":
        return build_segmenter({"model": {"name": "Unet", "backbone": "resnet18", "pretrained": True}, "classes": ["a", "b"]})
    detector = {"name": "fasterrcnn_mobilenet_v3_large_320_fpn"} if library == "torchvision" else {"name": "fcos", "backbone": "resnet18"}
    spec = {"model": {**detector, "pretrained": True}, "classes": ["a"], "image_size": 64, "mean": [0.5] * 3, "std": [0.2] * 3,
            "evaluation": {"score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 100}}
    return build_detector(spec)


@pytest.mark.parametrize("library", ["timm", "smp", "torchvision", "timm-detection-backbone"])
def test_pretrained_offline_without_cache_is_a_clear_error(offline, library):
    with pytest.raises(ConfigError, match="model.pretrained") as err:
        _build(library)
    assert "pretrained_path" in str(err.value) and "network" in str(err.value)
    if library != "torchvision":
        assert "HF_HUB_OFFLINE" in str(err.value)


def test_pretrained_path_is_used_instead_of_the_hub(tmp_path):
    from visionpipe.engine.checkpoint import save_weights

    source = build_classifier({"name": "resnet10t"}, 3)
    save_weights(source.state_dict(), tmp_path / "w.safetensors")
    loaded = build_classifier({"name": "resnet10t", "pretrained": True, "pretrained_path": str(tmp_path / "w.safetensors")}, 3)
    assert _equal(source.state_dict(), loaded.state_dict())


@pytest.mark.slow  # an MLflow sqlite store takes seconds to create
def test_early_stop_event_reaches_mlflow(tmp_path):
    import mlflow

    from visionpipe.tracking.callbacks import MlflowEpochLogger

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            logger_cb = MlflowEpochLogger(run.info.run_id)
            logger_cb.on_epoch_end(3, {"train_loss": 0.5, "top1": 0.4, "early_stop_epoch": 3, "early_stop_best_epoch": 1, "epoch": 3})
            logger_cb.on_early_stop(3, 1)
            from visionpipe.engine.trainer import FitResult

            logger_cb.on_fit_end(FitResult({}, -1, {}))
        data = mlflow.get_run(run.info.run_id).data
        assert data.metrics["train/stopped_epoch"] == 3 and data.metrics["train/stopped_best_epoch"] == 1
        assert data.tags["visionpipe.early_stop"] == "after epoch 3 (best epoch 1)"
        assert "val/early_stop_epoch" not in data.metrics and data.metrics["val/top1"] == 0.4
    finally:
        mlflow.set_tracking_uri(None)
