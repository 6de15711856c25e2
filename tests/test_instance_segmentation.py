"""Instance segmentation: readers (COCO polygons/RLE/crowd, YOLO polygons), masks through augmentation,
mask/box mAP against pycocotools, post-processing to the original size, and one whole `kedro run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from support import TINY, make_project, save_image
from visionpipe.tasks import parse_task_config
from visionpipe.data import formats
from visionpipe.data.transforms import from_dict, to_dict
from visionpipe.engine.runtime import Runtime
from visionpipe.errors import ConfigError
from visionpipe.tasks import get_task, get_task_class
from visionpipe.tasks.instance_segmentation import (
    InstanceSegmentationTask,
    instance_metrics,
    instances_ground_truth,
)

TASK = "instance_segmentation"
CPU = Runtime(torch.device("cpu"), None, False, 0, False)
EVALUATION = {"batch_size": 4, "score_threshold": 0.05, "nms_threshold": 0.5, "max_detections": 100}


def _rle(mask: np.ndarray, compressed: bool = True) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if compressed:
        return {"size": list(rle["size"]), "counts": rle["counts"].decode()}
    counts, current, run = [], 0, 0  # uncompressed RLE: run lengths in column-major order, starting with zeros
    for value in mask.astype(np.uint8).ravel(order="F"):
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    return {"size": list(mask.shape), "counts": counts + [run]}


def _box(x0, y0, x1, y1, h=60, w=60) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _coco_root(tmp_path: Path) -> Path:
    """One 60x60 image per split: a polygon object (class a), an RLE object (class b) and a crowd region (uncompressed RLE)."""
    root = tmp_path / "coco"
    polygon = [[5.0, 5.0, 20.0, 5.0, 20.0, 20.0, 5.0, 20.0]]  # the square [5, 20) x [5, 20)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [5, 5, 15, 15], "area": 225, "iscrowd": 0, "segmentation": polygon},
        {"id": 2, "image_id": 1, "category_id": 9, "bbox": [30, 10, 20, 20], "area": 400, "iscrowd": 0, "segmentation": _rle(_box(30, 10, 50, 30))},
        {"id": 3, "image_id": 1, "category_id": 7, "bbox": [0, 30, 60, 10], "area": 600, "iscrowd": 1,
         "segmentation": _rle(_box(0, 30, 60, 40), compressed=False)},
    ]
    categories = [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}]
    for split in ("train", "val"):
        save_image(root / "images" / split / "x.png", size=(60, 60))
        content = {"images": [{"id": 1, "file_name": "x.png", "width": 60, "height": 60}], "annotations": anns, "categories": categories}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
    return root


def _cfg(**data):
    from support import task_params

    return parse_task_config(TASK, task_params(TASK, data=data))


def _task(classes=("a", "b"), image_size=60, **model) -> InstanceSegmentationTask:
    spec = {"task": TASK, "classes": list(classes), "image_size": image_size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "model": {"name": "maskrcnn", "backbone": "resnet10t", "pretrained_path": None, "kwargs": {"fpn_channels": 32}, **model},
            "evaluation": EVALUATION}
    return get_task(spec)


# ---------------------------------------------------------------- readers and validation

def test_coco_reader_keeps_polygons_rle_and_crowd_aligned_with_boxes(tmp_path):
    root = _coco_root(tmp_path)
    cfg = _cfg(root=str(root))
    index = get_task_class(TASK).read(root, cfg.data)
    assert index["classes"] == ["a", "b"] and not index["problems"]
    rec = index["train"][0]
    assert rec["labels"] == [0, 1, 0] and rec["iscrowd"] == [0, 0, 1]
    assert rec["boxes"][1] == [30.0, 10.0, 50.0, 30.0]
    assert [s["label"] for s in rec["segments"]] == rec["labels"] and [s["iscrowd"] for s in rec["segments"]] == [0, 0, 1]
    assert InstanceSegmentationTask.check_record(root, rec, 60, 60, index["classes"], cfg.data) == []
    # training targets: crowd regions are not instances; masks decode where the annotations say
    task = _task()
    tf = InstanceSegmentationTask.compose([], 60, (0, 0, 0), (1, 1, 1), train=False)
    pixels = np.zeros((60, 60, 3), np.uint8)
    _, target, meta = task.make_sample(pixels, rec, root, tf, 0)
    assert target["labels"].tolist() == [1, 2] and meta["image_id"] == 1
    assert target["masks"].shape == (2, 60, 60)
    assert np.array_equal(target["masks"][0].numpy(), _box(5, 5, 20, 20))  # polygon rasterised by pycocotools
    assert np.array_equal(target["masks"][1].numpy(), _box(30, 10, 50, 30))
    # the ground truth keeps the crowd region as COCO's ignore region, with mask areas
    gt = instances_ground_truth(index["val"], index["classes"])
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1]
    assert [a["area"] for a in gt["annotations"]] == [225.0, 400.0, 600.0]


def test_bad_segmentations_are_findings_naming_the_image(tmp_path):
    root = _coco_root(tmp_path)
    rec = get_task_class(TASK).read(root, _cfg(root=str(root)).data)["train"][0]
    rec["segments"][0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]
    rec["segments"][1]["segmentation"] = {**rec["segments"][1]["segmentation"], "size": [60, 40]}
    rec["segments"][2]["segmentation"] = []
    found = InstanceSegmentationTask.check_record(root, rec, 60, 60, ["a", "b"], _cfg(root=str(root)).data)
    assert [f for f, _ in found] == [str(root / "images/train/x.png")] * 3
    problems = [p for _, p in found]
    assert "at least 3 x, y points" in problems[0]
    assert "RLE size [60, 40] does not match the 60x60 image" in problems[1]
    assert "without a segmentation" in problems[2]


def test_yolo_segmentation_reader(tmp_path):
    root = tmp_path / "yolo"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    for split in ("train", "val"):
        save_image(root / "images" / split / "a.png", size=(40, 20))
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / "a.txt").write_text(
            "1 0.1 0.1 0.5 0.1 0.5 0.9\n"       # a triangle: box [4, 2, 20, 18] in the 40x20 image
            "0 0.5 0.5 0.2 0.2\n"               # a YOLO box line, not a polygon
            "0 0.1 0.2 1.3 0.4 0.5 0.6\n"       # outside [0, 1]
            "4 0.1 0.1 0.5 0.1 0.5 0.9\n")      # no class 4
    index = formats.read_yolo(root, None, segments=True)
    assert index["classes"] == ["cat", "dog"]
    rec = index["train"][0]
    assert rec["labels"] == [1] and rec["iscrowd"] == [0]
    assert rec["boxes"][0] == pytest.approx([4.0, 2.0, 20.0, 18.0])
    assert rec["segments"][0]["segmentation"] == [[4.0, 2.0, 20.0, 2.0, 20.0, 18.0]]
    problems = [(Path(p["file"]).name, p["problem"]) for p in index["problems"] if p["split"] == "train"]
    assert [f for f, _ in problems] == ["a.txt:2", "a.txt:3", "a.txt:4"]
    assert "4 coordinates" in problems[0][1] and "outside [0, 1]" in problems[1][1] and "class 4 outside 0..1" in problems[2][1]
    assert InstanceSegmentationTask.check_record(root, rec, 40, 20, index["classes"], _cfg().data) == []
    # the task reads it by data.format
    assert get_task_class(TASK).read(root, _cfg(root=str(root), format="yolo").data)["train"][0]["boxes"] == rec["boxes"]


# ---------------------------------------------------------------- augmentation

def test_masks_follow_flips_and_crops_with_their_boxes(tmp_path):
    """A flip and a crop move boxes and masks together; an instance cropped away goes with its mask."""
    rec = {"image": "x.png", "image_id": 3, "width": 64, "height": 64, "boxes": [[4, 6, 14, 20], [10, 18, 30, 28], [40, 40, 60, 60]],
           "labels": [0, 1, 1], "iscrowd": [0, 0, 0],
           "segments": [{"label": 0, "segmentation": _rle(_box(4, 6, 14, 20, 64, 64)), "iscrowd": 0},
                        {"label": 1, "segmentation": [[10.0, 18.0, 30.0, 18.0, 30.0, 28.0, 10.0, 28.0]], "iscrowd": 0},
                        {"label": 1, "segmentation": _rle(_box(40, 40, 60, 60, 64, 64)), "iscrowd": 0}]}
    augment = [{"__class_fullname__": "HorizontalFlip", "p": 1.0}, {"__class_fullname__": "Crop", "x_min": 32, "y_min": 0, "x_max": 64, "y_max": 32, "p": 1.0}]
    tf = from_dict(to_dict(InstanceSegmentationTask.compose(augment, 32, (0, 0, 0), (1, 1, 1), train=True)))  # as the pipeline stores it
    _, target, _ = _task().make_sample(np.zeros((64, 64, 3), np.uint8), rec, tmp_path, tf, 0)
    assert target["labels"].tolist() == [1, 2]  # the third object (bottom right, flipped to bottom left) is cropped away
    # flip: x -> 64 - x; crop: x -> x - 32
    assert target["boxes"].tolist() == [[18.0, 6.0, 28.0, 20.0], [2.0, 18.0, 22.0, 28.0]]
    for box, mask in zip(target["boxes"].tolist(), target["masks"]):
        ys, xs = np.nonzero(mask.numpy())
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box


# ---------------------------------------------------------------- metrics

class _Fixed(torch.nn.Module):
    def __init__(self, outputs):
        super().__init__()
        self.outputs = outputs

    def forward(self, images):
        return self.outputs


def _output(instances, size=(60, 60)):
    """Mask R-CNN outputs (network pixels = original pixels here) for (mask, class index, score) triples."""
    masks = [torch.as_tensor(m, dtype=torch.float32)[None] for m, _, _ in instances]
    boxes = [mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))).tolist() for m, _, _ in instances]
    return {"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([c + 1 for _, c, _ in instances], dtype=torch.int64),
            "scores": torch.tensor([s for _, _, s in instances], dtype=torch.float32),
            "masks": torch.stack(masks) if masks else torch.zeros((0, 1, *size))}


def _evaluate(task, records, outputs):
    ev = task.evaluator(CPU, records)
    metas = [{"index": i, "image_id": r["image_id"], "width": r["width"], "height": r["height"]} for i, r in enumerate(records)]
    ev.update(_Fixed(outputs), (torch.zeros(len(records), 3, 60, 60), None, metas))
    return ev.compute(), ev


def test_an_oracle_scores_one_and_a_hand_made_case_matches_pycocotools(tmp_path):
    root = _coco_root(tmp_path)
    records = get_task_class(TASK).read(root, _cfg(root=str(root)).data)["val"]
    task = _task()
    oracle = _output([(_box(5, 5, 20, 20), 0, 0.9), (_box(30, 10, 50, 30), 1, 0.8)])
    metrics, _ = _evaluate(task, records, [oracle])
    assert metrics["mask_map"] == pytest.approx(1.0) and metrics["box_map"] == pytest.approx(1.0)
    assert metrics["mask_ap/a"] == pytest.approx(1.0) and metrics["mask_ap/b"] == pytest.approx(1.0)
    # hand-made: class a found exactly (0.9), a false positive of class a above it (0.95), a detection on the crowd
    # region (ignored, as COCO does), class b's mask too small (IoU 0.76: matched at thresholds 0.50..0.75)
    made = _output([(_box(5, 5, 20, 20), 0, 0.9), (_box(22, 0, 28, 6), 0, 0.95), (_box(0, 31, 60, 40), 0, 0.99),
                    (_box(30, 10, 49, 26), 1, 0.8)])
    metrics, ev = _evaluate(task, records, [made])
    # class a: at recall 1 precision 1/2 -> interpolated precision 0.5 at all 101 recall points
    assert metrics["mask_ap/a"] == pytest.approx(0.5)
    # class b: matched at IoU thresholds 0.50..0.75 (6 of 10)
    assert metrics["mask_ap/b"] == pytest.approx(0.6)
    assert metrics["mask_map"] == pytest.approx(0.55) and metrics["mask_map_50"] == pytest.approx(0.75)
    assert metrics["mask_map_75"] == pytest.approx(0.75)
    # the files the pipeline writes re-score with pycocotools to the same numbers (segm and bbox)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    outputs = task.prediction_outputs({}, ev)
    for name in ("predictions", "ground_truth"):
        (tmp_path / f"{name}.json").write_text(json.dumps(outputs[name]))
    assert all(isinstance(p["segmentation"]["counts"], str) for p in outputs["predictions"])
    gt = COCO(str(tmp_path / "ground_truth.json"))
    for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
        coco_eval = COCOeval(gt, gt.loadRes(str(tmp_path / "predictions.json")), iou_type)
        coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()
        assert coco_eval.stats[0] == pytest.approx(metrics[f"{prefix}_map"], abs=1e-9)
        assert coco_eval.stats[1] == pytest.approx(metrics[f"{prefix}_map_50"], abs=1e-9)
    assert instance_metrics(outputs["ground_truth"], outputs["predictions"], ["a", "b"])[0]["mask_map"] == pytest.approx(metrics["mask_map"])


def test_no_detections_score_zero(tmp_path):
    root = _coco_root(tmp_path)
    records = get_task_class(TASK).read(root, _cfg(root=str(root)).data)["val"]
    metrics, ev = _evaluate(_task(), records, [_output([])])
    assert metrics["mask_map"] == 0.0 and metrics["box_map"] == 0.0 and metrics["mask_ap/b"] == 0.0 and ev.results == []


# ---------------------------------------------------------------- post-processing and serving

def test_postprocess_keeps_boxes_and_masks_at_the_original_size():
    # the detector was given the original image: torchvision's transform pasted boxes and masks back at its size
    task = _task(image_size=8)
    probs = torch.zeros(1, 1, 20, 30)
    probs[0, 0, :, :15] = 0.9  # left half of the image
    out = {"boxes": torch.tensor([[0.0, 0.0, 15.0, 21.0]]), "labels": torch.tensor([2]), "scores": torch.tensor([0.7]), "masks": probs}
    (result,) = task.postprocess([out], [(20, 30)])
    assert result["boxes"].tolist() == [[0.0, 0.0, 15.0, 20.0]] and result["labels"].tolist() == [1]  # clipped to the image
    assert result["masks"].shape == (1, 20, 30) and result["masks"].dtype == torch.bool
    assert result["masks"][0, :, :15].all() and not result["masks"][0, :, 15:].any()
    row = task.format_result(result)
    assert row["labels"] == ["b"] and row["scores"] == [0.7]
    decoded = mask_utils.decode(row["masks"][0])
    assert decoded.shape == (20, 30) and np.array_equal(decoded.astype(bool), result["masks"][0].numpy())
    json.dumps(row)
    (empty,) = task.postprocess([{k: v[:0] for k, v in out.items()}], [(5, 7)])
    assert empty["masks"].shape == (0, 5, 7) and task.format_result(empty)["masks"] == []


# ---------------------------------------------------------------- configuration

def test_model_configuration_errors_name_the_key(monkeypatch):
    monkeypatch.setattr("visionpipe.tasks.detection.close_matches", lambda *a, **k: "")  # difflib over every timm name is slow
    with pytest.raises(ConfigError, match=r"instance_segmentation\.model\.backbone: unknown timm model 'resnet1000'"):
        _task(backbone="resnet1000").build_model()
    with pytest.raises(ConfigError, match=r"instance_segmentation\.model\.name: with a timm backbone the model is 'maskrcnn'"):
        _task(name="fcos").build_model()
    with pytest.raises(ConfigError, match=r"'maskrcnn_resnet5_fpn' is not a torchvision Mask R-CNN builder.*maskrcnn_resnet50_fpn"):
        _task(name="maskrcnn_resnet5_fpn", backbone=None, kwargs={}).build_model()
    with pytest.raises(ConfigError, match=r"mask_head_channels: only for 'maskrcnn'"):
        _task(name="maskrcnn_resnet50_fpn", backbone=None, kwargs={"mask_head_channels": 32}).build_model()
    for key in ("box_head_dim", "fpn_channels", "anchor_scale"):  # not silently ignored by a builder
        with pytest.raises(ConfigError, match=rf"instance_segmentation\.model\.kwargs\.{key}: only for 'maskrcnn'"):
            _task(name="maskrcnn_resnet50_fpn", backbone=None, kwargs={key: 32}).build_model()
    with pytest.raises(ConfigError, match=r"instance_segmentation\.data\.format"):
        _cfg(format="masks")


def test_mask_head_channels_and_torchvision_builders_build():
    model = _task(kwargs={"fpn_channels": 32, "mask_head_channels": 16, "box_head_dim": 64, "box_batch_size_per_image": 32}).build_model()
    assert model.roi_heads.mask_head[0][0].out_channels == 16 and model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3
    assert model.roi_heads.box_head.fc6.in_features == 32 * 7 * 7 and model.roi_heads.box_head.fc7.out_features == 64
    default = _task(kwargs={"fpn_channels": 32}).build_model()  # torchvision's head sizes
    assert default.roi_heads.mask_head[0][0].out_channels == 256 and default.roi_heads.box_head.fc7.out_features == 1024
    assert model.roi_heads.box_predictor.cls_score.out_features == 3 and model.roi_heads.fg_bg_sampler.batch_size_per_image == 32
    builder = _task(name="maskrcnn_resnet50_fpn", backbone=None, kwargs={}).build_model()
    assert builder.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3 and builder.transform.min_size == (60,)


# ---------------------------------------------------------------- the whole pipeline

def _kedro(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(KEDRO_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "kedro"), *args], cwd=project, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_kedro_run_writes_rescorable_outputs_and_registers_the_model(tmp_path):
    import mlflow
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    tiny = TINY[TASK]
    params = [f"{TASK}.data.builtin.{k}={v}" for k, v in tiny["data"]["builtin"].items()]
    params += [f"{TASK}.train.{k}={v}" for k, v in tiny["train"].items()]
    params += [f"{TASK}.data.num_workers=0", f"{TASK}.train.device=cpu", f"{TASK}.train.progress_bar=false"]
    _kedro(project, "run", f"--pipelines={TASK}", f"--params={','.join(params)}")

    metrics = json.loads((project / f"data/08_reporting/{TASK}/all_metrics.json").read_text())
    assert {"mask_map", "mask_map_50", "mask_map_75", "box_map", "box_map_50", "mask_ap/circle"} <= set(metrics)
    out = project / f"data/07_model_output/{TASK}"
    gt = json.loads((out / "ground_truth.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert all(a["segmentation"] for a in gt["annotations"]) and len(gt["images"]) == tiny["data"]["builtin"]["val_images"]
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} == set(p) for p in predictions)
    if predictions:
        coco = COCO(str(out / "ground_truth.json"))
        for iou_type, name in (("segm", "mask_map"), ("bbox", "box_map")):
            ev = COCOeval(coco, coco.loadRes(str(out / "predictions.json")), iou_type)
            ev.evaluate(), ev.accumulate(), ev.summarize()
            assert ev.stats[0] == pytest.approx(metrics[name], abs=1e-6)
    assert {p.name for p in (project / f"data/08_reporting/{TASK}/plots").glob("*.png")} == {
        "val_instances.png", "mask_pr_curves.png", "confusion_matrix.png", "results.png", "data_quality.png"}

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        version = client.get_model_version_by_alias("visionpipe-instance-segmentation", "champion")
        assert version.tags["metric.mask_map"] == str(metrics["mask_map"])
        run = client.get_run(version.run_id)
        assert run.data.tags["visionpipe.task"] == TASK and run.data.metrics["mask_map"] == pytest.approx(metrics["mask_map"])
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {"plots/val_instances.png", "plots/mask_pr_curves.png"}
    finally:
        mlflow.set_tracking_uri(None)

    # the registered pyfunc: boxes, labels, scores and RLE masks at each image's own size
    image = tmp_path / "odd.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)).save(image)
    script = ("import json, sys, mlflow, pandas as pd\n"
              f"mlflow.set_tracking_uri('sqlite:///{project / 'mlflow.db'}')\n"
              "m = mlflow.pyfunc.load_model('models:/visionpipe-instance-segmentation@champion', model_config={'allow_file_paths': True})\n"
              "print(json.dumps(m.predict(pd.DataFrame({'image': sys.argv[1:]})).to_dict(orient='records')))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(image)], capture_output=True, text=True, cwd=project, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(row) == {"boxes", "labels", "scores", "masks"} and len(row["masks"]) == len(row["boxes"]) == len(row["scores"])
    assert all(m["size"] == [50, 70] for m in row["masks"])

    # torchvision's Mask R-CNN exports (preprocessing, NMS and mask pasting inside); export_onnx checks it
    # against torch through the task's postprocess with onnxruntime
    pytest.importorskip("onnxruntime")
    from visionpipe.serving.export import export_onnx

    assert export_onnx(project / f"data/06_models/{TASK}/model", tmp_path / "model.onnx").is_file()


def test_mask_pr_curves_name_each_class_by_its_own_sparse_category_id(monkeypatch):
    """COCO ids need not be 1..K: each curve is labelled with the name of its own category id (issue 22:
    ``classes[cat_id - 1]`` named the wrong class, or failed, on sparse ids). The curves are drawn from the COCOeval
    the evaluator already ran: nothing is evaluated a second time."""
    import visionpipe.engine.coco as coco

    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
    other = [[16.0, 16.0, 26.0, 16.0, 26.0, 26.0, 16.0, 26.0]]
    gt = {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0, "segmentation": square},
                          {"id": 2, "image_id": 1, "category_id": 3, "bbox": [16, 16, 10, 10], "area": 100, "iscrowd": 0, "segmentation": other}],
          "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
    preds = [{"image_id": 1, "category_id": 7, "bbox": [2, 2, 10, 10], "score": 0.9, "segmentation": square},
             {"image_id": 1, "category_id": 3, "bbox": [16, 16, 10, 10], "score": 0.8, "segmentation": other}]
    _, segm_eval = instance_metrics(gt, preds, ["cat", "dog"])
    evaluator = type("Evaluated", (), {"ground_truth": gt, "last_eval": segm_eval})()
    import visionpipe.tasks.instance_segmentation as module

    for where in (coco, module):
        monkeypatch.setattr(where, "coco_evaluate", lambda *a, **k: pytest.fail("COCOeval ran a second time"))
    fig = InstanceSegmentationTask.evaluation_figures(evaluator)["mask_pr_curves"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["cat (AP50 1.000)", "dog (AP50 1.000)"]


def test_val_fraction_is_refused_not_ignored():
    """COCO and YOLO instance data bring their own val split: data.val_fraction was accepted and silently ignored
    (issue 22); now it is a one-line config error naming the key."""
    from support import task_params

    with pytest.raises(ConfigError, match=r"instance_segmentation\.data\.val_fraction: .*not used by instance segmentation"):
        parse_task_config(TASK, task_params(TASK, data={"val_fraction": 0.3}))
    cfg = parse_task_config(TASK, task_params(TASK))
    assert "val_fraction" not in cfg.data.model_dump()  # what the spec and MLflow see: no key that does nothing
    assert parse_task_config(TASK, cfg.model_dump()) == cfg  # a dumped config validates again


def test_yolo_segments_with_data_yaml_and_a_test_split(tmp_path):
    """Instance segmentation reads YOLO through the one YOLO reader: data.yaml names the splits (test included)
    and the class names, as for detection."""
    root = tmp_path / "yolo"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames: {0: cat, 1: dog}\n")
    for split in ("train", "val", "test"):
        save_image(root / "images" / split / "a.png", size=(40, 20))
        (root / "labels" / split).mkdir(parents=True)
        (root / "labels" / split / "a.txt").write_text("1 0.1 0.1 0.5 0.1 0.5 0.9\n")
    index = get_task_class(TASK).read(root, _cfg(root=str(root), format="yolo").data)
    assert index["classes"] == ["cat", "dog"] and set(index) >= {"train", "val", "test"}
    assert index["test"][0]["segments"][0]["segmentation"] == [[4.0, 2.0, 20.0, 2.0, 20.0, 18.0]]
