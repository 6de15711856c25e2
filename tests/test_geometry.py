"""Geometry and ids on real-photo shapes: non-square images of several sizes, the user's sparse COCO ids.

The oracle models answer with the ground truth as seen in the *network's* input (they read it off the
resized/letterboxed pixels), so any mistake in the mapping back to the original image (resize,
aspect ratio, padding, ids) lowers the score below 1.0. Each runs through evaluation, through
``Predictor`` (the pyfunc's path) and, for detection, through the ONNX export.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from support import task_params
from visionpipe import stages
from visionpipe.tasks import parse_task_config
from visionpipe.errors import ConfigError
from visionpipe.serving.predictor import Predictor
from visionpipe.tasks import get_task
from visionpipe.tasks.detection import DetectionTask, coco_evaluate
from visionpipe.tasks.segmentation import SegmentationTask

# (height, width) of the photos, and the (x0, y0, x1, y1) box of the one object drawn in each
SIZES = [(60, 100), (90, 50), (72, 72), (48, 120), (110, 80)]
CATEGORY_IDS = [5, 17, 90]  # sparse, as in COCO
IMAGE_IDS = [101, 7, 4242, 55, 900]


def _box(h: int, w: int, k: int) -> list[float]:
    x0, y0 = 4 + 3 * k, 5 + 2 * k
    return [float(x0), float(y0), float(w - 6 - k), float(h - 4 - 2 * k)]


def write_coco(root: Path) -> dict:
    """A COCO folder whose val images are non-square, one object each drawn in its class's colour channel."""
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in zip(CATEGORY_IDS, ["cat", "dog", "toaster"])]
    files = {}
    for split in ("train", "val"):
        images, annotations = [], []
        for k, ((h, w), image_id) in enumerate(zip(SIZES, IMAGE_IDS)):
            pixels = np.zeros((h, w, 3), dtype=np.uint8)
            x0, y0, x1, y1 = _box(h, w, k)
            label = k % 3
            pixels[int(y0):int(y1), int(x0):int(x1), label] = 255
            name = f"{split}_{image_id}.png"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / "images" / split / name)
            images.append({"id": image_id, "file_name": name, "width": w, "height": h})
            annotations.append({"id": 1000 + k, "image_id": image_id, "category_id": CATEGORY_IDS[label],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        files[split] = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(files[split]))
    return files


class OracleDetector(nn.Module):
    """The detector's own GeneralizedRCNNTransform around a 'network' that reads the box of each colour
    channel off the resized input; the transform maps the boxes back. Traceable for ONNX export."""

    def __init__(self, transform):
        super().__init__()
        self.transform = transform
        mean, std = torch.tensor(transform.image_mean), torch.tensor(transform.image_std)
        self.register_buffer("threshold", (0.5 - mean) / std, persistent=False)  # half intensity, normalised

    @staticmethod
    def _span(hits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        first = hits.float().argmax()
        last = hits.float().cumsum(0).argmax() + 1  # the first index reaching the count is the last hit (no shapes: traceable)
        return first.float(), last.float()

    def forward(self, images):
        original_sizes = [(img.shape[-2], img.shape[-1]) for img in images]  # as GeneralizedRCNN does: traced, not constants
        batch, _ = self.transform(images)
        detections = []
        for x in batch.tensors:
            boxes, scores = [], []
            for c in range(3):
                mask = x[c] > self.threshold[c]
                y0, y1 = self._span(mask.any(1))
                x0, x1 = self._span(mask.any(0))
                boxes.append(torch.stack([x0, y0, x1, y1]))
                scores.append(mask.any().float())
            boxes, scores = torch.stack(boxes), torch.stack(scores)
            keep = scores > 0
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": torch.arange(1, 4)[keep]})
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)


def _pycocotools_map(annotation_file: Path, predictions: list[dict]) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
        ev = COCOeval(gt, gt.loadRes([dict(p) for p in predictions]), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return float(ev.stats[0])


@pytest.fixture()
def detection_oracle(tmp_path, monkeypatch):
    root = tmp_path / "coco"
    files = write_coco(root)
    cfg = parse_task_config("detection", task_params("detection", tmp_path, data={"root": str(root)},
                                                     train={"image_size": 128}, augment=[]))
    index = stages.ingest("detection", cfg)
    spec = stages.make_spec("detection", cfg, index["classes"], index["category_ids"])
    real = DetectionTask(spec).build_model()
    monkeypatch.setattr(DetectionTask, "build_model", lambda self: OracleDetector(real.transform))
    return {"root": root, "files": files, "cfg": cfg, "index": index, "bundle": {"spec": spec, "state_dict": {}}}


def test_detection_oracle_scores_map_1_in_the_users_ids_through_evaluation(detection_oracle):
    o = detection_oracle
    assert o["index"]["category_ids"] == CATEGORY_IDS and [r["image_id"] for r in o["index"]["val"]] == sorted(IMAGE_IDS)
    metrics, evaluator, task_obj = stages.evaluate("detection", o["index"], stages.augmentation("detection", o["cfg"]), o["bundle"], o["cfg"])
    assert metrics["map"] == pytest.approx(1.0) and metrics["map_75"] == pytest.approx(1.0)
    outputs = task_obj.prediction_outputs(o["index"], evaluator)
    predictions, ground_truth = outputs["predictions"], outputs["ground_truth"]
    # the user's ids: predictions.json re-scores against the user's own instances_val.json to the same mAP
    assert {p["category_id"] for p in predictions} == set(CATEGORY_IDS)
    assert {p["image_id"] for p in predictions} == set(IMAGE_IDS)
    assert ground_truth["categories"] == [{"id": c["id"], "name": c["name"], "supercategory": "object"} for c in o["files"]["val"]["categories"]]
    assert _pycocotools_map(o["root"] / "annotations" / "instances_val.json", predictions) == pytest.approx(metrics["map"])


def _map_of(results: list[dict], task_obj, index: dict) -> float:
    from visionpipe.tasks.detection import coco_ground_truth

    predictions = [p for rec, det in zip(index["val"], results) for p in task_obj.coco_results(det, rec["image_id"])]
    gt = coco_ground_truth(index["val"], task_obj.classes, task_obj.category_ids)
    return coco_evaluate(gt, predictions, task_obj.classes)[0]["map"]


def test_detection_oracle_scores_map_1_through_predictor_and_onnx(detection_oracle, tmp_path):
    pytest.importorskip("onnxruntime")
    o = detection_oracle
    root, index = o["root"], o["index"]
    arrays = [np.asarray(Image.open(root / rec["image"]).convert("RGB")) for rec in index["val"]]
    predictor = Predictor(o["bundle"])
    assert _map_of(predictor.predict_arrays(arrays), predictor.task, index) == pytest.approx(1.0)
    rows = predictor.predict([root / rec["image"] for rec in index["val"]])  # the pyfunc's rows: original pixels, xyxy
    for row, rec in zip(rows, index["val"]):
        np.testing.assert_allclose(row["boxes"][0], rec["boxes"][0], atol=1.0)
    onnx_path = tmp_path / "oracle.onnx"
    predictor.task.export_onnx(predictor.model, onnx_path)
    onnx_predictor = Predictor(o["bundle"], onnx=onnx_path)
    assert _map_of(onnx_predictor.predict_arrays(arrays), predictor.task, index) == pytest.approx(1.0)


def test_val_categories_must_match_train(tmp_path):
    from visionpipe.errors import DataError

    root = tmp_path / "coco"
    files = write_coco(root)
    cfg = parse_task_config("detection", task_params("detection", tmp_path, data={"root": str(root)}))
    val = files["val"]
    val["categories"] = [{**c, "name": "kitten"} if c["id"] == 5 else c for c in val["categories"]]
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    with pytest.raises(DataError) as err:
        stages.ingest("detection", cfg)
    message = str(err.value)
    assert "instances_val.json" in message and "instances_train.json" in message and "(5, 'cat')" in message and "(5, 'kitten')" in message
    val["categories"] = []
    (root / "annotations" / "instances_val.json").write_text(json.dumps(val))
    with pytest.raises(DataError, match="'categories' list is empty"):
        stages.ingest("detection", cfg)


# ---------------------------------------------------------------- segmentation

SEG_SIZES = [(64, 40), (40, 64), (64, 64), (32, 24), (20, 32), (128, 80)]  # letterbox scales 1, 2 and 0.5


def write_masks(root: Path) -> list[np.ndarray]:
    """Mask folders of non-square images: class c's region drawn bright in colour channel c - 1."""
    masks = []
    for split in ("train", "val"):
        for k, (h, w) in enumerate(SEG_SIZES):
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[h // 4:h // 2 + 2 * (k % 2), 2:w // 2] = 1
            mask[h // 2 + 4:h - 2, w // 2 + 2:w - 4] = 2
            pixels = np.zeros((h, w, 3), dtype=np.uint8)
            pixels[mask == 1, 0] = 255
            pixels[mask == 2, 1] = 255
            for folder, array in (("images", pixels), ("masks", mask)):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / split / folder / f"{k}.png")
            if split == "val":
                masks.append(mask)
    return masks


class OracleSegmenter(nn.Module):
    """Per-pixel logits read off the letterboxed input: class c where channel c - 1 is bright."""

    def __init__(self, mean, std):
        super().__init__()
        mean, std = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        self.register_buffer("threshold", (0.5 - mean) / std, persistent=False)

    def forward(self, x):
        bright = (x - self.threshold).clamp(-1, 1)  # > 0 where the channel is more than half on
        return torch.cat([torch.zeros_like(bright[:, :1]), bright[:, :2]], 1)


def test_segmentation_oracle_scores_iou_1_on_non_square_images(tmp_path, monkeypatch):
    root = tmp_path / "masks"
    truth = write_masks(root)
    cfg = parse_task_config("segmentation", task_params("segmentation", tmp_path, augment=[],
                                                        data={"root": str(root), "format": "masks", "classes": ["background", "a", "b"]},
                                                        train={"image_size": 64}))
    index = stages.ingest("segmentation", cfg)
    aug = stages.augmentation("segmentation", cfg)
    spec = stages.make_spec("segmentation", cfg, index["classes"])
    monkeypatch.setattr(SegmentationTask, "build_model", lambda self: OracleSegmenter(spec["mean"], spec["std"]))
    bundle = {"spec": spec, "state_dict": {}}
    metrics, evaluator, _ = stages.evaluate("segmentation", index, aug, bundle, cfg)
    assert metrics["miou"] == pytest.approx(1.0) and metrics["pixel_accuracy"] == pytest.approx(1.0)
    # the letterboxed training sample: ratio kept, padding ignored by the loss
    task_obj = get_task(spec)
    image, target, _ = task_obj.make_sample(np.zeros((32, 24, 3), np.uint8), index["train"][3], root,
                                            SegmentationTask.compose([], 64, spec["mean"], spec["std"], train=True), 3)
    assert image.shape == (3, 64, 64) and (target[:, 48:] == cfg.data.ignore_index).all() and (target[:, :48] != cfg.data.ignore_index).all()
    # Predictor (the pyfunc's path), with and without flip TTA
    images = [np.asarray(Image.open(root / "val" / "images" / f"{k}.png").convert("RGB")) for k in range(len(SEG_SIZES))]
    for tta in (False, True):
        bundle["spec"]["evaluation"]["tta"] = tta
        for result, mask in zip(Predictor(bundle).predict_arrays(images), truth):
            assert result["mask"].shape == mask.shape and (result["mask"].numpy() == mask).all()


def test_segmentation_sliding_window_stitches_windows_and_keeps_the_oracle_exact(tmp_path, monkeypatch):
    from visionpipe.data.transforms import tile_starts
    from visionpipe.tasks.segmentation import slide

    assert tile_starts(100, 32, 0.25) == [0, 24, 48, 68] and tile_starts(20, 32, 0.5) == [0]
    images = torch.rand(2, 3, 100, 70)
    calls = []

    def per_pixel(batch):  # a per-pixel "model": its logits are its input, so stitching must give them back exactly
        calls.append(tuple(batch.shape[-2:]))
        return batch

    torch.testing.assert_close(slide(per_pixel, images, 32, 0.25, 3), images)
    assert set(calls) == {(32, 32)} and len(calls) == 4 * 3  # 4 rows x 3 columns of windows
    # through evaluation and Predictor: letterboxed to slide.size, windows of train.image_size, IoU still exactly 1
    root = tmp_path / "masks"
    truth = write_masks(root)
    cfg = parse_task_config("segmentation", task_params("segmentation", tmp_path, augment=[],
                                                        data={"root": str(root), "format": "masks", "classes": ["background", "a", "b"]},
                                                        train={"image_size": 32}, evaluation={"slide": {"size": 128, "overlap": 0.5}}))
    index = stages.ingest("segmentation", cfg)
    spec = stages.make_spec("segmentation", cfg, index["classes"])
    seen = []

    def oracle(self):
        model = OracleSegmenter(spec["mean"], spec["std"])
        model.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[-2:])))
        return model

    monkeypatch.setattr(SegmentationTask, "build_model", oracle)
    bundle = {"spec": spec, "state_dict": {}}
    metrics, _, _ = stages.evaluate("segmentation", index, stages.augmentation("segmentation", cfg), bundle, cfg)
    assert metrics["miou"] == pytest.approx(1.0) and metrics["evaluation"]["slide"] == {"size": 128, "overlap": 0.5}
    assert set(seen) == {(32, 32)}  # the model only ever saw windows of the training size
    images = [np.asarray(Image.open(root / "val" / "images" / f"{k}.png").convert("RGB")) for k in range(len(SEG_SIZES))]
    for result, mask in zip(Predictor(stages.serving_bundle(bundle, cfg)).predict_arrays(images), truth):
        assert result["mask"].shape == mask.shape and (result["mask"].numpy() == mask).all()
    with pytest.raises(ConfigError, match=r"evaluation\.slide\.size 48 is smaller than train\.image_size 64"):
        parse_task_config("segmentation", task_params("segmentation", train={"image_size": 64}, evaluation={"slide": {"size": 48}}))


