"""Fixed work done once: a second sweep in the same store replays the seed baselines and start points
the first one trained (tagged reused_from, no weights of their own); --rerun-baselines trains them."""
import contextlib
import io
import sqlite3

import pytest
import ray
from mlflow.tracking import MlflowClient

import run_search
from anomaly_ae.fixed_work import data_key, fixed_work_key

pytestmark = pytest.mark.integration


def test_the_key_changes_with_the_config_the_seed_the_budget_and_the_data():
    tags = {"dataset_hash": "d1", "labelled_hash": "l1", "val_normal_fraction": "0.1", "val_spill_fraction": "1.0",
            "split_seed": "0", "space": "quick", "git_commit": "abc"}
    cfg = {"variant": "conv_ae", "seed": 0, "epochs": 4, "lr": 1e-3}
    key = fixed_work_key(cfg, data_key(tags))
    assert key == fixed_work_key(dict(reversed(list(cfg.items()))), data_key({**tags, "git_commit": "def"}))
    for changed in ({**cfg, "seed": 1}, {**cfg, "epochs": 5}, {**cfg, "lr": 2e-3}):
        assert fixed_work_key(changed, data_key(tags)) != key
    for other in ({**tags, "dataset_hash": "d2"}, {**tags, "val_normal_fraction": "0.2"},
                  {**tags, "site_hash": "s1"}):
        assert fixed_work_key(cfg, data_key(other)) != key


def second_sweep(tiny_sweep, tmp_path, experiment: str, *extra: str):
    """A sweep like tiny_sweep's in a copy of its store (the other tests keep theirs as it was)."""
    with sqlite3.connect(tiny_sweep.tmp / "mlflow.db") as src, sqlite3.connect(tmp_path / "mlflow.db") as dst:
        src.backup(dst)  # with what the write-ahead log still holds
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_search.main([
            "search", "--data", str(tiny_sweep.data), "--epochs", "2", "--steps-per-epoch", "3",
            "--max-concurrent", "2", "--experiment", experiment, "--tracking-uri", uri,
            "--storage-path", str(tmp_path / "ray"), "--seed", "0", "--val-fraction", "0.2", *extra])
    ray.shutdown()
    assert code == 0, out.getvalue()[-3000:]
    return MlflowClient(uri), out.getvalue()


def trial_runs_of(client, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id], "tags.trial_id != ''")]


def test_a_second_sweep_replays_the_enqueued_trials_of_the_first(tiny_sweep, tmp_path):
    from sweeps.runs import download_checkpoint, find_parent_run, sweep_frame

    client, out = second_sweep(tiny_sweep, tmp_path, "itest-again", "--num-samples", "5")
    first = {r.data.tags["baseline"]: r for r in trial_runs_of(client, "itest") if r.data.tags["baseline"]}
    again = [r for r in trial_runs_of(client, "itest-again") if r.data.tags["baseline"]]
    assert len(again) == 5 and "reused]" in out
    for run in again:
        origin = first[run.data.tags["baseline"]]
        assert run.data.tags["reused_from"] == origin.info.run_id
        assert run.data.tags["fixed_work_key"] == origin.data.tags["fixed_work_key"]
        assert run.info.status == "FINISHED"
        # The same figures, epoch by epoch; the weights stay in the run that trained them.
        for key in ("objective", "best_objective"):
            assert ([(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                    == [(m.step, m.value) for m in client.get_metric_history(origin.info.run_id, key)])
        assert "model.pt" not in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The leaderboard printed, the frame analysis and promote read, and the weights they load.
    assert "reused_from" in out
    frame = sweep_frame(client, find_parent_run(client, "itest-again"))
    replayed = frame[frame["baseline"] != ""]
    assert set(replayed["reused_from"]) == {first[b].info.run_id for b in replayed["baseline"]}
    row = replayed.iloc[0]
    payload = download_checkpoint(client, row["run_id"], tmp_path / "weights")
    assert payload["config"]["variant"] == row["variant"]
    # Warm start reads each trained trial once: the replayed runs are not counted again.
    from sweeps.runs import earlier_observations

    tags = find_parent_run(client, "itest-again").data.tags
    observations, sweeps = earlier_observations(client, tags)
    assert sweeps == 2 and len(observations) == len(trial_runs_of(client, "itest")) + len(frame) - len(replayed)


def test_rerun_baselines_trains_them_again(tiny_sweep, tmp_path):
    client, out = second_sweep(tiny_sweep, tmp_path, "itest-rerun", "--num-samples", "1", "--rerun-baselines")
    runs = trial_runs_of(client, "itest-rerun")
    assert len(runs) == 1 and "reused" not in out
    for run in runs:
        assert "reused_from" not in run.data.tags and run.data.tags["fixed_work_key"]
        assert {"model.pt", "reports.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
