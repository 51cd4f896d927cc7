"""The tracking server a cluster sweep writes to: `mlflow server` on a real database, with basic auth.

Workers talk HTTP to one server and never to the database (mlflow#1565: parallel trials on
PostgreSQL ran out of connection slots). The server's connection pool is sized from the sweep's
concurrency and capped below the database's own ``max_connections``.
"""
from __future__ import annotations

import math
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

# Requests other than the trials' own: the driver, promote, the UI, a dashboard.
OTHER_CLIENTS = 4
# Of the database's max_connections, what the server's pools may take at most: the rest is left to
# PostgreSQL's reserved superuser slots, the Optuna study's driver and operators.
POOL_SHARE = 0.75


class ServerConfigError(ValueError):
    """A server option that cannot work, found before anything starts."""


@dataclass(frozen=True)
class PoolSettings:
    pool_size: int
    max_overflow: int
    workers: int
    max_connections: int | None  # the database's limit, when it has one

    @property
    def ceiling(self) -> int:
        """Connections the server can hold at once, all workers together."""
        return self.workers * (self.pool_size + self.max_overflow)

    def env(self) -> dict[str, str]:
        return {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(self.pool_size),
                "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(self.max_overflow),
                # Connections a firewall or PgBouncer closed silently are replaced, not reused.
                "MLFLOW_SQLALCHEMYSTORE_POOL_RECYCLE": "1800"}

    def line(self) -> str:
        limit = f" of the database's {self.max_connections}" if self.max_connections else ""
        return (f"connection pool: {self.workers} worker(s) x ({self.pool_size} + {self.max_overflow} overflow) "
                f"= at most {self.ceiling} connections{limit}")


def pool_settings(concurrent_trials: int, workers: int, max_connections: int | None) -> PoolSettings:
    """Pool per server worker: one connection per concurrent writer, spread over the workers, never
    more (with overflow) than ``POOL_SHARE`` of the database's ``max_connections``.

    A request that finds the pool busy waits for a connection, but only for SQLAlchemy's pool timeout
    (30 s): measured with 64 writers on a pool sized for 8, requests failed with HTTP 500 ("QueuePool
    limit reached"). So the pool follows the concurrency, and the cap is the database's own limit.
    """
    if concurrent_trials < 1 or workers < 1:
        raise ServerConfigError(f"--concurrent-trials and --workers must be >= 1, got {concurrent_trials}, {workers}")
    per_worker = math.ceil((concurrent_trials + OTHER_CLIENTS) / workers)
    if max_connections is not None:
        budget = int(max_connections * POOL_SHARE) // workers  # pool + overflow, per worker
        if budget < 2:
            raise ServerConfigError(f"--workers {workers}: the database allows {max_connections} connections, "
                                    f"too few for {workers} workers with 2 each; use fewer workers")
        per_worker = min(per_worker, budget * 2 // 3)
    per_worker = max(per_worker, 2)
    return PoolSettings(per_worker, max(1, per_worker // 2), workers, max_connections)


def database_max_connections(uri: str) -> int | None:
    """PostgreSQL's (or MySQL's) connection limit; None for SQLite, which has none."""
    scheme = urlsplit(uri).scheme.split("+")[0]
    if scheme == "sqlite":
        return None
    import sqlalchemy

    query = {"postgresql": "SHOW max_connections", "mysql": "SELECT @@max_connections"}.get(scheme)
    if query is None:
        raise ServerConfigError(f"--backend-store-uri: unsupported scheme {scheme!r} (postgresql, mysql or sqlite)")
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(query)).scalar())
    except sqlalchemy.exc.OperationalError as exc:
        raise ServerConfigError(f"--backend-store-uri {redact(uri)}: cannot connect: "
                                f"{str(exc.orig).strip().splitlines()[0]}") from exc
    finally:
        engine.dispose()


def redact(uri: str) -> str:
    """The URI with its password replaced by ***, for printing and tagging."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass
class ServerSpec:
    backend_store_uri: str
    artifacts_destination: str
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    concurrent_trials: int = 8
    allowed_hosts: str | None = None

    @property
    def url(self) -> str:
        # Bound to every interface: clients on other machines reach it by this machine's name.
        host = socket.getfqdn() if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def auth_database_uri(self) -> str:
        # MLflow's auth tables keep their own Alembic version table (alembic_version_auth), so they
        # can share the tracking database; a SQLite tracking store keeps them in a file of their own.
        if urlsplit(self.backend_store_uri).scheme.startswith(("postgresql", "mysql")):
            return self.backend_store_uri
        return f"sqlite:///{(self.state_dir / 'basic_auth.db').resolve()}"


def _secret(state_dir: Path, name: str, env_name: str) -> str:
    """``env_name`` from the environment, else a value kept in ``state_dir`` (made once, mode 600)."""
    if os.environ.get(env_name):
        return os.environ[env_name]
    path = state_dir / name
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def write_auth_config(spec: ServerSpec) -> tuple[Path, str]:
    """The basic-auth config (outside the artifact folder, which the server serves); returns it and
    the admin's password."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    password = _secret(spec.state_dir, "admin-password", "MLFLOW_AUTH_ADMIN_PASSWORD")
    path = spec.state_dir / "basic_auth.ini"
    path.touch(mode=0o600)
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {spec.auth_database_uri()}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # A password check is a PBKDF2 hash per request; cache it for a minute per worker. A changed
        # password reaches the other workers within that minute.
        "auth_cache_ttl_seconds = 60\n")
    return path, password


