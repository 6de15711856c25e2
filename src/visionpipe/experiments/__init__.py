"""Experiments the Kedro/DVC/MLflow way: dvc.yaml from the pipelines, sweeps as nested MLflow runs,
reproducing a registered version, and DVC cache integrity checks."""
