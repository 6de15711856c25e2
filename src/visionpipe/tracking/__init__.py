"""MLflow glue that kedro-mlflow's datasets do not cover: live epoch metrics, lineage, registry, pyfunc."""
