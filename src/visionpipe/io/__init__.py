"""Kedro datasets for what the stock ones do not write safely: model bundles and atomic JSON."""

from visionpipe.io.datasets import AtomicJSONDataset, ModelBundleDataset

__all__ = ["AtomicJSONDataset", "ModelBundleDataset"]
