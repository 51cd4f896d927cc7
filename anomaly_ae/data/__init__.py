from anomaly_ae.data.errors import DatasetError
from anomaly_ae.data.loading import DEFAULT_SIZE, ProlivData, Splits, load_proliv, load_site_pool, make_splits
from anomaly_ae.data.site import SitePool
from anomaly_ae.data.synthetic import make_dataset

__all__ = ["DEFAULT_SIZE", "DatasetError", "ProlivData", "SitePool", "Splits", "load_proliv", "load_site_pool", "make_splits", "make_dataset"]
