"""visionpipe: reproducible computer-vision training on Kedro, DVC and MLflow."""

import os

# Nothing phones home unless the user asks for it: albumentations' update check and MLflow's
# telemetry are off by default (Kedro's is switched off by the Makefile and CI).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from visionpipe import console  # noqa: E402

console.install_defaults()  # quiet logs unless VISIONPIPE_VERBOSE=1 (README, "What the terminal shows")

__version__ = "0.1.0"
