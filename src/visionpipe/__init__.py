"""visionpipe: reproducible computer-vision training on Kedro, DVC and MLflow."""

__version__ = "0.1.0"

TASKS = ("classification", "detection", "segmentation")
