"""The registered detector as MLflow models-from-code: MLflow runs this file to load the model.

Nothing is pickled: the weights and score distributions load from a tensors-only checkpoint.
"""
from mlflow.models import set_model

from anomaly_ae.tracking.serving import ProlivDetector

set_model(ProlivDetector())