def test_one_meaning_per_evaluation_key_and_settings_are_typed_on_load(caplog):
    """Detection's evaluation.tile is tiles of original pixels; segmentation's sliding window is evaluation.slide (its
    old name tile is still read, with a warning). A task object holds its evaluation settings as its typed model,
    validated again from the spec, and a bad stored value is one ConfigError naming the key."""
    from visionpipe.tasks.detection import DetectionEvaluation, TileConfig
    from visionpipe.tasks.segmentation import SegmentationEvaluation, SlideConfig

    assert set(DetectionEvaluation.model_fields) & set(SegmentationEvaluation.model_fields) == {"batch_size"}
    assert DetectionEvaluation.model_fields["tile"].annotation == TileConfig | None
    old = parse_task_config("segmentation", task_params("segmentation", train={"image_size": 32}, evaluation={"tile": {"size": 64}}))
    assert old.evaluation.slide == SlideConfig(size=64) and "evaluation.slide" in caplog.text
    spec = stages.make_spec("detection", parse_task_config("detection", task_params("detection")), ["a", "b"])
    task = get_task(spec)
    assert isinstance(task.evaluation, DetectionEvaluation) and task.evaluation.score_threshold == 0.05
    assert type(task).inference_params(spec) == {"score_threshold": 0.05, "max_detections": 100}
    with pytest.raises(ConfigError, match=r"detection model spec: .*max_detections"):
        get_task({**spec, "evaluation": {**spec["evaluation"], "max_detections": 0}})


