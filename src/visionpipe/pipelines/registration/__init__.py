"""Registration: log the pyfunc model, register it, move the champion alias only when it is better."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
