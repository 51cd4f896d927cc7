"""Cluster-wide sweeps against real components started here, on loopback only:
a two-node Ray cluster (ray start) and an MLflow tracking server (mlflow server)."""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import ray

import run_search

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop a process this test started, by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def tiny_sweep_args(data, experiment, tracking_uri, storage, samples=4) -> list[str]:
    return ["search", "--data", str(data), "--num-samples", str(samples), "--epochs", "2", "--samples-per-epoch",
            "128", "--max-concurrent", "2", "--experiment", experiment, "--tracking-uri", tracking_uri,
            "--storage-path", str(storage), "--val-fraction", "0.2"]


NODES_SCRIPT = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps({n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}))
"""


@pytest.fixture
def two_node_cluster(tmp_path):
    """A Ray head and a second node on this machine, one CPU each; stopped by the pids started here.

    The cluster gets its own token (token auth is Ray's default since 2.59); the returned env is what a
    driver needs to join it, as a user's shell would have after `export RAY_AUTH_MODE=token`."""
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    common = ["--num-cpus", "1", "--num-gpus", "0", "--block", "--disable-usage-stats"]
    address = f"127.0.0.1:{port}"
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", f"--port={port}", "--include-dashboard=false",
                             *common], env=env, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT)
    procs = [head]
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            assert head.poll() is None and time.monotonic() < deadline, (tmp_path / "head.log").read_text()
            time.sleep(0.5)
        procs.append(subprocess.Popen([str(BIN / "ray"), "start", f"--address={address}", *common], env=env,
                                      stdout=(tmp_path / "worker.log").open("w"), stderr=subprocess.STDOUT))
        listed = subprocess.run([sys.executable, "-c", NODES_SCRIPT, address], env=env, capture_output=True,
                                text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr[-3000:]
        nodes = json.loads(listed.stdout.strip().splitlines()[-1])
        assert len(nodes) == 2, ((tmp_path / "worker.log").read_text()[-3000:], nodes)
        # Both on this machine. Ray swaps a loopback --node-ip-address for the host's own address
        # (services.resolve_ip_for_localhost), so the nodes cannot advertise 127.0.0.1 itself.
        assert len(set(nodes.values())) == 1
        yield address, set(nodes), env
    finally:
        for proc in reversed(procs):
            stop(proc)


def run_cli(args: list[str], env: dict, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    with log.open("w") as out:
        return subprocess.run([sys.executable, str(REPO / "run_search.py"), *args], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout)


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


def http_json(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def server_sweep(tiny_data_dir, tmp_path_factory):
    """`mlflow server` on loopback, and one 3-trial sweep logged to it over http."""
    root = tmp_path_factory.mktemp("server")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=(root / "server.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        code = run_search.main(tiny_sweep_args(tiny_data_dir, "server-test", url, root / "ray", samples=3))
        ray.shutdown()
        assert code == 0
        exp = http_json(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=server-test")["experiment"]
        yield url, exp["experiment_id"], root
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)


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
        assert "checkpoint.pt" in {f["path"] for f in listed.get("files", [])}


def test_promote_sets_the_champion_alias_on_the_server(server_sweep):
    url, _, root = server_sweep
    code = run_search.main(["promote", "--experiment", "server-test", "--tracking-uri", url,
                            "--config-out", str(root / "best_config.yaml")])
    assert code == 0
    alias = http_json(f"{url}/api/2.0/mlflow/registered-models/alias?name=proliv-autoencoder&alias=champion")
    version = alias["model_version"]
    assert version["aliases"] == ["champion"]
    assert {"test_tpr", "test_tnr", "threshold"} <= {t["key"] for t in version["tags"]}


def test_experiment_page_in_a_headless_browser_shows_the_sweep(server_sweep):
    url, experiment_id, _ = server_sweep
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed, so the UI screenshot check cannot run (apt install chromium)")
    runs = http_json(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id], "max_results": 100})
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs["runs"]]
    parent_name = next(t["mlflow.runName"] for t in tags if t.get("sweep") == "parent")
    # MLflow 3's experiment page opens on a GenAI overview; the sweep lives on its runs tab.
    page = f"{url}/#/experiments/{experiment_id}/runs"
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000",
               "--window-size=1400,900"]
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    assert parent_name in dom, f"the experiment's runs page does not show the sweep's parent run {parent_name}"
    SCREENSHOTS.mkdir(exist_ok=True)
    shot = SCREENSHOTS / "mlflow_experiment_page.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*browser, f"--screenshot={shot}", page], capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 10_000
