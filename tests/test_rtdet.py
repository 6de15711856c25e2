"""RTDet, the one-stage anchor-free detector (visionpipe.models.rtdet): label assignment checked by hand,
its post-processing with an oracle head (mAP exactly 1.0 through evaluation, Predictor and ONNX), and a
short training run that learns (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from support import task_params
from test_geometry import _map_of, write_coco
from visionpipe import stages
from visionpipe.tasks import parse_task_config
from visionpipe.errors import ConfigError
from visionpipe.serving.predictor import Predictor
from visionpipe.models.rtdet import RTDet, task_aligned_assign
from visionpipe.tasks.detection import DetectionTask, build_detector


def _spec(**model) -> dict:
    return {"model": {"name": "rtdet", "backbone": "resnet10t_nano", "kwargs": {"fpn_channels": 32}, **model}, "classes": ["a", "b"],
            "image_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3,
            "evaluation": {"score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 7}}


def test_task_aligned_assignment_by_hand():
    # four points (stride 8) and one object covering the first two; the better-predicted point gets the higher target
    points = torch.tensor([[4.0, 4], [12, 4], [28, 28], [4, 28]])
    strides = torch.full((4,), 8.0)
    gt = torch.tensor([[[0.0, 0, 16, 8]]])
    scores = torch.tensor([[[0.9, 0.1], [0.5, 0.1], [0.9, 0.9], [0.2, 0.2]]])
    boxes = torch.tensor([[[0.0, 0, 16, 8], [0, 0, 8, 8], [0, 0, 16, 8], [0, 0, 16, 8]]])  # IoU 1, 0.5 with the object
    fg, index, target = task_aligned_assign(scores, boxes, points, strides, gt, torch.tensor([[0]]), torch.tensor([[True]]), topk=2)
    assert fg.tolist() == [[True, True, False, False]]  # far points are no candidates, however good their box
    assert index[0, :2].tolist() == [0, 0]
    # align = score * IoU^6: 0.9 and 0.5 / 64; normalised so that the best point's target is its IoU (1.0)
    assert target[0, 0].item() == pytest.approx(1.0) and target[0, 1].item() == pytest.approx(0.5 / 64 / 0.9, rel=1e-4)
    # a padded (invalid) object assigns nothing
    fg, _, target = task_aligned_assign(scores, boxes, points, strides, gt, torch.tensor([[0]]), torch.tensor([[False]]), topk=2)
    assert not fg.any() and target.sum() == 0


def test_a_point_claimed_by_two_objects_goes_to_the_one_it_overlaps_most():
    points = torch.tensor([[8.0, 8]])
    gt = torch.tensor([[[0.0, 0, 16, 16], [4, 4, 40, 40]]])
    boxes = torch.tensor([[[0.0, 0, 16, 16]]])
    fg, index, _ = task_aligned_assign(torch.full((1, 1, 2), 0.5), boxes, points, torch.tensor([8.0]), gt, torch.tensor([[0, 1]]),
                                       torch.tensor([[True, True]]))
    assert fg.item() and index.item() == 0


def test_rtdet_trains_a_step_predicts_and_keeps_torchvision_settings():
    model = build_detector(_spec())
    assert isinstance(model, RTDet) and model.backbone.strides == [8, 16, 32]
    assert (model.score_thresh, model.nms_thresh, model.detections_per_img) == (0.05, 0.5, 7)  # set_postprocess reaches it
    images = [torch.rand(3, 64, 80), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.long)}]
    terms = model(images, targets)
    assert set(terms) == {"classification", "bbox_regression"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert model.backbone.body.conv1[0].weight.grad.abs().sum() > 0  # the timm extractor under the PAFPN learns too
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(len(o["boxes"]) <= 7 for o in out)


def test_resnet10t_nano_is_resnet10t_at_half_width_and_backbone_kwargs_reach_timm():
    import timm

    nano = timm.create_model("resnet10t_nano", features_only=True, out_indices=(-3, -2, -1))
    assert nano.feature_info.channels() == [64, 128, 256]
    model = build_detector(_spec(backbone="resnet10t", kwargs={"fpn_channels": 32, "backbone_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 16}}))
    assert [tuple(p.shape) for p in model.backbone.body.parameters()] == [tuple(p.shape) for p in nano.parameters()]
    with pytest.raises(ConfigError, match="detection.model.kwargs.backbone_kwargs: .*widthh"):
        build_detector(_spec(kwargs={"backbone_kwargs": {"widthh": 3}}))


def test_rtdet_settings_are_checked():
    with pytest.raises(ConfigError, match="anchor-free"):
        build_detector(_spec(kwargs={"anchor_sizes": [16]}))
    with pytest.raises(ConfigError, match="detection.model.kwargs.topkk: not accepted.*topk"):
        build_detector(_spec(kwargs={"topkk": 3}))
    assert build_detector(_spec(kwargs={"fpn_channels": 48, "head_convs": 1, "topk": 5})).topk == 5


class OracleLevels(nn.Module):
    """Stands in for RTDet's backbone + neck: three levels (strides 8/16/32) whose first carries, per colour
    channel, the box of that channel's object as read off the resized network input."""

    out_channels = 15

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("threshold", (0.5 - torch.tensor(mean)) / torch.tensor(std), persistent=False)

    @staticmethod
    def _span(hits):
        return hits.float().argmax().float(), (hits.float().cumsum(0).argmax() + 1).float()

    def forward(self, x):
        n, _, h, w = x.shape
        rows = []
        for image in x:
            values = []
            for c in range(3):
                mask = image[c] > self.threshold[c]
                y0, y1 = self._span(mask.any(1))
                x0, x1 = self._span(mask.any(0))
                values += [x0, y0, x1, y1, mask.any().float()]
            rows.append(torch.stack(values))
        boxes = torch.stack(rows)[:, :, None, None]  # (N, 15, 1, 1)
        return {"0": boxes.expand(n, 15, h // 8, w // 8), "1": x.new_zeros(n, 15, h // 16, w // 16), "2": x.new_zeros(n, 15, h // 32, w // 32)}


class OracleHead(nn.Module):
    """Per object: a confident score at the stride-8 point nearest its centre, with the exact side distances."""

    def forward(self, features):
        logits, codes = [], []
        for level, f in enumerate(features):
            n, _, h, w = f.shape
            stride = 8 * 2 ** level
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) * stride, torch.arange(w, dtype=torch.float32) * stride, indexing="ij")
            px, py = xs.reshape(1, -1), ys.reshape(1, -1)
            level_logits = torch.full((n, h * w, 4), -20.0)
            level_codes = torch.zeros(n, h * w, 4)
            if level == 0:
                for c in range(3):
                    x0, y0, x1, y1, present = (f[:, 5 * c + k, 0, 0][:, None] for k in range(5))
                    near = ((px - (x0 + x1) / 2).abs() + (py - (y0 + y1) / 2).abs())
                    best = near == near.min(1, keepdim=True).values
                    hit = best & (present > 0)
                    level_logits[..., c + 1] = torch.where(hit, torch.tensor(20.0), torch.tensor(-20.0))
                    code = torch.stack([px - x0, py - y0, x1 - px, y1 - py], -1) / stride
                    level_codes = torch.where(hit[..., None], code.expand(n, -1, -1), level_codes)
            logits.append(level_logits)
            codes.append(level_codes)
        return {"cls_logits": torch.cat(logits, 1), "bbox_regression": torch.cat(codes, 1)}


