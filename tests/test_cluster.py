"""Cluster-wide sweeps against real components started here, on loopback only:
a two-node Ray cluster (ray start) and an MLflow tracking server (mlflow server)."""
import json

import pytest
import ray

import run_search
from services import TwoNodeCluster, free_port, http_json, run_cli, start_mlflow_server, stop, tiny_sweep_args

pytestmark = pytest.mark.integration


@pytest.fixture
def two_node_cluster(tmp_path):
    """A Ray head and a second node on this machine, one CPU each; stopped by the pids started here."""
    cluster = TwoNodeCluster(tmp_path)
    try:
        cluster.start()
        # Both on this machine. Ray swaps a loopback --node-ip-address for the host's own address
        # (services.resolve_ip_for_localhost), so the nodes cannot advertise 127.0.0.1 itself.
        assert len({n["ip"] for n in cluster.nodes.values()}) == 1
        yield cluster.address, set(cluster.nodes), cluster.env
    finally:
        cluster.stop()


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


def test_joining_a_token_cluster_without_auth_mode_names_the_fix(two_node_cluster, tiny_data_dir, tmp_path):
    address, _, env = two_node_cluster
    env = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    args = [*tiny_sweep_args(tiny_data_dir, "no-auth", f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ray"),
            "--address", address]
    done = run_cli(args, env, tmp_path / "sweep.log", timeout=180)
    out = (tmp_path / "sweep.log").read_text()
    assert done.returncode == 2, out[-3000:]
    assert f"--address {address}" in out and "RAY_AUTH_MODE=token" in out


@pytest.fixture(scope="module")
def server_sweep(tiny_data_dir, tmp_path_factory):
    """`mlflow server` on loopback, and one 3-trial sweep logged to it over http."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    proc = start_mlflow_server(root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        code = run_search.main(tiny_sweep_args(tiny_data_dir, "server-test", url, root / "ray", samples=3))
        ray.shutdown()
        assert code == 0
        exp = http_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-test")["experiment"]
        yield url, exp["experiment_id"], root
    finally:
        stop(proc)


def test_sweep_runs_and_artifacts_read_back_through_the_rest_api(server_sweep):
    url, experiment_id, _ = server_sweep
    api = f"{url}/api/2.0/mlflow"
    runs = http_json(f"{api}/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("sweep") == "parent"]
    children = [r for r, t in zip(runs, tags) if "trial_id" in t]
    assert len(parents) == 1 and len(children) == 3
    assert all(t["mlflow.parentRunId"] == parents[0]["info"]["run_id"] for r, t in zip(runs, tags) if r in children)
    assert {r["info"]["status"] for r in runs} <= {"FINISHED", "KILLED", "FAILED"}
    for child in children:
        listed = http_json(f"{api}/artifacts/list?run_id={child['info']['run_id']}")
        assert "model.pt" in {f["path"] for f in listed.get("files", [])}


def test_promote_sets_the_champion_alias_on_the_server(server_sweep):
    url, _, root = server_sweep
    code = run_search.main(["promote", "--experiment", "server-test", "--tracking-uri", url,
                            "--config-out", str(root / "best_config.yaml")])
    assert code == 0
    alias = http_json(f"{url}/api/2.0/mlflow/registered-models/alias?name=proliv-autoencoder&alias=champion")
    version = alias["model_version"]
    assert version["aliases"] == ["champion"]
    assert {"test_tpr", "test_tnr", "threshold"} <= {t["key"] for t in version["tags"]}
