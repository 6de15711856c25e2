"""The task contract: every task implements it completely, and nothing outside tasks/ branches on a task's name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from visionpipe import stages
from visionpipe.tasks import TASKS
from visionpipe.tasks import parse_task_config
from visionpipe.errors import ConfigError
from visionpipe.tasks import get_task, get_task_class
from visionpipe.tasks.base import Task, mandatory

SRC = Path(__file__).resolve().parents[1] / "src" / "visionpipe"


def _task_name_branches(path: Path, base: Path = SRC) -> list[str]:
    """Comparisons with a task name, and dict literals keyed by task names (a COCO record's single
    "segmentation" key is no branch), in one source file."""
    tree = ast.parse(path.read_text())
    names = set(TASKS)

    def is_name(node) -> bool:
        if isinstance(node, ast.Constant) and node.value in names:
            return True
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in node.elts)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(is_name(n) for n in [node.left, *node.comparators]):
            found.append(f"{path.relative_to(base)}:{node.lineno}: comparison with a task name")
        elif isinstance(node, ast.Dict) and sum(k is not None and is_name(k) for k in node.keys) >= 2:
            found.append(f"{path.relative_to(base)}:{node.lineno}: dict keyed by task names")
        elif isinstance(node, ast.match_case) and is_name(getattr(node.pattern, "value", None)):
            found.append(f"{path.relative_to(base)}:{node.lineno}: match on a task name")
    return found


def test_nothing_outside_tasks_branches_on_a_task_name():
    files = [p for p in SRC.rglob("*.py") if "tasks" not in p.relative_to(SRC).parts]
    assert len(files) > 20
    found = [hit for p in files for hit in _task_name_branches(p)]
    assert not found, "ask the task object instead:\n" + "\n".join(found)


def test_the_branch_detector_finds_branches(tmp_path):
    sample = tmp_path / "probe.py"
    sample.write_text('def f(task, ann):\n    if task == "detection":\n        return {"segmentation": ann["segmentation"]}\n'
                      '    return {"classification": 1, "detection": 2}[task]\n')
    assert len(_task_name_branches(sample, tmp_path)) == 2  # the COCO key ann["segmentation"] is no branch


def test_every_task_module_defines_the_whole_contract():
    assert set(TASKS) >= {"classification", "detection", "segmentation"}
    for name in TASKS:
        cls = get_task_class(name)
        assert issubclass(cls, Task) and cls.name == name
        assert cls.missing() == [], f"{name} leaves out {cls.missing()}"
        assert cls.primary_metric in cls.metrics
    with pytest.raises(ValueError, match="Unknown task 'detektion'.*detection"):
        get_task_class("detektion")


def test_a_new_task_implements_fewer_than_half_of_the_contract_and_a_missing_piece_is_named():
    """The roles (data, samples, model, evaluation, serving) give defaults for all but a few members; a task that
    leaves a mandatory one out is named by ``missing`` and cannot be built."""
    members = [n for n in dir(Task) if not n.startswith("_") and n not in ("missing",)]
    assert 2 * len(mandatory()) < len(members), (len(mandatory()), len(members))
    complete = get_task_class("classification")
    broken = type("BrokenTask", (complete,), {"loss": None, "plots": None, "metrics": ()})
    broken.__abstractmethods__ = frozenset({"loss", "plots"})  # what ABCMeta computes for a class that never defined them
    assert broken.missing() == ["loss", "metrics", "plots"]
    with pytest.raises(TypeError, match="abstract"):
        broken({"classes": ["a"]})
    bare = type("BareTask", (Task,), {"record_labels": classmethod(lambda cls, rec: [0])})
    assert bare.missing() == sorted([*mandatory(), "relabel"])  # records that list labels must be relabelled too


# every mandatory method, and where the end-to-end contract test below calls it for every task
EXERCISED = {
    "write_builtin": "stages.ingest (the built-in data)", "make_sample": "stages.train", "build_model": "stages.train",
    "loss": "stages.train", "evaluator": "stages.evaluate", "postprocess": "stages.evaluate and Predictor.predict_arrays",
    "prediction_outputs": "task_obj.prediction_outputs", "plots": "cls.plots",
}


def test_the_end_to_end_test_exercises_every_mandatory_method():
    assert set(EXERCISED) == set(Task.__abstractmethods__)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every task trained for one tiny epoch on its built-in data and evaluated."""
    from support import task_params

    out = {}
    for task in TASKS:
        tmp = tmp_path_factory.mktemp(task)
        cfg = parse_task_config(task, task_params(task, tmp))
        index = stages.ingest(task, cfg)
        aug = stages.augmentation(task, cfg)
        bundle, history = stages.train(task, index, aug, cfg, callbacks=[])
        metrics, evaluator, task_obj = stages.evaluate(task, index, aug, bundle, cfg)
        out[task] = dict(cfg=cfg, index=index, aug=aug, bundle=bundle, history=history, metrics=metrics, evaluator=evaluator, task=task_obj)
    return out


