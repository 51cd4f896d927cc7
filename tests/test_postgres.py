"""A cluster's tracking path on a real PostgreSQL: `run_search.py server` (mlflow server, basic auth,
artifacts proxied) on a throwaway cluster, a sweep through it with its Optuna study in the database,
promote and predict against it, optuna-dashboard reading the study, and the tracking load test."""
import base64
import json
import math
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from services import (BIN, free_port, healthy, http_json, run_cli, start_cli, stop, tiny_sweep_args,
                      unexpected_statuses, wait_until)

pytestmark = pytest.mark.integration


def clean_env() -> dict:
    """The environment without a tracking server's credentials or URI (a client must be given them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_"))}


def basic_auth(server) -> dict:
    password = server.exports["MLFLOW_TRACKING_PASSWORD"]
    return {"Authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}


@pytest.fixture(scope="module")
def pg_server(postgres, tmp_path_factory):
    """`run_search.py server` on a PostgreSQL store; its printed export lines are the clients' env."""
    root = tmp_path_factory.mktemp("pg-server")
    port = free_port()
    log = root / "server.log"
    proc = start_cli(["server", "--backend-store-uri", postgres.create_database("mlflow_store"),
                      "--artifacts-destination", str(root / "artifacts"), "--state-dir", str(root / "state"),
                      "--port", str(port), "--concurrent-trials", "64"], clean_env(), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: healthy(url), 120, f"healthy server at {url}", proc, log)
        exports = dict(re.findall(r"export (MLFLOW_TRACKING_\w+)=(\S+)", log.read_text()))
        yield SimpleNamespace(url=url, root=root, log=log, proc=proc, env={**clean_env(), **exports},
                              exports=exports, postgres=postgres)
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def pg_sweep(pg_server, two_node_cluster, tiny_data_dir):
    """A 3-trial sweep on a two-node Ray cluster, logged through the server, its Optuna study in a
    PostgreSQL database: the deployment the README's cluster section describes, on one machine."""
    address, _, cluster_env = two_node_cluster
    storage_url = pg_server.postgres.create_database("optuna_study")
    log = pg_server.root / "sweep.log"
    env = {**pg_server.env, **{k: v for k, v in cluster_env.items() if k.startswith("RAY_")}}
    done = run_cli([*tiny_sweep_args(tiny_data_dir, "pg-test", pg_server.url, pg_server.root / "ray", samples=3),
                    "--optuna-storage", storage_url, "--address", address], env, log, timeout=400)
    assert done.returncode == 0, log.read_text()[-3000:]
    client = MlflowClient(pg_server.url)
    os.environ.update(pg_server.exports)  # this process's own client calls below need the credentials too
    try:
        experiment = client.get_experiment_by_name("pg-test")
        runs = client.search_runs([experiment.experiment_id], max_results=100)
    finally:
        for key in pg_server.exports:
            os.environ.pop(key, None)
    parent = next(r for r in runs if r.data.tags.get("sweep") == "parent")
    trials = [r for r in runs if "trial_id" in r.data.tags]
    return SimpleNamespace(storage_url=storage_url, parent=parent, trials=trials, log=log, out=log.read_text())


def test_the_server_prints_its_client_exports_and_refuses_anonymous_clients(pg_server):
    out = pg_server.log.read_text()
    assert f"export MLFLOW_TRACKING_URI={pg_server.url}" in out
    assert set(pg_server.exports) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
    assert re.search(r"connection pool: 2 worker\(s\) x \(\d+ \+ \d+ overflow\) = at most \d+ connections of the "
                     r"database's 100", out)
    assert ":mlflow_store-pw@" not in out  # the database password is never printed
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ  # the fixtures put no credentials in this process
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(pg_server.url).search_experiments()


def test_sweep_runs_and_artifacts_read_back_through_the_server(pg_server, pg_sweep):
    assert len(pg_sweep.trials) == 3
    assert unexpected_statuses([pg_sweep.parent, *pg_sweep.trials]) == []
    assert all(r.data.tags["mlflow.parentRunId"] == pg_sweep.parent.info.run_id for r in pg_sweep.trials)
    auth = basic_auth(pg_server)
    for run in pg_sweep.trials:  # artifacts went through the server's proxy into its destination folder
        listed = http_json(f"{pg_server.url}/api/2.0/mlflow/artifacts/list?run_id={run.info.run_id}", headers=auth)
        assert "model.pt" in {f["path"] for f in listed.get("files", [])}
    assert list((pg_server.root / "artifacts").rglob("model.pt"))