@pytest.mark.slow  # trains
def test_sparse_ids_end_to_end_rescore_with_pycocotools_against_the_users_file(tmp_path):
    """Real training on non-square photos with COCO ids 5/17/90: validation, training, evaluation; the
    written predictions re-score against the user's own instances_val.json to the reported mAP."""
    root = tmp_path / "coco"
    write_coco(root)
    cfg = parse_task_config("detection", task_params("detection", tmp_path, data={"root": str(root)},
                                                     train={"image_size": 64, "batch_size": 2, "lr": 0.01},
                                                     evaluation={"score_threshold": 0.0}))
    raw = stages.ingest("detection", cfg)
    index = stages.enforce_policy("detection", raw, stages.validate("detection", raw, cfg), cfg)
    aug = stages.augmentation("detection", cfg)
    bundle, history = stages.train("detection", index, aug, cfg, callbacks=[])
    assert bundle["spec"]["category_ids"] == CATEGORY_IDS and "train_bbox_regression" in history[0]
    metrics, evaluator, task_obj = stages.evaluate("detection", index, aug, bundle, cfg)
    predictions = json.loads(json.dumps(task_obj.prediction_outputs(index, evaluator)["predictions"]))  # as written to JSON
    assert predictions and {p["category_id"] for p in predictions} <= set(CATEGORY_IDS) and {p["image_id"] for p in predictions} == set(IMAGE_IDS)
    assert _pycocotools_map(root / "annotations" / "instances_val.json", predictions) == pytest.approx(metrics["map"], abs=1e-12)
    # the served model speaks the same pixels: Predictor rows (the same batch as evaluation's) match predictions.json
    rows = Predictor(bundle).predict([root / rec["image"] for rec in index["val"]])
    for row, rec in zip(rows, index["val"]):
        mine = sorted((p for p in predictions if p["image_id"] == rec["image_id"]), key=lambda p: -p["score"])
        assert sorted(row["scores"], reverse=True) == pytest.approx([p["score"] for p in mine], abs=2e-5)
        x, y, w, h = mine[0]["bbox"]
        np.testing.assert_allclose(row["boxes"][int(np.argmax(row["scores"]))], [x, y, x + w, y + h], atol=0.05)


