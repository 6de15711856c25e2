"""MLflow models-from-code entry: the registered model is rebuilt from code, never unpickled."""

from mlflow.models import set_model

from visionpipe.tracking.pyfunc import VisionPipeModel

set_model(VisionPipeModel())
