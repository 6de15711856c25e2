"""`make metrics`: every metric of each task (``all_metrics.json``), one block per task, at most 120 columns wide.

Plain `dvc metrics show` lists each task's ``metrics.json``: its few headline metrics (the task's
``table_metrics``), one table of about 115 columns for the four tasks. The full set, per-class and ``test/``
metrics included, is ``all_metrics.json`` beside it (an out kept in git, not a DVC metrics file, or DVC's one
table would be about 380 columns wide): here each task's file is one heading and its metrics wrapped under it.
Extra arguments go to `dvc metrics show` (``-A``, ``--all-commits``, your own paths...).
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


# every task's full set of metrics (the catalog's ``<task>.metrics``)
ALL_METRICS = "data/08_reporting/*/all_metrics.json"


def targets(args: list[str], root: Path) -> list[str]:
    """The files to show: the paths among ``args`` when it names some, else every task's all_metrics.json under
    ``root`` (none: DVC's declared metrics files, metrics.json)."""
    if any(Path(a).suffix in (".json", ".yaml", ".yml", ".toml") or (root / a).is_dir() for a in args if not a.startswith("-")):
        return []
    return [p.relative_to(root).as_posix() for p in sorted(root.glob(ALL_METRICS))]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    proc = subprocess.run(["dvc", "metrics", "show", "--json", *args, *targets(args, Path.cwd())],
                          capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr or proc.stdout)
        return proc.returncode
    print(render(json.loads(proc.stdout or "{}")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
