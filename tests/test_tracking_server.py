"""The server command's pure parts (pool sizing, redaction), and the database study's bookkeeping on a
SQLite storage: names never reused, proposals recorded, a restore that finds the database ahead of Ray's
snapshot."""
import socket

import optuna
import pytest

from anomaly_ae.tracking.server import ServerConfigError, ServerSpec, pool_settings, redact
from anomaly_ae.tracking.study_storage import StudyStorageError, claim_study_name, open_study_storage, sweep_study_name
import run_search


@pytest.mark.parametrize("trials, workers, max_connections, pool, overflow", [
    (8, 2, 100, 6, 3),      # (8 + 4 other clients) / 2 workers = 6 each, half again as overflow
    (64, 4, 100, 12, 6),    # 17 each wanted; 75 of 100 allowed -> 18 per worker with overflow -> 12 + 6
    (64, 4, None, 17, 8),   # SQLite has no connection limit
    (1, 8, 100, 2, 1),      # never below 2 per worker
])
def test_pool_follows_the_concurrency_and_stays_under_the_database_limit(trials, workers, max_connections, pool,
                                                                         overflow):
    settings = pool_settings(trials, workers, max_connections)
    assert (settings.pool_size, settings.max_overflow) == (pool, overflow)
    if max_connections:
        assert settings.ceiling <= max_connections * 0.75
    assert settings.env()["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] == str(pool)


def test_too_many_workers_for_the_database_is_refused():
    with pytest.raises(ServerConfigError, match="--workers 40"):
        pool_settings(8, 40, 100)


def test_passwords_never_printed():
    assert redact("postgresql://u:secret@db:5432/mlflow") == "postgresql://u:***@db:5432/mlflow"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_auth_tables_share_a_postgres_store_and_get_their_own_file_beside_sqlite(tmp_path):
    pg = ServerSpec("postgresql://u:p@h/db", str(tmp_path / "a"), tmp_path / "state")
    assert pg.auth_database_uri() == "postgresql://u:p@h/db"
    lite = ServerSpec(f"sqlite:///{tmp_path}/m.db", str(tmp_path / "a"), tmp_path / "state", host="0.0.0.0", port=5001)
    assert lite.auth_database_uri() == f"sqlite:///{tmp_path / 'state' / 'basic_auth.db'}"
    assert lite.url == f"http://{socket.getfqdn()}:5001"  # reachable from the cluster's other machines


def test_the_server_command_names_a_store_it_cannot_reach(tmp_path, capsys):
    code = run_search.main(["server", "--backend-store-uri", "postgresql://u:pw@127.0.0.1:1/none",
                            "--artifacts-destination", str(tmp_path / "a"), "--state-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "--backend-store-uri postgresql://u:***@127.0.0.1:1/none: cannot connect" in err
    assert "pw" not in err


@pytest.mark.parametrize("argv, field", [
    (["--optuna-storage", "redis://localhost/0"], "--optuna-storage"),
    (["--resume", "--optuna-storage", "sqlite:///x.db"], "--optuna-storage"),
])
def test_bad_optuna_storage_refused_before_ray(argv, field, capsys):
    assert run_search.main(["search", *argv]) == 2
    assert field in capsys.readouterr().err


def test_a_taken_study_name_is_refused(tmp_path):
    storage = open_study_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    name = sweep_study_name("proliv-quick", "0123456789abcdef")
    assert name == "proliv-quick.0123456789ab"
    assert claim_study_name(storage, name) == name
    optuna.create_study(study_name=name, storage=storage)
    with pytest.raises(StudyStorageError, match="already exists"):
        claim_study_name(storage, name)


def one_dimension(trial):  # module level: OptunaSearch pickles its space with its state
    trial.suggest_float("x", 0.0, 1.0)
    return {"variant": "pca_ae"}


def test_a_restored_searcher_fails_orphans_and_tolerates_trials_the_database_finished(tmp_path):
    """Ray snapshots the searcher every few seconds; the database study runs ahead of the snapshot."""
    from types import SimpleNamespace

    from sweeps.tuning import WarmStartedOptunaSearch, make_searcher

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = SimpleNamespace(sampler="tpe", seed=0, max_concurrent=1, num_samples=4)
    searcher = make_searcher(args, one_dimension, [], study=(open_study_storage(url), "s"))
    searcher.set_search_properties(None, None, {})
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"objective": 0.5, "training_iteration": 1})
    searcher.suggest("t2")
    searcher.save(str(tmp_path / "searcher.pkl"))  # Ray's snapshot: t1 done, t2 running
    searcher.on_trial_result("t2", {"objective": 0.6, "training_iteration": 1})
    searcher.on_trial_complete("t2", {"objective": 0.6, "training_iteration": 1})  # after the snapshot
    searcher.suggest("t3")  # asked after the snapshot, then the driver is killed

    restored = WarmStartedOptunaSearch(space=one_dimension, metric="objective", mode="max")
    restored.restore(str(tmp_path / "searcher.pkl"))
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL"]  # t3: no restored trial owns it
    assert trials[2].user_attrs["failed_by"].startswith("resume")
    # Ray reruns t2 from its checkpoint; the study keeps its first result and nothing raises.
    restored.on_trial_result("t2", {"objective": 0.7, "training_iteration": 1})
    restored.on_trial_complete("t2", {"objective": 0.7, "training_iteration": 1})
    assert optuna.load_study(study_name="s", storage=url).trials[1].value == 0.6
    restored.suggest("t4")
    last = optuna.load_study(study_name="s", storage=url).trials[-1]
    assert last.user_attrs == {"ray_trial_id": "t4", "sampler": "TPESampler", "history": 2}


def test_the_load_test_counts_a_lost_and_a_duplicated_write(tmp_path):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from benchmarks.tracking import count_arrivals, metric_names

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a"))).info.run_id
    names = metric_names()
    for step in range(2):
        client.log_batch(run_id, metrics=[Metric(n, 1.0, 1000 + step, step) for n in names])
    assert count_arrivals(client, run_id, 2) == (0, 0, 2)  # every metric once; no artifact logged
    client.log_batch(run_id, metrics=[Metric(names[0], 2.0, 2000, 1)])  # a second write at step 1
    assert count_arrivals(client, run_id, 3) == (len(names), 1, 3)  # step 2 missing for all, one duplicate