def test_classification_flip_tta_averages_the_flipped_logits(tmp_path):
    from visionpipe.tasks.classification import ClassificationTask

    class LeftRight(nn.Module):  # logits: brightness of the left half, of the right half
        def forward(self, x):
            half = x.shape[-1] // 2
            return torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], 1)

    cfg = parse_task_config("classification", task_params("classification", tmp_path))
    spec = stages.make_spec("classification", cfg, ["left", "right"])
    images = torch.zeros(1, 3, 8, 8)
    images[..., :4] = 1.0
    plain = ClassificationTask(spec).forward(LeftRight(), images)
    spec["evaluation"]["tta"] = True
    tta = ClassificationTask(spec).forward(LeftRight(), images)
    assert plain.tolist() == [[1.0, 0.0]] and tta.tolist() == [[0.5, 0.5]]


def test_tiled_detection_finds_small_objects_in_a_large_photo_in_its_pixels(detection_oracle, tmp_path):
    """A 300x200 photo with two small objects: whole, the detector shrinks it to 128 px and the boxes blur;
    with evaluation.tile every box comes back in the photo's pixels (tiles shifted, merged by NMS),
    the same through Predictor and the ONNX export."""
    from torchvision.ops import box_iou

    from visionpipe.data.transforms import tile_starts

    assert tile_starts(300, 128, 0.25) == [0, 96, 172] and tile_starts(100, 128, 0.25) == [0]
    pixels = np.zeros((200, 300, 3), dtype=np.uint8)
    truth = torch.tensor([[150.0, 30, 171, 47], [33, 140, 52, 161]])
    pixels[30:47, 150:171, 0] = 255
    pixels[140:161, 33:52, 1] = 255
    bundle = detection_oracle["bundle"]
    whole = Predictor(bundle).predict_arrays([pixels])[0]
    assert box_iou(whole["boxes"], truth).max(1).values.min() < 0.95
    bundle["spec"]["evaluation"]["tile"] = {"size": 128, "overlap": 0.25}
    predictor = Predictor(bundle)
    onnx_path = tmp_path / "oracle.onnx"
    predictor.task.export_onnx(predictor.model, onnx_path)
    for p in (predictor, Predictor(bundle, onnx=onnx_path)):
        tiled = p.predict_arrays([pixels])[0]
        best = box_iou(truth, tiled["boxes"]).max(1)
        assert (best.values > 0.95).all() and tiled["labels"][best.indices].tolist() == [0, 1]


