"""The trainable called directly, outside Tune, with tune.report captured."""
import math
import shutil

import numpy as np
import pytest
import torch

from anomaly_ae.detector.checkpoints import load_checkpoint
import trainables.autoencoder as trainable_module
from trainables.autoencoder import train_autoencoder


@pytest.fixture
def reports(monkeypatch, tmp_path):
    """Captures tune.report; persists each checkpoint before returning, as Tune does."""
    captured = []

    def report(metrics, checkpoint=None):
        if checkpoint is not None:
            kept = tmp_path / f"checkpoint_{len(captured)}"
            shutil.copytree(checkpoint.path, kept)
            checkpoint = trainable_module.tune.Checkpoint.from_directory(str(kept))
        captured.append((metrics, checkpoint))

    monkeypatch.setattr(trainable_module.tune, "report", report)
    monkeypatch.setattr(trainable_module.tune, "get_checkpoint", lambda: None)
    return captured


def test_reports_every_epoch_with_stable_keys_and_checkpoint(reports, tiny_splits):
    config = {"variant": "conv_ae", "conv_ae.base_width": 8, "epochs": 3, "steps_per_epoch": 4, "batch_size": 16,
              "score": "topk", "seed": 1}
    train_autoencoder(config, splits=tiny_splits)
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    keys = {frozenset(m) for m, _ in reports}
    assert len(keys) == 1
    metrics = reports[-1][0]
    assert {"objective", "train_loss", "val_auroc", "val_pauroc", "threshold", "tpr_at_tnr_mse",
            "tpr_at_tnr_smooth_max"} <= set(metrics)
    assert metrics["objective"] == metrics["tpr_at_tnr_topk"]
    assert 0.0 <= metrics["objective"] <= 1.0 and math.isfinite(metrics["train_loss"])
    import torch
    with reports[-1][1].as_directory() as d:
        payload = load_checkpoint(f"{d}/checkpoint.pt")
    assert payload["config"]["score"] == "topk" and payload["epoch"] == 3
    assert set(payload["val_scores"]) == {"normal", "spill", "site"}  # the tiny dataset has a site pool
    assert len(payload["val_scores"]["spill"]["topk"]) == len(tiny_splits.val_spill)
    assert len(payload["val_scores"]["site"]["topk"]) == len(tiny_splits.site_selection)
    # Both objectives are reported whichever judges the trial, and the site one is the spills' TPR at the
    # threshold the site rule fixes on the trial's own pool scores.
    from anomaly_ae.stats.thresholds import site_threshold

    site = payload["val_scores"]["site"]["topk"]
    threshold = site_threshold(site, 0.95, tiny_splits.site_selection.spill_bound, tiny_splits.site_selection.delta)
    assert metrics["site_threshold"] == threshold
    assert metrics["objective_site"] == np.mean(payload["val_scores"]["spill"]["topk"] > threshold)
    assert metrics["objective_clean"] == metrics["objective"]


def test_the_site_objective_judges_by_the_site_threshold(reports, tiny_splits):
    config = {"variant": "pca_ae", "pca_ae.n_components": 8, "score": "topk", "objective": "site",
              "score_selection": "best"}
    train_autoencoder(config, splits=tiny_splits)
    metrics = reports[-1][0]
    assert metrics["objective"] == metrics["objective_site"] == metrics[f"tpr_at_site_{metrics['score']}"]
    assert "site_margin" in metrics and "objective_clean" in metrics


def test_same_seed_same_reports(reports, tiny_splits):
    config = {"variant": "conv_ae", "conv_ae.base_width": 8, "epochs": 1, "steps_per_epoch": 3, "batch_size": 8}
    train_autoencoder(config, splits=tiny_splits)
    train_autoencoder(config, splits=tiny_splits)
    assert reports[0][0]["train_loss"] == reports[1][0]["train_loss"]


def test_diverging_trial_reports_worst_objective_and_ends_cleanly(reports, tiny_splits, monkeypatch):
    # Losses live in [0, 1] pixel space and no legal config reliably blows up, so a
    # weight is poisoned before epoch 2; the loss check and what follows are real.
    real_epoch = trainable_module.train_one_epoch

    def poisoned(state, cfg, train):
        if state.epoch == 1:
            with torch.no_grad():
                next(state.model.parameters()).fill_(float("nan"))
        return real_epoch(state, cfg, train)

    monkeypatch.setattr(trainable_module, "train_one_epoch", poisoned)
    config = {"variant": "conv_ae", "conv_ae.base_width": 8, "epochs": 3, "steps_per_epoch": 3, "batch_size": 16}
    train_autoencoder(config, splits=tiny_splits)  # must not raise
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    last = reports[-1][0]
    assert last["diverged"] == 1 and last["objective"] == 0.0 and not math.isnan(last["objective"])


def test_bad_config_is_refused(reports, tiny_splits):
    from anomaly_ae.detector.config import ConfigError
    with pytest.raises(ConfigError, match="conv_ae.depthh"):
        train_autoencoder({"conv_ae.depthh": 2}, splits=tiny_splits)


