"""`dvc add` / `dvc status` time for many small image files vs the same images as tar shards (run by hand).

Builds ``--files`` small JPEGs as an imagefolder dataset in a fresh git+DVC repository, times
``dvc add`` and ``dvc status`` on the folder, shards it with ``visionpipe shard``'s writer, and times
the same two commands on the shard folder. Prints one JSON line per layout.

    python benchmarks/dvc_shards.py --files 20000 --shard-size 1000
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import emit


def _run(repo: Path, *cmd: str) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@example.com", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@example.com"}
    start = time.perf_counter()
    proc = subprocess.run(list(cmd), cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def _make_files(root: Path, n: int, classes: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):  # distinct content per file, so DVC cannot deduplicate
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        (root / f"class{i % classes}" / f"{i:07d}.jpg").write_bytes(buf.getvalue())


def main() -> None:
    """Time both layouts and print one JSON line for each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--workdir", default=None, help="Default: a temporary folder, removed afterwards.")
    args = parser.parse_args()

    from visionpipe.data.formats import read_imagefolder
    from visionpipe.data.shards import read_shards, write_shards

    work = Path(args.workdir or tempfile.mkdtemp(prefix="dvc_shards_"))
    try:
        repo = work / "repo"
        repo.mkdir(parents=True)
        _run(repo, "git", "init", "-q")
        _run(repo, "dvc", "init", "-q")
        files = repo / "data" / "files"
        _make_files(files, args.files, args.classes, args.image_size)
        index = read_imagefolder(files, 0.1, 0)
        index.update(task="classification", format="imagefolder", root=str(files))
        start = time.perf_counter()
        write_shards(index, repo / "data" / "shards", args.shard_size)
        shard_s = time.perf_counter() - start
        start = time.perf_counter()
        read_shards(repo / "data" / "shards", "classification")  # what data.format: shards does at ingestion
        read_s = time.perf_counter() - start
        for layout in ("files", "shards"):
            target = f"data/{layout}"
            n = sum(1 for p in (repo / target).rglob("*") if p.is_file())
            add_s = _run(repo, "dvc", "add", "-q", target)
            status_s = _run(repo, "dvc", "status", "-q")
            emit({"benchmark": "dvc_shards", "layout": layout, "images": args.files, "files_tracked": n,
                  "dvc_add_s": round(add_s, 2), "dvc_status_s": round(status_s, 2),
                  **({"write_shards_s": round(shard_s, 2), "read_index_s": round(read_s, 2)} if layout == "shards" else {})})
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