def test_segmentation_multi_scale_resizes_each_training_batch_reproducibly():
    cfg = parse_task_config("segmentation", task_params("segmentation", train={"image_size": 64, "multi_scale": [32, 96]}))
    task = get_task(stages.make_spec("segmentation", cfg, ["background", "a", "b"]))
    images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    masks[:, 0, 0] = 255  # ignored pixels stay ignored: nearest-neighbour, no blending of class indices
    sizes = set()
    for epoch in range(6):
        for first in range(4):
            metas = [{"index": first}, {"index": first + 4}]
            out_images, out_masks, _ = task.train_batch((images, masks, metas), epoch)
            again = task.train_batch((images, masks, metas), epoch)[0]
            assert out_images.shape == again.shape  # seeded by (seed, epoch, first sample): resume/DDP draw the same
            size = out_images.shape[-1]
            sizes.add(size)
            assert size in (32, 64, 96) and out_images.shape[-2:] == out_masks.shape[-2:]
            assert set(out_masks.unique().tolist()) <= {0, 1, 2, 255}
    assert len(sizes) > 1
    with pytest.raises(ConfigError, match=r"segmentation\.train: .*multi_scale must be"):
        parse_task_config("segmentation", task_params("segmentation", train={"multi_scale": [30, 96]}))
    plain = get_task(stages.make_spec("segmentation", parse_task_config("segmentation", task_params("segmentation")), ["b", "x"]))
    assert plain.train_batch((images, masks, [{"index": 0}]), 0)[0] is images


