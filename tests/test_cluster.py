"""Cluster-wide sweeps against a two-node Ray cluster (ray start; the session's `two_node_cluster`).
CI's cluster sweep, with its tracking server on PostgreSQL, is in test_postgres.py."""
import json

import pytest

from services import run_cli, tiny_sweep_args

pytestmark = pytest.mark.integration


# slow: CI runs a cluster sweep in test_postgres.py (the same two nodes, its tracking server on PostgreSQL);
# this one needs no PostgreSQL.
@pytest.mark.slow
def test_sweep_spreads_over_two_nodes_of_an_existing_cluster(two_node_cluster, tiny_data_dir, tmp_path):
    address, nodes, env = two_node_cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*tiny_sweep_args(tiny_data_dir, "cluster-test", uri, tmp_path / "ray"), "--address", address]
    done = run_cli(args, env, tmp_path / "sweep.log")
    assert done.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    used = set()
    for result in (tmp_path / "ray" / "cluster-test").glob("*/result.json"):
        used |= {json.loads(line)["node_id"] for line in result.read_text().splitlines() if line.strip()}
    assert used == nodes


# slow: 40 s, of which Ray's own retries of the refused connection take 20 s (no setting shortens them);
# CI's suite must stay under 10 minutes
@pytest.mark.slow
def test_joining_a_token_cluster_without_auth_mode_names_the_fix(two_node_cluster, tiny_data_dir, tmp_path):
    address, _, env = two_node_cluster
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    args = [*tiny_sweep_args(tiny_data_dir, "no-auth", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray"),
            "--address", address]
    done = run_cli(args, env, tmp_path / "sweep.log", timeout=180)
    out = (tmp_path / "sweep.log").read_text()
    assert done.returncode == 2, out[-3000:]
    assert f"--address {address}" in out and "RAY_AUTH_MODE=token" in out
