"""Validation: check every file and annotation, report findings, apply the strict/skip policy."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
