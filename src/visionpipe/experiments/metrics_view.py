"""`make metrics`: what `dvc metrics show` reports, one block per task, at most 120 columns wide.

DVC puts every metrics file in one table with a column per metric name: the four tasks (with their per-class
metrics) make it about 380 columns wide. Here each task's ``metrics.json`` is one heading and its metrics
wrapped under it. Extra arguments go to `dvc metrics show` (``-A``, ``--all-commits``, a path...).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WIDTH = 120


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def render(shown: dict, width: int = WIDTH) -> str:
    """``dvc metrics show --json`` output as text: per revision and file, ``<task>  <path>`` then
    ``name value`` pairs filling lines of at most ``width`` columns."""
    lines: list[str] = []
    for rev, entry in shown.items():
        for path, got in sorted(((entry or {}).get("data") or {}).items()):
            head = f"{Path(path).parent.name}  {path}" + (f"  @ {rev}" if rev and rev != "workspace" else "")
            lines.append(head)
            if "error" in got:
                lines.append(f"  cannot read: {got['error']}")
                continue
            line = ""
            for name, value in (got.get("data") or {}).items():
                item = f"{name} {_fmt(value)}"
                if line and 2 + len(line) + 2 + len(item) > width:
                    lines.append("  " + line)
                    line = ""
                line = f"{line}  {item}" if line else item
            if line:
                lines.append("  " + line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    proc = subprocess.run(["dvc", "metrics", "show", "--json", *args], capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr or proc.stdout)
        return proc.returncode
    print(render(json.loads(proc.stdout or "{}")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