@pytest.mark.slow  # trains
@pytest.mark.parametrize("task", TASKS)
def test_task_contract_end_to_end(trained, task, tmp_path):
    import pandas as pd

    from visionpipe.serving.predictor import Predictor

    t = trained[task]
    task_obj, index = t["task"], t["index"]
    cls = type(task_obj)
    # metrics: the primary one, and nothing registry.metric could not name (timings and settings aside)
    assert cls.primary_metric in t["metrics"]
    scored = set(t["metrics"]) - {"eval_time_s", "val_images", "evaluation"}
    assert all(cls.is_metric(k) for k in scored), sorted(k for k in scored if not cls.is_metric(k))
    if cls.per_class_metric:
        assert all(f"{cls.per_class_metric}/{c}" in t["metrics"] for c in index["classes"][1:])
    assert all(cls.is_metric(k) for k in cls.metric_names(index["classes"]))
    assert t["metrics"]["evaluation"] == t["cfg"].evaluation.model_dump()
    # outputs and plots are exactly what the task declares
    outputs = task_obj.prediction_outputs(index, t["evaluator"])
    assert set(outputs) == set(cls.output_datasets)
    figures = cls.plots(outputs, index, pd.DataFrame(t["history"]))
    drawn_at_evaluation = task_obj.evaluation_figures(t["evaluator"])  # from the evaluator's own COCOeval, not a second one
    assert set(drawn_at_evaluation) == set(cls.evaluation_plots) and not set(figures) & set(drawn_at_evaluation)
    assert set(figures) | set(drawn_at_evaluation) == set(cls.plot_names)
    # serving: raw images of odd sizes in, one JSON-ready row out per image, at the image's own size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8), rng.integers(0, 256, size=(64, 40, 3), dtype=np.uint8)]
    predictor = Predictor(t["bundle"])
    results = predictor.predict_arrays(images)
    assert len(results) == 2
    rows = predictor.predict(images)
    for row, image in zip(rows, images):
        for value in row.values():
            if isinstance(value, np.ndarray):
                assert value.shape[:2] == image.shape[:2]
        json.dumps({k: v for k, v in row.items() if not isinstance(v, np.ndarray)})
    # the registry metric is validated against the task's metrics
    params = t["cfg"].model_dump()
    params["registry"]["metric"] = "accuracy_of_doom"
    with pytest.raises(ConfigError, match=rf"{task}\.registry\.metric: unknown metric 'accuracy_of_doom'; {task} evaluation reports"):
        parse_task_config(task, params)


