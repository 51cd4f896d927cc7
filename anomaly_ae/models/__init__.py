"""The detector zoo. Importing this package imports every module in it, and so registers every variant:
adding one is a file here with one ``@register_model`` builder."""
import importlib
import pkgutil

from anomaly_ae.models.registry import Reconstruction, build_model, list_models, model_spec, register_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Reconstruction", "build_model", "list_models", "model_spec", "register_model"]
