"""The tracking module: the retrying writer, names and metric keys, trial runs continued by id, the
shared UI view, weight retention. Against a real SQLite MLflow store."""
import json
from types import SimpleNamespace

import pyarrow.fs
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from anomaly_ae.detector.checkpoints import MODEL_FILE
from anomaly_ae.tracking.mlflow_runs import (
    SHARED_VIEW_TAG, RetryingWriter, SweepRun, TrackingUnavailable, TrialRun, metric_key, runs_page, trial_run_name,
)
from sweeps.tuning import CheckpointRetention


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


class FlakyClient:
    """Refuses every call while ``down``, like an unreachable server."""

    def __init__(self):
        self.down, self.calls = False, []

    def write(self, what):
        if self.down:
            raise MlflowException("API request to http://x failed with exception ConnectionError")
        self.calls.append(what)


def test_writes_wait_in_order_through_an_outage_and_go_out_after_it():
    clock, client = Clock(), FlakyClient()
    writer = RetryingWriter(client, grace_s=600, clock=clock, sleep=clock.sleep)
    assert writer.submit("a", lambda c: c.write("a"))
    client.down = True
    assert not writer.submit("b", lambda c: c.write("b"))
    clock.now = 100
    assert not writer.submit("c", lambda c: c.write("c"))
    client.down = False
    clock.now = 200
    assert writer.flush()
    assert client.calls == ["a", "b", "c"] and writer.retries == 2


def test_an_outage_longer_than_the_grace_period_raises():
    clock, client = Clock(), FlakyClient()
    writer = RetryingWriter(client, grace_s=60, clock=clock, sleep=clock.sleep)
    client.down = True
    writer.submit("a", lambda c: c.write("a"))
    with pytest.raises(TrackingUnavailable, match="unreachable for 6[0-9]s"):
        writer.flush(wait_s=120)


def test_a_permanent_error_is_not_retried():
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    def refused(c):
        raise MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE)

    writer = RetryingWriter(FlakyClient(), grace_s=600)
    with pytest.raises(MlflowException, match="bad param"):
        writer.submit("x", refused)


def test_names_put_the_telling_part_first():
    assert trial_run_name({"variant": "unet_ae", "score": "mse", "baseline": None}, "3377f58d") == "unet_ae·mse·3377f58d"
    assert trial_run_name({"variant": "unet_ae", "score": "mse", "baseline": "seed004_denoise"}, "x") == \
        "seed004_denoise·unet_ae·mse"


def test_metric_keys_group_per_score_figures_and_keep_the_objective_in_front():
    assert [metric_key(k) for k in ("objective", "val_auroc", "train_loss")] == ["objective", "val_auroc", "train_loss"]
    assert metric_key("tpr_at_tnr_mse") == "by_score/mse/tpr_at_tnr"
    assert metric_key("tpr_at_tnr_shift_smooth_max") == "by_score/smooth_max/tpr_at_tnr_shift"
    assert metric_key("auroc_elbo") == "by_score/elbo/auroc"
    assert metric_key("epoch") == "trial/epoch" and metric_key("val_pauroc") == "val/pauroc"


@pytest.fixture
def sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return SweepRun.create(uri, "tracking-test", {"space": "quick"}, grace_s=5)


