"""Evaluation: metrics over the whole validation split, predictions anyone can re-score, plots."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