@pytest.fixture()
def rtdet_oracle(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    write_coco(root)
    cfg = parse_task_config("detection", task_params("detection", tmp_path, data={"root": str(root)}, train={"image_size": 128}, augment=[],
                                                     model={"name": "rtdet", "backbone": "resnet10t_nano", "kwargs": {"fpn_channels": 32}}))
    index = stages.ingest("detection", cfg)
    spec = stages.make_spec("detection", cfg, index["classes"], index["category_ids"])
    real_build = DetectionTask.build_model

    def build(self):
        model = real_build(self)
        model.backbone, model.head = OracleLevels(model.transform.image_mean, model.transform.image_std), OracleHead()
        return model

    monkeypatch.setattr(DetectionTask, "build_model", build)
    return {"root": root, "cfg": cfg, "index": index, "bundle": {"spec": spec, "state_dict": {}}}


def test_rtdet_postprocess_with_an_oracle_head_scores_map_1(rtdet_oracle, tmp_path):
    o = rtdet_oracle
    metrics, _, _ = stages.evaluate("detection", o["index"], stages.augmentation("detection", o["cfg"]), o["bundle"], o["cfg"])
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_75"] == pytest.approx(1.0)
    pytest.importorskip("onnxruntime")
    arrays = [np.asarray(Image.open(o["root"] / rec["image"]).convert("RGB")) for rec in o["index"]["val"]]
    predictor = Predictor(o["bundle"])
    assert _map_of(predictor.predict_arrays(arrays), predictor.task, o["index"]) == pytest.approx(1.0)
    onnx_path = tmp_path / "rtdet_oracle.onnx"
    predictor.task.export_onnx(predictor.model, onnx_path)
    assert _map_of(Predictor(o["bundle"], onnx=onnx_path).predict_arrays(arrays), predictor.task, o["index"]) == pytest.approx(1.0)


def test_rtdet_exports_to_onnx_with_the_torch_models_detections(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    spec = {**_spec(), "evaluation": {"score_threshold": 0.0, "nms_threshold": 0.5, "max_detections": 20}}
    task = DetectionTask(spec)
    model = task.build_model().eval()
    for p in model.head.cls_pred.parameters():  # spread the scores so that the order of detections is well defined
        nn.init.normal_(p, std=0.5)
    task.export_onnx(model, tmp_path / "rtdet.onnx")
    session = ort.InferenceSession(str(tmp_path / "rtdet.onnx"), providers=["CPUExecutionProvider"])
    image = torch.rand(3, 50, 90)  # another size than the export's: dynamic axes
    with torch.no_grad():
        want = task.postprocess(model([image]), [(50, 90)])[0]
    got = task.postprocess(task.onnx_forward(session, [image]), [(50, 90)])[0]
    assert task.compare_results(task.format_result(want), task.format_result(got)) is None


@pytest.mark.slow
def test_rtdet_learns_the_builtin_shapes(tmp_path):
    cfg = parse_task_config("detection", task_params("detection", tmp_path, data={"builtin": {"train_images": 96, "val_images": 24}},
                                                     train={"epochs": 8, "batch_size": 8, "lr": 0.004}))  # the default model: rtdet
    index = stages.ingest("detection", cfg)
    aug = stages.augmentation("detection", cfg)
    bundle, history = stages.train("detection", index, aug, cfg, callbacks=[])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    metrics, _, _ = stages.evaluate("detection", index, aug, bundle, cfg)
    assert metrics["map_50"] > 0.05