def test_a_retried_trial_continues_its_run(sweep):
    cfg = {"variant": "conv_ae", "score": "mse", "baseline": None, "lr": 0.001}
    first = TrialRun(sweep.tracking, cfg, "t1", {"variant": "conv_ae"})
    first.log_report({"objective": 0.5, "epoch": 1, "tpr_at_tnr_mse": 0.5}, 1)
    # The node is lost: the run is left RUNNING; Ray starts the trial again elsewhere.
    second = TrialRun(sweep.tracking, cfg, "t1", {"variant": "conv_ae"})
    second.log_report({"objective": 0.7, "epoch": 2, "tpr_at_tnr_mse": 0.7}, 2)
    second.end("FINISHED")
    client = MlflowClient(sweep.tracking.tracking_uri)
    runs = client.search_runs([sweep.tracking.experiment_id], "tags.trial_id = 't1'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.tags["restarts"] == "1"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "objective")] == [1, 2]
    assert runs[0].info.run_name == "conv_ae·mse·t1"


def test_a_stopped_trial_ends_finished_with_who_stopped_it(sweep):
    TrialRun(sweep.tracking, {"variant": "conv_ae", "score": "mse", "baseline": None}, "t2").log_report(
        {"objective": 0.1, "epoch": 1}, 1)
    sweep.trial_stopped("t2", 1)
    sweep.writer.flush()
    run = MlflowClient(sweep.tracking.tracking_uri).search_runs([sweep.tracking.experiment_id],
                                                               "tags.trial_id = 't2'")[0]
    assert run.info.status == "FINISHED" and run.data.tags["stopped_by"] == "asha"
    assert run.data.tags["stopped_at_epoch"] == "1"


def test_the_shared_view_opens_this_sweep_sorted_by_best_objective(sweep):
    exp = MlflowClient(sweep.tracking.tracking_uri).get_experiment(sweep.tracking.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    state = json.loads(exp.tags[SHARED_VIEW_TAG + sweep.run_id])
    # The figure the leaderboard ranks by (the best epoch's), not the last epoch's.
    assert state["orderByKey"] == "metrics.`best_objective`" and state["orderByAsc"] is False
    assert state["selectedColumns"][0] == "metrics.`best_objective`" and "tags.`reused_from`" in state["selectedColumns"]
    assert state["searchFilter"] == f"tags.mlflow.parentRunId = '{sweep.run_id}'"
    assert state["compareRunSections"][0]["name"] == "Model metrics"
    assert {c["metricKey"] for c in state["compareRunCharts"]} == {"objective", "val_auroc", "train_loss"}
    assert runs_page(sweep.tracking.experiment_id, sweep.run_id).endswith(f"viewStateShareKey={sweep.run_id}")


def test_finished_trials_lose_their_ray_checkpoint_and_keep_checkpoints_drops_weights_outside_the_best(sweep, tmp_path):
    client = MlflowClient(sweep.tracking.tracking_uri)
    retention = CheckpointRetention(1, sweep.tracking)
    fs = pyarrow.fs.LocalFileSystem()
    trials = {}
    for trial_id, objective, baseline in (("a", 0.9, ""), ("b", 0.5, ""), ("s", 0.1, "seed000")):
        run = TrialRun(sweep.tracking, {"variant": "conv_ae", "score": "mse", "baseline": baseline}, trial_id)
        weights = tmp_path / f"w-{trial_id}"
        weights.mkdir()
        torch.save({"w": torch.zeros(1)}, weights / MODEL_FILE)
        run.log_artifacts(weights)
        run.end("FINISHED")
        ckpt = tmp_path / f"ray-{trial_id}"
        ckpt.mkdir()
        (ckpt / "checkpoint.pt").write_bytes(b"x")
        trials[trial_id] = SimpleNamespace(trial_id=trial_id, status="TERMINATED",
                                           checkpoint=SimpleNamespace(filesystem=fs, path=str(ckpt)))
        retention.on_trial_result(0, [], trials[trial_id], {"objective": objective, "baseline": baseline})
        retention.on_trial_complete(0, list(trials.values()), trials[trial_id])
    retention._sweep.writer.flush()

    def has_weights(trial_id):
        run = client.search_runs([sweep.tracking.experiment_id], f"tags.trial_id = '{trial_id}'")[0]
        return MODEL_FILE in {a.path for a in client.list_artifacts(run.info.run_id)}

    assert has_weights("a") and not has_weights("b") and has_weights("s")
    # A finished trial's Ray checkpoint always goes: only running trials need one (retry, --resume).
    assert not any((tmp_path / f"ray-{t}").exists() for t in "abs")


def test_the_registered_models_torch_pins_are_pyprojects():
    import tomllib

    from anomaly_ae.tracking.mlflow_runs import torch_pins
    from services import REPO

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert torch_pins() == [d for d in deps if d.startswith(("torch==", "torchvision=="))]
