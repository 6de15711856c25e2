"""One sweep point, in its own process: ``python -m visionpipe.experiments.sweep_point <spec.json>``.

The point runs the task's Kedro pipeline in a session whose project path is the point's own folder
while the configuration comes from the real project (``conf_source``): Kedro makes the catalog's
relative paths absolute under the project path, so every point writes its own
``data/02_intermediate ... 08_reporting`` and no two points clobber each other; the parameters the
point changes arrive as Kedro runtime parameters (what ``kedro run --params`` sets). The MLflow
child run is opened before the session, so kedro-mlflow logs into it rather than starting its own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def run_point(spec: dict) -> None:
    """Run the pipeline of ``spec['task']`` for one point, inside the MLflow run ``spec['run_id']``."""
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    project, point_dir = Path(spec["project"]), Path(spec["point_dir"])
    bootstrap_project(project)
    point_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(point_dir)  # parameters holding relative paths (checkpoints) resolve inside the point too
    with mlflow.start_run(run_id=spec["run_id"]):
        with KedroSession.create(project_path=point_dir, conf_source=str(project / "conf"), env=spec.get("env"),
                                 runtime_params=spec["runtime_params"]) as session:
            session.run(pipeline_names=[spec["task"]])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the point process; the exit status tells the sweep whether the point succeeded."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    run_point(spec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
