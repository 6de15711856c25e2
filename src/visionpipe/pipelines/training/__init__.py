"""Training: fit the task's model, keep the best checkpoint."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
