"""`kedro run` splits work into one session (one MLflow run) per task."""

from visionpipe.tasks import TASKS
from visionpipe.cli import _expand, _scopes


def test_default_run_is_one_session_per_task():
    assert _expand(None, []) == list(TASKS)
    assert list(TASKS)[:3] == ["classification", "detection", "segmentation"] and "instance_segmentation" in TASKS
    assert _expand("detection", []) == ["detection"]
    assert _scopes(_expand(None, ["__default__"]), []) == [(task, []) for task in TASKS]


def test_stage_pipelines_run_per_task_unless_namespaces_are_given():
    assert _scopes(["training"], []) == [("training", [task]) for task in TASKS]
    assert _scopes(["training"], ["detection"]) == [("training", ["detection"])]
