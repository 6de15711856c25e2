"""The engine: determinism, resume after an interruption, non-finite loss, atomic checkpoints."""

from __future__ import annotations

import pytest
import torch

from support import task_params
from visionpipe import stages
from visionpipe.tasks import parse_task_config
from visionpipe.engine.checkpoint import load_checkpoint
from visionpipe.engine.trainer import Callback
from visionpipe.errors import TrainingError
from visionpipe.tasks.classification import ClassificationTask

pytestmark = pytest.mark.slow  # every test here trains


def _prepare(tmp_path, task="classification", **override):
    cfg = parse_task_config(task, task_params(task, tmp_path, **override))
    index = stages.ingest(task, cfg)
    return cfg, index, stages.augmentation(task, cfg)


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_same_seed_same_metrics(tmp_path, task):
    cfg, index, aug = _prepare(tmp_path, task, train={"epochs": 2})
    bundle_a, hist_a = stages.train(task, index, aug, cfg, callbacks=[])
    bundle_b, hist_b = stages.train(task, index, aug, cfg, callbacks=[])
    from visionpipe.tracking.callbacks import PROCESS_KEYS

    drop = PROCESS_KEYS  # timings and process figures differ between runs
    assert [{k: v for k, v in h.items() if k not in drop} for h in hist_a] == [{k: v for k, v in h.items() if k not in drop} for h in hist_b]
    assert _same_state(bundle_a["state_dict"], bundle_b["state_dict"])


class _StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, epoch, metrics):
        raise KeyboardInterrupt("killed")


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    full_cfg, index, aug = _prepare(tmp_path, train={"epochs": 3, "checkpoint_dir": str(tmp_path / "full")})
    full_bundle, full_hist = stages.train("classification", index, aug, full_cfg, callbacks=[])

    cut_cfg = full_cfg.model_copy(update={"train": full_cfg.train.model_copy(update={"checkpoint_dir": str(tmp_path / "cut")})})
    with pytest.raises(KeyboardInterrupt):
        stages.train("classification", index, aug, cut_cfg, callbacks=[_StopAfterFirstEpoch()])
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 0
    assert not list((tmp_path / "cut").glob(".*tmp*"))  # nothing half-written

    resume_cfg = cut_cfg.model_copy(update={"train": cut_cfg.train.model_copy(update={"resume": True})})
    resumed_bundle, resumed_hist = stages.train("classification", index, aug, resume_cfg, callbacks=[])
    keys = ("train_loss", "val_loss", "top1", "top5")
    assert [[h[k] for k in keys] for h in resumed_hist] == [[h[k] for k in keys] for h in full_hist]
    assert _same_state(resumed_bundle["state_dict"], full_bundle["state_dict"])


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    cfg, index, aug = _prepare(tmp_path, train={"epochs": 1})
    stages.train("classification", index, aug, cfg, callbacks=[])
    other = cfg.model_copy(update={"model": cfg.model.model_copy(update={"name": "resnet18"}),
                                   "train": cfg.train.model_copy(update={"resume": True})})
    with pytest.raises(TrainingError, match="different model/data"):
        stages.train("classification", index, aug, other, callbacks=[])


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    cfg, index, aug = _prepare(tmp_path, train={"epochs": 3, "log_every_n_steps": 1})
    state = {"poison": False}
    original = ClassificationTask.loss

    def loss(self, model, batch):
        value = original(self, model, batch)
        return value * float("nan") if state["poison"] else value

    class Poison(Callback):
        def on_epoch_end(self, epoch, metrics):
            state["poison"] = True

    monkeypatch.setattr(ClassificationTask, "loss", loss)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2.*last good checkpoint is kept"):
        stages.train("classification", index, aug, cfg, callbacks=[Poison()])
    checkpoint = load_checkpoint(tmp_path / "checkpoints" / "classification" / "last.pt")
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_two_micro_batches_of_4_update_like_one_batch_of_8(tmp_path):
    # test_vit has no batch norm, so the accumulated gradient of two halves equals the full batch's
    common = {"model": {"name": "test_vit", "kwargs": {"img_size": 32}},
              "data": {"builtin": {"train_images": 8, "val_images": 6}}}
    train = {"epochs": 1, "scheduler": "none", "optimizer": "sgd", "lr": 0.05, "momentum": 0.0}
    cfg_a, index, aug = _prepare(tmp_path / "a", **common, train={**train, "batch_size": 8})
    cfg_b, _, _ = _prepare(tmp_path / "b", **common, train={**train, "batch_size": 4, "grad_accum_steps": 2})
    initial, _ = stages.train("classification", index, aug, cfg_a.model_copy(update={"train": cfg_a.train.model_copy(update={"lr": 1e-12})}),
                              callbacks=[])
    full, _ = stages.train("classification", index, aug, cfg_a, callbacks=[])
    accumulated, _ = stages.train("classification", index, aug, cfg_b, callbacks=[])
    moved = [k for k in full["state_dict"] if not torch.allclose(full["state_dict"][k], initial["state_dict"][k], atol=1e-7)]
    assert moved, "the update moved no weight"
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(accumulated["state_dict"][key], value, atol=1e-6, rtol=1e-5)


def test_cpu_training_uses_all_cores_but_one(monkeypatch, tmp_path):
    from visionpipe.engine import runtime

    before = torch.get_num_threads()
    try:
        for cores, threads in ((2, 1), (1, 1), (16, 15)):
            monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
            cfg = parse_task_config("classification", task_params("classification", tmp_path))
            assert runtime.resolve_runtime(cfg.train, cfg.data).device.type == "cpu"
            assert runtime.cpu_threads() == threads and torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["adamw", "adam"])
def test_adam_on_the_cpu_is_fused_and_steps_as_the_per_tensor_loop(name, tmp_path):
    from visionpipe.engine import recipes
    from visionpipe.engine.trainer import build_optimizer

    cfg = parse_task_config("classification", task_params("classification", tmp_path, train={"optimizer": name})).train
    torch.manual_seed(0)
    # no conv bias under BatchNorm: its gradient is rounding noise, which Adam scales up to whole steps
    models = [torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], cfg)
    loop = (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(recipes.param_groups(models[1], None, cfg), lr=cfg.lr, foreach=False)
    assert fused.defaults["fused"] is True and loop.defaults["fused"] is not True
    x, target = torch.randn(4, 3, 8, 8), torch.randn(4, 8, 6, 6)
    for _ in range(3):
        for model, opt in zip(models, (fused, loop)):
            opt.zero_grad()
            model(x).mul(target).mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):  # float rounding apart (a step is ~lr = 0.01)
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