def db_upgrade(uri: str) -> None:
    """`mlflow db upgrade URI`: the schema at this MLflow's version (a fresh database gets every table)."""
    done = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise ServerConfigError(f"mlflow db upgrade {redact(uri)} failed:\n{tail}")


def server_command(spec: ServerSpec) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth",
           "--backend-store-uri", spec.backend_store_uri, "--serve-artifacts",
           "--artifacts-destination", spec.artifacts_destination,
           "--host", spec.host, "--port", str(spec.port), "--workers", str(spec.workers)]
    if spec.allowed_hosts:
        cmd += ["--allowed-hosts", spec.allowed_hosts]
    return cmd


def server_environment(spec: ServerSpec, pool: PoolSettings, auth_config: Path, password: str) -> dict[str, str]:
    return {**os.environ, **pool.env(),
            "MLFLOW_AUTH_CONFIG_PATH": str(auth_config), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret(spec.state_dir, "flask-secret-key",
                                                      "MLFLOW_FLASK_SERVER_SECRET_KEY"),
            # The GenAI job runner starts a dozen worker processes that tracking never uses.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def client_exports(spec: ServerSpec, password: str) -> list[str]:
    """The lines a client's shell needs: every run_search.py command (and every trial) then uses the server."""
    return [f"export MLFLOW_TRACKING_URI={spec.url}",
            "export MLFLOW_TRACKING_USERNAME=admin",
            f"export MLFLOW_TRACKING_PASSWORD={password}"]


def prepare_server(spec: ServerSpec) -> tuple[list[str], dict[str, str], PoolSettings, str]:
    """Everything before the server starts: the pool, the schema, the auth config. Returns the
    command, its environment, the pool and the admin's password."""
    artifacts = spec.artifacts_destination
    if "://" not in artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        spec.artifacts_destination = str(Path(artifacts).resolve())
    pool = pool_settings(spec.concurrent_trials, spec.workers, database_max_connections(spec.backend_store_uri))
    db_upgrade(spec.backend_store_uri)
    auth_config, password = write_auth_config(spec)
    return server_command(spec), server_environment(spec, pool, auth_config, password), pool, password


def startup_lines(spec: ServerSpec, pool: PoolSettings, password: str) -> list[str]:
    """What `server` prints before the server takes the process: the pool, the auth, the client's exports."""
    return [f"schema upgraded: {redact(spec.backend_store_uri)}", pool.line(),
            f"basic auth: admin user 'admin', config {spec.state_dir / 'basic_auth.ini'}; artifacts proxied to "
            f"{spec.artifacts_destination}",
            "on every client (search, promote, predict; the trials get them through Ray):",
            *(f"  {line}" for line in client_exports(spec, password)),
            f"starting: mlflow server on {spec.url} (Ctrl-C stops it)"]
