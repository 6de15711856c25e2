"""A user's own data after the demo: quiet tools, run-control keys, the champion in the user's classes,
registered model names, pretrained weights from the hub cache."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_project_itself_declines_kedro_telemetry_and_dvc_analytics(monkeypatch):
    from kedro_telemetry.plugin import _check_for_telemetry_consent

    for var in ("KEDRO_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(var, raising=False)
    assert _check_for_telemetry_consent(ROOT) is False  # from the committed .telemetry, not an environment variable
    assert subprocess.run(["git", "check-ignore", "-q", ".telemetry"], cwd=ROOT).returncode == 1  # committed, not ignored
    assert "analytics = false" in (ROOT / ".dvc/config").read_text()


def test_run_control_keys_are_tags_and_never_changed_params():
    from visionpipe.hooks.mlflow_runs import is_run_control
    from visionpipe.hooks.run_state import changed_params

    assert is_run_control("classification.train.resume") and is_run_control("detection.data.num_workers")
    assert not is_run_control("classification.train.epochs")
    logged = {"classification.train.resume": "False", "classification.train.device": "cuda", "classification.train.lr": "0.1"}
    block = {"train": {"resume": True, "device": "cpu", "lr": 0.2}}
    assert changed_params(logged, "classification", block) == ["classification.train.lr"]
