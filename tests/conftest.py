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


@pytest.fixture(scope="session")
def tiny_sweep(tiny_data_dir, tmp_path_factory):
    """One real sweep (Ray + Optuna + ASHA + MLflow) of the two reference start points and the three first seed
    baselines, with the reference detectors, shared by tests."""
    import contextlib
    import io
    from types import SimpleNamespace

    import ray

    import run_search

    tmp = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_search.main([
            "search", "--data", str(tiny_data_dir), "--num-samples", "5", "--epochs", "2", "--steps-per-epoch", "3",
            "--max-concurrent", "2", "--experiment", "itest", "--tracking-uri", uri,
            "--storage-path", str(tmp / "ray"), "--seed", "0", "--val-fraction", "0.2",
        ])
    ray.shutdown()
    return SimpleNamespace(code=code, out=out.getvalue(), uri=uri, experiment="itest", data=tiny_data_dir, tmp=tmp)


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the session (stopped and removed at the end, also on failure);
    tests create their own databases on it with ``postgres.create_database(name)``. Skipped, with the
    reason, only where PostgreSQL is not installed."""
    import shutil
    import tempfile
    from pathlib import Path

    from services import PostgresCluster

    # Not under pytest's tmp folder: it is private to this user, and as root the cluster runs as 'postgres'.
    cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="proliv-pg-")))
    reason = cluster.why_not()
    if reason:
        shutil.rmtree(cluster.root, ignore_errors=True)
        pytest.skip(f"no PostgreSQL here: {reason}")
    try:  # installed but failing to start is an error, never a skip
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def two_node_cluster(tmp_path_factory):
    """A Ray head and a second node on this machine, one CPU each, token auth; stopped by the pids started
    here. Yields (address, node ids, the env of a shell that joins it)."""
    from services import TwoNodeCluster

    cluster = TwoNodeCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        # Both on this machine. Ray swaps a loopback --node-ip-address for the host's own address
        # (services.resolve_ip_for_localhost), so the nodes cannot advertise 127.0.0.1 itself.
        assert len({n["ip"] for n in cluster.nodes.values()}) == 1
        yield cluster.address, set(cluster.nodes), cluster.env
    finally:
        cluster.stop()