def test_fan_out_judges_by_the_best_score_and_records_it(reports, tiny_splits):
    config = {"variant": "conv_ae", "conv_ae.base_width": 8, "epochs": 1, "steps_per_epoch": 3, "batch_size": 16,
              "score": "mse", "seed": 1, "score_selection": "best", "objective": "worst_of_shift"}
    train_autoencoder(config, splits=tiny_splits)
    metrics, checkpoint = reports[-1]
    per_score = {k[len("tpr_at_tnr_"):]: v for k, v in metrics.items()
                 if k.startswith("tpr_at_tnr_") and not k.startswith("tpr_at_tnr_shift_")}
    worst = {s: min(v, metrics[f"tpr_at_tnr_shift_{s}"]) for s, v in per_score.items()}
    assert metrics["objective"] == max(worst.values()) == worst[metrics["score"]]
    assert metrics["objective_shift"] == metrics[f"tpr_at_tnr_shift_{metrics['score']}"]
    assert 0.0 <= metrics["selection_bias"] <= 1.0
    with checkpoint.as_directory() as d:
        payload = load_checkpoint(f"{d}/checkpoint.pt")
    assert payload["config"]["score"] == metrics["score"]  # promote deploys the winning score


def test_seed_baseline_keeps_its_own_score_under_fan_out(reports, tiny_splits):
    from search_spaces.baselines import SEED_BASELINES
    from search_spaces import baseline_point

    config = {**baseline_point(SEED_BASELINES["seed000"]), "epochs": 1, "steps_per_epoch": 2,
              "score_selection": "best", "objective": "clean"}
    train_autoencoder(config, splits=tiny_splits)
    metrics = reports[-1][0]
    assert metrics["baseline"] == "seed000" and metrics["score"] == "mse"
    assert metrics["objective"] == metrics["tpr_at_tnr_mse"] and metrics["selection_bias"] == 0.0


def test_closed_form_variant_reports_once_and_is_final(reports, tiny_splits):
    config = {"variant": "pca_ae", "pca_ae.n_components": 8, "epochs": 5, "score_selection": "best"}
    train_autoencoder(config, splits=tiny_splits)
    assert len(reports) == 1
    metrics = reports[0][0]
    assert metrics["epoch"] == 1 and metrics["final"] == 1 and 0.0 <= metrics["objective"] <= 1.0


def test_an_enqueued_trial_is_replayed_from_a_finished_run_unless_rerun(reports, tiny_splits, tmp_path):
    """Fixed work done once, at the trainable: the first sweep trains start:knn5 and keeps its reports;
    a second sweep in the same store replays them (reused_from, no weights of its own); with reuse off
    (--rerun-baselines) it trains again."""
    from mlflow.tracking import MlflowClient

    from trainables.replay import data_key
    from anomaly_ae.tracking.mlflow_runs import SweepRun
    from search_spaces import baseline_points
    from sweeps.spec import SweepSpec
    from sweeps.tuning import trainable_parameters

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    knn5 = baseline_points()[0]
    key = data_key({"dataset_hash": "tiny", "val_normal_fraction": "0.2"})

    def sweep(name: str, reuse: bool):
        tracking = SweepRun.create(uri, name, {"space": "quick"}).tracking
        start = len(reports)
        train_autoencoder(knn5, splits=tiny_splits, tracking=tracking, data_key=key, reuse=reuse)
        client = MlflowClient(uri)
        run = client.search_runs([tracking.experiment_id], f"tags.mlflow.parentRunId = '{tracking.parent_run_id}'")[0]
        return run, [m for m, _ in reports[start:]], {a.path for a in client.list_artifacts(run.info.run_id)}

    first, first_reports, first_files = sweep("fw-1", reuse=True)
    assert "reused_from" not in first.data.tags and {"model.pt", "reports.json"} <= first_files
    again, again_reports, again_files = sweep("fw-2", reuse=True)
    assert again.data.tags["reused_from"] == first.info.run_id
    assert again.data.tags["fixed_work_key"] == first.data.tags["fixed_work_key"]
    assert [{k: v for k, v in r.items() if k != "reused_from"} for r in again_reports] == first_reports
    assert again.info.status == "FINISHED" and again.data.metrics["best_objective"] == first.data.metrics["best_objective"]
    assert "model.pt" not in again_files
    rerun, _, rerun_files = sweep("fw-3", reuse=False)
    assert "reused_from" not in rerun.data.tags and "model.pt" in rerun_files
    # --rerun-baselines is what turns reuse off.
    assert trainable_parameters(SweepSpec(rerun_baselines=True), None, None, key)["reuse"] is False
    assert trainable_parameters(SweepSpec(), None, None, key)["reuse"] is True


def test_a_searched_trial_reports_its_best_scores_objective(reports, tiny_splits):
    """Score fan-out: a searched trial (score_selection best) reports the best of its scores' objectives,
    what Optuna and ASHA then see (the tiny dataset has a site pool: the site objective)."""
    config = {"variant": "conv_ae", "conv_ae.base_width": 8, "epochs": 1, "steps_per_epoch": 2, "batch_size": 16,
              "score": "mse", "seed": 2, "score_selection": "best", "objective": "site"}
    train_autoencoder(config, splits=tiny_splits)
    metrics = reports[-1][0]
    per_score = [v for k, v in metrics.items() if k.startswith("tpr_at_site_")]
    assert len(per_score) > 3 and metrics["objective"] == max(per_score)