@pytest.mark.slow
def test_kedro_run_on_a_users_coco_folder_rescores_against_the_users_own_file(tmp_path):
    """`kedro run --pipelines=detection` on a COCO folder with sparse category ids and non-square photos:
    predictions.json speaks the user's ids and pycocotools scores it against instances_val.json to the run's mAP."""
    from support import kedro, make_project, tiny_params

    root = tmp_path / "coco"
    write_coco(root)
    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    kedro(project, "run", "--pipelines=detection",
          f"--params={tiny_params(('detection',))},detection.data.root={root},detection.evaluation.score_threshold=0.0,"
          "detection.train.epochs=2,detection.train.batch_size=2")
    metrics = json.loads((project / "data/08_reporting/detection/all_metrics.json").read_text())
    predictions = json.loads((project / "data/07_model_output/detection/predictions.json").read_text())
    ground_truth = json.loads((project / "data/07_model_output/detection/ground_truth.json").read_text())
    assert {c["id"] for c in ground_truth["categories"]} == set(CATEGORY_IDS) and {i["id"] for i in ground_truth["images"]} <= set(IMAGE_IDS)
    assert predictions and {p["category_id"] for p in predictions} <= set(CATEGORY_IDS)
    assert _pycocotools_map(root / "annotations" / "instances_val.json", predictions) == pytest.approx(metrics["map"], abs=1e-9)
