"""Augmentation: compose the albumentations pipelines from parameters."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
