"""MLflow glue that kedro-mlflow's datasets do not cover: live epoch metrics, lineage, registry and champion gate
(the pyfunc model itself is in ``visionpipe.serving``)."""
