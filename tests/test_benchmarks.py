"""The benchmarks run by hand (docs/benchmarks.md) still run against today's code: each is called at a tiny size."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_data_path_benchmark_runs(monkeypatch, tmp_path, capsys):
    """benchmarks/data_path.py called ``get_task`` with an argument it does not take (issue 22): it failed at once."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", ["data_path.py"])
    import data_path

    monkeypatch.setattr(data_path, "tempfile", SimpleNamespace(mkdtemp=lambda: str(tmp_path)))  # its data in tmp_path

    data_path.main(["--images", "4", "--image-size", "64"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["task"] for r in rows] == ["classification", "detection", "segmentation"]
    assert all(r["images"] == 4 and r["images_per_s_per_worker"] > 0 for r in rows)
