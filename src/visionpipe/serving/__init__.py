"""Serving: a trained model on raw images (``Predictor``), batch prediction over a folder, ONNX export and the
MLflow pyfunc that the registry logs."""
