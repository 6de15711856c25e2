"""`kedro run` splits work into one session (one MLflow run) per task."""

from visionpipe.cli import _expand, _scopes


def test_default_run_is_one_session_per_task():
    assert _expand(None, []) == ["classification", "detection", "segmentation"]
    assert _expand("detection", []) == ["detection"]
    assert _scopes(_expand(None, ["__default__"]), []) == [("classification", []), ("detection", []), ("segmentation", [])]


def test_stage_pipelines_run_per_task_unless_namespaces_are_given():
    assert _scopes(["training"], []) == [("training", ["classification"]), ("training", ["detection"]), ("training", ["segmentation"])]
    assert _scopes(["training"], ["detection"]) == [("training", ["detection"])]
