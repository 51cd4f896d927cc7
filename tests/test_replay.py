"""Fixed work done once: a second sweep in the same store replays the seed baselines and start points
the first one trained (tagged reused_from, no weights of their own); --rerun-baselines trains them."""
import sqlite3

import pytest
import ray
from mlflow.tracking import MlflowClient

import run_search
from trainables.replay import data_key, replay_key

pytestmark = pytest.mark.integration


def test_the_key_changes_with_the_config_the_seed_the_budget_and_the_data():
    tags = {"dataset_hash": "d1", "labelled_hash": "l1", "val_normal_fraction": "0.1", "val_spill_fraction": "1.0",
            "split_seed": "0", "space": "quick", "git_commit": "abc"}
    cfg = {"variant": "conv_ae", "seed": 0, "epochs": 4, "lr": 1e-3}
    key = replay_key(cfg, data_key(tags))
    assert key == replay_key(dict(reversed(list(cfg.items()))), data_key({**tags, "git_commit": "def"}))
    for changed in ({**cfg, "seed": 1}, {**cfg, "epochs": 5}, {**cfg, "lr": 2e-3}):
        assert replay_key(changed, data_key(tags)) != key
    for other in ({**tags, "dataset_hash": "d2"}, {**tags, "val_normal_fraction": "0.2"},
                  {**tags, "site_hash": "s1"}):
        assert replay_key(cfg, data_key(other)) != key


def test_a_second_sweep_warm_starts_from_the_first_and_replays_its_fixed_work(tiny_sweep, tmp_path, capsys):
    """In a copy of tiny_sweep's store (the other tests keep theirs as it was), a second sweep with the
    same data, budget and seed: its study holds the first sweep's trials (warm start), and its five enqueued
    trials are replayed from the first sweep's runs (tagged reused_from, no weights of their own), counted
    in its study with the objectives they replayed."""
    from ray.tune.search.optuna import OptunaSearch

    from sweeps.runs import download_checkpoint, earlier_observations, find_parent_run, sweep_frame

    with sqlite3.connect(tiny_sweep.tmp / "mlflow.db") as src, sqlite3.connect(tmp_path / "mlflow.db") as dst:
        src.backup(dst)  # with what the write-ahead log still holds
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    first = sweep_frame(client, find_parent_run(client, tiny_sweep.experiment))
    storage = tmp_path / "ray"
    code = run_search.main([
        "search", "--data", str(tiny_sweep.data), "--num-samples", "5", "--epochs", "2", "--steps-per-epoch", "3",
        "--max-concurrent", "2", "--experiment", "itest-again", "--tracking-uri", uri, "--storage-path",
        str(storage), "--seed", "1", "--val-fraction", "0.2", "--no-references"])
    ray.shutdown()
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert f"warm start: {len(first)} trials from 1 earlier sweep(s)" in out

    # Warm start: the study holds the first sweep's trials with their objectives, then this sweep's five.
    searcher = OptunaSearch()
    searcher.restore_from_dir(str(storage / "itest-again"))
    trials = searcher._ot_study.trials
    assert len(trials) == len(first) + 5
    expected = sorted((client.get_run(r).data.params["variant"], client.get_run(r).data.metrics["objective"])
                      for r in first["run_id"])
    assert sorted((t.params["variant"], t.value) for t in trials[:len(first)]) == expected

    # The enqueued trials: replayed, epoch by epoch, from the runs that trained them.
    second = sweep_frame(client, find_parent_run(client, "itest-again"))
    trained = {b: client.get_run(r) for b, r in zip(first["baseline"], first["run_id"]) if b}
    replayed = second[second["reused_from"] != ""]
    assert len(replayed) == 5 and set(replayed["baseline"]) == set(trained)
    assert out.count("reused]") == 5 and "reused_from" in out  # the progress lines and the leaderboard
    assert len(second) == 5
    for _, row in replayed.iterrows():
        origin = trained[row["baseline"]]
        run = client.get_run(row["run_id"])
        assert row["reused_from"] == run.data.tags["reused_from"] == origin.info.run_id
        assert run.info.status == "FINISHED"
        for key in ("objective", "best_objective"):
            assert ([(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                    == [(m.step, m.value) for m in client.get_metric_history(origin.info.run_id, key)])
        assert "model.pt" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    # Counted in this sweep's study as finished trials, with the objectives they replayed.
    assert sorted(t.value for t in trials[len(first):]) == sorted(
        client.get_run(r).data.metrics["objective"] for r in replayed["run_id"])
    # What promote and analyze load: the weights of the run that trained it.
    row = replayed.iloc[0]
    assert download_checkpoint(client, row["run_id"], tmp_path / "weights")["config"]["variant"] == row["variant"]

    # A later sweep's warm start reads each trained trial once: the replayed runs are not counted again.
    observations, sweeps = earlier_observations(client, find_parent_run(client, "itest-again").data.tags)
    assert sweeps == 2 and len(observations) == len(first) + len(second) - len(replayed)