def test_the_sweep_ran_on_both_nodes_of_the_cluster(pg_server, pg_sweep, two_node_cluster):
    used = set()
    for result in (pg_server.root / "ray" / "pg-test").glob("*/result.json"):
        used |= {json.loads(line)["node_id"] for line in result.read_text().splitlines() if line.strip()}
    assert used == two_node_cluster[1]


def test_the_study_in_postgres_agrees_with_mlflow(pg_sweep):
    name = pg_sweep.parent.data.tags["optuna_study"]
    assert pg_sweep.parent.data.tags["optuna_storage"].endswith("/optuna_study")
    assert ":***@" in pg_sweep.parent.data.tags["optuna_storage"]
    study = optuna.load_study(study_name=name, storage=pg_sweep.storage_url)
    proposed = {t.user_attrs["ray_trial_id"]: t for t in study.trials if "ray_trial_id" in t.user_attrs}
    runs = {r.data.tags["trial_id"]: r for r in pg_sweep.trials}
    assert set(proposed) == set(runs)  # the same trials
    for trial_id, trial in proposed.items():  # the same objectives: what each trial last reported
        assert trial.state == optuna.trial.TrialState.COMPLETE, trial
        assert math.isclose(trial.value, runs[trial_id].data.metrics["objective"], rel_tol=1e-9), trial_id
        assert trial.user_attrs["sampler"] == "TPESampler"


def test_a_sweep_never_appends_to_a_study_that_exists(pg_sweep):
    from anomaly_ae.tracking.study_storage import StudyStorageError, claim_study_name, open_study_storage

    storage = open_study_storage(pg_sweep.storage_url)
    with pytest.raises(StudyStorageError, match="already exists"):
        claim_study_name(storage, pg_sweep.parent.data.tags["optuna_study"])


def test_promote_and_predict_against_the_postgres_server(pg_server, pg_sweep, tiny_data_dir, monkeypatch):
    import run_search

    for key, value in pg_server.exports.items():  # what a client's shell has after the printed exports
        monkeypatch.setenv(key, value)
    root = pg_server.root
    assert run_search.main(["promote", "--experiment", "pg-test", "--tracking-uri", pg_server.url,
                            "--config-out", str(root / "best.yaml")]) == 0
    alias = http_json(f"{pg_server.url}/api/2.0/mlflow/registered-models/alias?name=proliv-autoencoder&alias=champion",
                      headers=basic_auth(pg_server))["model_version"]
    assert alias["aliases"] == ["champion"]
    assert {"test_tpr", "test_tnr", "threshold"} <= {t["key"] for t in alias["tags"]}
    assert run_search.main(["predict", "--tracking-uri", pg_server.url, "--images", str(Path(tiny_data_dir) / "proliv"),
                            "--out", str(root / "scores.csv")]) == 0
    assert len((root / "scores.csv").read_text().splitlines()) == 1 + len(list((Path(tiny_data_dir) / "proliv").iterdir()))


def test_optuna_dashboard_shows_the_study(pg_sweep, tmp_path):
    port = free_port()
    log = tmp_path / "dashboard.log"
    proc = subprocess.Popen([str(BIN / "optuna-dashboard"), pg_sweep.storage_url, "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def studies():
            try:
                return http_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:
                return None
        listed = wait_until(studies, 60, "optuna-dashboard's study list", proc, log)
        summary = next(s for s in listed if s["study_name"] == pg_sweep.parent.data.tags["optuna_study"])
        detail = http_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}")
        # the sweep's 3 trials, and nothing else (enqueued points beyond the budget are not enqueued)
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * 3
    finally:
        stop(proc)


# 64 writers: slow (minutes of 64 processes); CI runs 8 (README, "Tests": what CI runs)
@pytest.mark.parametrize("writers", [8, pytest.param(64, marks=pytest.mark.slow)])
def test_benchmark_tracking_loses_no_write(pg_server, writers):
    import pandas as pd

    log, table = pg_server.root / f"benchmark-{writers}.log", pg_server.root / f"benchmark-{writers}.csv"
    done = run_cli(["benchmark-tracking", "--writers", str(writers), "--epochs", "2", "--out", str(table)],
                   pg_server.env, log, timeout=900)
    assert done.returncode == 0, log.read_text()[-3000:]
    row = pd.read_csv(table).iloc[0]
    assert row["writers"] == writers and row["errors"] == 0 and row["runs_finished"] == writers
    assert row["metrics_expected"] == writers * 2 * 30
    assert row["metrics_missing"] == 0 and row["metrics_duplicated"] == 0 and row["artifacts_missing"] == 0
    assert bool(row["exactly_once"]) and row["writes_per_s"] > 0
