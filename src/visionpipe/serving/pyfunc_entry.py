"""MLflow models-from-code entry: the registered model is rebuilt from code, never unpickled."""

from mlflow.models import set_model

from visionpipe.serving.pyfunc import VisionPipeModel

set_model(VisionPipeModel())
