"""Ingestion: read the user's data (or generate the built-in data) into the internal index."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
