"""Real external processes for integration tests, on loopback only: Ray nodes, MLflow servers, the CLI.

Every process is started in its own session and stopped by the pid started here.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process group this test started: ``sig``, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def tiny_sweep_args(data, experiment, tracking_uri, storage, samples=4, epochs=2, samples_per_epoch=128) -> list[str]:
    return ["search", "--data", str(data), "--num-samples", str(samples), "--epochs", str(epochs),
            "--samples-per-epoch", str(samples_per_epoch), "--max-concurrent", "2", "--experiment", experiment,
            "--tracking-uri", tracking_uri, "--storage-path", str(storage), "--val-fraction", "0.2"]


def unexpected_statuses(runs, allowed=("FINISHED",)) -> list[str]:
    """Runs whose final status is not among ``allowed``; a FAILED trial run is expected only when its own
    ``failure`` tag says it diverged (a searched config may; a lost worker or a crash may not)."""
    bad = []
    for run in runs:
        status, failure = run.info.status, run.data.tags.get("failure", "")
        if status in allowed or (status == "FAILED" and failure.startswith("diverged")):
            continue
        bad.append(f"{run.data.tags.get('mlflow.runName', run.info.run_id)}: {status} {failure[:200]}")
    return bad


def run_cli(args: list[str], env: dict, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    with log.open("w") as out:
        return subprocess.run([sys.executable, str(REPO / "run_search.py"), *args], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout)


def start_cli(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "run_search.py"), *args], cwd=REPO, start_new_session=True,
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None,
               every: float = 0.5):
    """Poll ``check()`` until it returns something truthy; fail with ``what`` (and the log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {what}:\n{tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s:\n{tail}")
        time.sleep(every)


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def start_mlflow_server(root: Path, port: int, env: dict | None = None, extra: list[str] = (),
                        log_name: str = "server.log") -> subprocess.Popen:
    """``mlflow server`` on loopback with a SQLite store under ``root``; returns once /health answers."""
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", *extra],
        # No job runner: it starts a dozen worker processes (GenAI jobs) that a tracking test never uses.
        cwd=root, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        stdout=(root / log_name).open("a"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: healthy(url), 120, f"healthy mlflow server at {url}", proc, root / log_name)
    return proc


def http_json(url: str, body: dict | None = None, headers: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


NODES_SCRIPT = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
print(json.dumps({n["NodeID"]: {"ip": n["NodeManagerAddress"], "head": "node:__internal_head__" in n["Resources"]}
                  for n in ray.nodes() if n["Alive"]}))
"""


class TwoNodeCluster:
    """A Ray head and a second node on this machine, one CPU each, with its own token."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token auth is Ray's default since 2.59; this env is what a user's shell has after
        # `export RAY_AUTH_MODE=token`.
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": os.urandom(32).hex()}
        self.procs: list[subprocess.Popen] = []
        self.nodes: dict = {}

    def start(self) -> "TwoNodeCluster":
        common = ["--num-cpus", "1", "--num-gpus", "0", "--block", "--disable-usage-stats"]
        head_log = self.tmp / "head.log"
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", f"--port={self.port}",
                                 "--include-dashboard=false", *common], env=self.env, stdout=head_log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(head)
        wait_until(lambda: "Ray runtime started" in head_log.read_text(), 60, "Ray head", head, head_log)
        self.worker = subprocess.Popen([str(BIN / "ray"), "start", f"--address={self.address}", *common],
                                       env=self.env, stdout=(self.tmp / "worker.log").open("w"),
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(self.worker)
        listed = subprocess.run([sys.executable, "-c", NODES_SCRIPT, self.address], env=self.env,
                                capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stderr[-3000:]
        self.nodes = json.loads(listed.stdout.strip().splitlines()[-1])
        assert len(self.nodes) == 2, ((self.tmp / "worker.log").read_text()[-3000:], self.nodes)
        return self

    @property
    def worker_node_id(self) -> str:
        return next(node for node, info in self.nodes.items() if not info["head"])

    def kill_worker_node(self) -> None:
        """SIGKILL the worker node's whole process group: its raylet and the trial processes on it."""
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(30)

    def stop(self) -> None:
        # SIGKILL to the process groups: on SIGTERM a node drains for 30 s, which a test need not wait.
        for proc in reversed(self.procs):
            stop(proc, signal.SIGKILL)


def find_postgres_bin(name: str) -> str | None:
    """A PostgreSQL server binary: on PATH, or in Debian's versioned folder (initdb is not on PATH there)."""
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresCluster:
    """A throwaway PostgreSQL cluster: initdb into a temporary folder, pg_ctl start on 127.0.0.1.

    initdb and pg_ctl refuse to run as root, so as root they run as the ``postgres`` user
    (runuser), on a folder it owns. Trust authentication, on loopback only.
    """

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.initdb, self.pg_ctl = find_postgres_bin("initdb"), find_postgres_bin("pg_ctl")
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.started = False

    def why_not(self) -> str | None:
        """Why no cluster can start here, or None."""
        if not (self.initdb and self.pg_ctl):
            return "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if self.as_user:
            import pwd

            try:
                pwd.getpwnam("postgres")
            except KeyError:
                return "running as root and there is no 'postgres' user to run initdb as"
        return None

    def _run(self, args: list[str], timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr[-2000:]}\n{tail}")

    def start(self) -> "PostgresCluster":
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            import shutil

            shutil.chown(self.root, "postgres")
        # --no-sync and fsync=off: a test cluster that dies with the test needs no durability.
        self._run([self.initdb, "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync"])
        self._run([self.pg_ctl, "-D", str(self.root / "data"), "-l", str(self.root / "postgres.log"), "-w",
                   "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"])
        self.started = True
        return self

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database,
                             autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self, name: str) -> str:
        """A fresh database owned by a user of its own; returns its SQLAlchemy URL."""
        self.sql(f"CREATE USER {name} PASSWORD '{name}-pw'")
        self.sql(f"CREATE DATABASE {name} OWNER {name}")
        return f"postgresql://{name}:{name}-pw@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.started:
            self._run([self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"], timeout=60)
            self.started = False