@pytest.mark.slow  # exports four models
@pytest.mark.parametrize("task", TASKS)
def test_the_onnx_engine_answers_as_the_torch_engine(trained, task, tmp_path):
    """Every task exports; ONNX Runtime's outputs go through the task's one postprocess, so `predict --engine onnx`
    and the served pyfunc give the torch engine's boxes, labels, scores and masks (TTA on where a task has it)."""
    import copy

    from visionpipe.data.images import load_rgb
    from visionpipe.serving.bundle import ONNX_FILE, save_bundle
    from visionpipe.serving.export import export_bundle
    from visionpipe.serving.predictor import Predictor

    t = trained[task]
    bundle = copy.deepcopy(t["bundle"])
    ev = bundle["spec"]["evaluation"]
    if "tta" in ev:
        ev["tta"] = True
    if "score_threshold" in ev:
        ev["score_threshold"] = 0.01  # one tiny epoch: keep its low-confidence detections so there is something to compare
    folder = tmp_path / "bundle"
    save_bundle(bundle, folder)
    export_bundle(bundle, folder / ONNX_FILE, check=False)
    root = Path(t["index"]["root"])
    images = [load_rgb(root / rec["image"]) for rec in t["index"]["val"][:3]]
    images.append(np.random.default_rng(0).integers(0, 256, size=(37, 53, 3), dtype=np.uint8))  # odd size
    torch_engine = Predictor.from_folder(folder, engine="torch", batch_size=1)
    onnx_engine = Predictor.from_folder(folder, engine="auto", batch_size=1)
    assert (torch_engine.engine, onnx_engine.engine, onnx_engine.model) == ("torch", "onnx", None)  # auto on CPU: ONNX
    compared = 0
    for image in images:
        want, got = torch_engine.predict_arrays([image])[0], onnx_engine.predict_arrays([image])[0]
        assert set(want) == set(got)
        assert t["task"].compare_results(want, got) is None
        compared += len(want.get("scores", [1]))
    assert compared > 0
    assert onnx_engine.predict(images[:1])[0].keys() == torch_engine.predict(images[:1])[0].keys()


@pytest.mark.slow  # trains (the trained fixture)
@pytest.mark.parametrize("task", TASKS)
def test_a_typo_in_model_kwargs_names_the_key(trained, task):
    spec = dict(trained[task]["bundle"]["spec"])
    spec["model"] = {**spec["model"], "kwargs": {**spec["model"]["kwargs"], "drop_ratte": 0.1}}
    with pytest.raises(ConfigError, match=rf"{task}\.model\.kwargs\.drop_ratte: not accepted by the model"):
        get_task(spec).build_model()


def test_keys_a_task_does_not_use_are_errors():
    from support import task_params

    with pytest.raises(ConfigError, match=r"classification\.losses: unknown key"):
        parse_task_config("classification", task_params("classification", losses=[{"name": "focal"}]))
    with pytest.raises(ConfigError, match=r"classification\.evaluation\.score_threshold: unknown key"):
        parse_task_config("classification", task_params("classification", evaluation={"score_threshold": 0.3}))
    with pytest.raises(ConfigError, match=r"classification\.data\.ignore_index: unknown key"):
        parse_task_config("classification", task_params("classification", data={"ignore_index": 0}))
    with pytest.raises(ConfigError, match=r"detection\.data\.format"):
        parse_task_config("detection", task_params("detection", data={"format": "masks"}))


def test_split_seed_splits_user_data_and_builtin_seed_does_not(tmp_path):
    from support import save_image, task_params

    for c in ("a", "b"):
        for i in range(10):
            save_image(tmp_path / "data" / c / f"{i}.png")
    val = {}
    for key, override in {"base": {}, "builtin_seed": {"builtin": {"seed": 99}}, "split_seed": {"split_seed": 7}}.items():
        cfg = parse_task_config("classification", task_params("classification", data={"root": str(tmp_path / "data"), **override}))
        val[key] = [r["image"] for r in stages.ingest("classification", cfg)["val"]]
    assert val["base"] == val["builtin_seed"]
    assert val["base"] != val["split_seed"]


@pytest.mark.slow  # trains
def test_evaluation_settings_are_read_at_evaluation_time(trained):
    t = trained["detection"]
    cfg = t["cfg"]
    strict = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"score_threshold": 0.999, "max_detections": 3})})
    metrics, evaluator, _ = stages.evaluate("detection", t["index"], t["aug"], t["bundle"], strict)
    assert metrics["evaluation"]["score_threshold"] == 0.999
    assert all(r["score"] >= 0.999 for r in evaluator.results)
    per_image = {}
    for r in evaluator.results:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values(), default=0) <= 3
