"""The detector zoo: autoencoders and the kNN distance detector. Importing this package registers every variant."""
from anomaly_ae.models import bn_linear_ae, conv_ae, cutpaste, draem, knn, memae, pca_ae, unet, vae  # noqa: F401  (registration)
from anomaly_ae.models.registry import Reconstruction, build_model, list_models, model_spec, register_model

__all__ = ["Reconstruction", "build_model", "list_models", "model_spec", "register_model"]
