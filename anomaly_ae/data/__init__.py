from anomaly_ae.data.loading import (
    DEFAULT_SIZE, DatasetError, ProlivData, Splits, load_proliv, make_splits,
)
from anomaly_ae.data.synthetic import make_dataset

__all__ = ["DEFAULT_SIZE", "DatasetError", "ProlivData", "Splits", "load_proliv", "make_splits", "make_dataset"]
