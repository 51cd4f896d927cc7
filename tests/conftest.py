import os

import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A small procedural dataset in the real layout (about 200 train crops)."""
    from anomaly_ae.data import make_dataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    make_dataset(root, scale=0.02, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_splits(tiny_data_dir, tmp_path_factory):
    from anomaly_ae.data import load_proliv, make_splits

    data = load_proliv(tiny_data_dir, cache_dir=tmp_path_factory.mktemp("cache"))
    return make_splits(data, val_normal_fraction=0.2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
