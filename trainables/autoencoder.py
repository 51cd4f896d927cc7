"""The Ray Tune function trainable: a plain function of a config dict.

It validates the sampled config, trains the chosen variant, and after every
``eval_every`` epochs reports one dict with stable keys whose ``objective`` is
the TNR-constrained TPR of the trial's score on the validation split.
Each trial also writes one MLflow child run under the sweep's parent run.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ray import tune

from anomaly_ae.baselines import match_baseline
from anomaly_ae.config import validate_config
from anomaly_ae.data import Splits
from anomaly_ae.models import model_spec
from anomaly_ae.training import (
    DivergedError, build_trial, checkpoint_payload, evaluate, judge, nuisance_split, score_images, train_one_epoch,
)
from search_spaces import config_from_params

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass(frozen=True)
class Tracking:
    """Where a trial logs: set on the driver, which creates the experiment and parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def flatten_params(cfg: dict) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(cfg.items())}


def epoch_report(epoch: int, train_loss: float, metrics: dict, verdict: dict, seconds: float) -> dict:
    """One report dict with stable keys: the objective, the score it came from, every score's figures."""
    main = metrics[verdict["score"]]
    report = {
        "epoch": epoch,
        "objective": verdict["objective"],
        "score": verdict["score"],
        "selection_bias": verdict["selection_bias"],
        "train_loss": train_loss,
        "val_auroc": main["auroc"],
        "val_pauroc": main["pauroc"],
        "val_aupr": main["aupr"],
        "threshold": main["threshold"],
        "epoch_seconds": seconds,
        "diverged": 0,
    }
    if "tpr_at_tnr_shift" in main:
        report["objective_clean"], report["objective_shift"] = main["tpr_at_tnr"], main["tpr_at_tnr_shift"]
    for name, m in metrics.items():
        report[f"tpr_at_tnr_{name}"] = m["tpr_at_tnr"]
        report[f"auroc_{name}"] = m["auroc"]
        if "tpr_at_tnr_shift" in m:
            report[f"tpr_at_tnr_shift_{name}"] = m["tpr_at_tnr_shift"]
    return report


class TrialRun:
    """The trial's MLflow child run; a no-op when the trial runs without tracking."""

    def __init__(self, tracking: Tracking | None, cfg: dict, trial_name: str, trial_id: str,
                 search_params: dict | None = None):
        self.client = self.run_id = None
        self.ended = False
        if tracking is None:
            return
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking.tracking_uri)
        tags = {"mlflow.parentRunId": tracking.parent_run_id, "mlflow.runName": trial_name,
                "trial_id": trial_id, "variant": cfg["variant"], "score": cfg["score"],
                "baseline": cfg["baseline"] or "",
                # The sampler's own parameter names, so analysis can replay the trials into a study.
                "search_params": json.dumps(search_params or {}, sort_keys=True)}
        self.run_id = self.client.create_run(tracking.experiment_id, tags=tags).info.run_id
        params = flatten_params(cfg)
        from mlflow.entities import Param
        self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def log_metrics(self, report: dict, step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in report.items()
                   if isinstance(v, (int, float)) and math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=metrics)

    def set_tag(self, key: str, value: str) -> None:
        if self.client is not None:
            self.client.set_tag(self.run_id, key, value)

    def log_artifacts(self, folder: str) -> None:
        if self.client is not None:
            self.client.log_artifacts(self.run_id, folder)

    def end(self, status: str, **tags) -> None:
        """Set a terminal status once; later calls are no-ops."""
        if self.client is None or self.ended:
            return
        self.ended = True
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))
        self.client.set_terminated(self.run_id, status)


def write_trial_artifacts(folder: Path, state, cfg: dict, splits_tensors, val_scores: dict, report: dict,
                          payload: dict) -> None:
    """Checkpoint, reconstruction grid, score histogram and ROC of the best epoch so far."""
    from analysis.plots import reconstruction_grid, roc_plot, score_histogram

    torch.save(payload, folder / CHECKPOINT_FILE)
    _, normal_pairs = score_images(state, cfg, splits_tensors["val_normal"][:8], keep_recon=8)
    _, spill_pairs = score_images(state, cfg, splits_tensors["val_spill"][:8], keep_recon=8)
    reconstruction_grid(normal_pairs, spill_pairs, folder / "reconstructions.png")
    normal, spill = val_scores["normal"][cfg["score"]], val_scores["spill"][cfg["score"]]
    score_histogram(normal, spill, report["threshold"], folder / "score_histogram.png",
                    f"{cfg['variant']} / {cfg['score']}: TPR@TNR{cfg['tnr_target']:.2f} = {report['objective']:.3f}")
    roc_plot(normal, spill, folder / "roc.png")


def _trial_identity() -> tuple[str, str]:
    try:
        ctx = tune.get_context()
        return ctx.get_trial_name() or "local", ctx.get_trial_id() or "local"
    except Exception:  # noqa: BLE001 - called outside a Tune session (unit tests)
        return "local", "local"


def current_node_id() -> str:
    """The Ray node this trial runs on ("local" outside Ray): cluster sweeps show their spread."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def train_autoencoder(config: dict, splits: Splits | None = None, tracking: Tracking | None = None) -> None:
    """Ray Tune function trainable. ``splits`` arrives through the object store."""
    if splits is None:
        raise ValueError("train_autoencoder needs the dataset splits (tune.with_parameters(..., splits=...))")
    cfg = validate_config(config_from_params(config))
    cfg["baseline"] = cfg["baseline"] or match_baseline(cfg)
    if cfg["baseline"]:
        cfg["score_selection"] = "fixed"  # a baseline is judged by the score its write-up used
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    name, trial_id = _trial_identity()
    run = TrialRun(tracking, cfg, name, trial_id, config)
    status = "KILLED"  # stays so if the scheduler stops us inside tune.report
    try:
        _train(cfg, splits, run)
        status = "FINISHED"
    except DivergedError as exc:
        status = "FAILED"
        run.end(status, failure=f"diverged: {exc}")
        return
    except Exception as exc:
        status = "FAILED"
        run.end(status, failure=f"{type(exc).__name__}: {exc}"[:5000])
        raise
    finally:
        if status == "KILLED":
            run.end("KILLED", stopped_by="scheduler")
        elif status == "FINISHED":
            run.end("FINISHED")


def _train(cfg: dict, splits: Splits, run: TrialRun) -> None:
    state = build_trial(cfg, torch.from_numpy(np.ascontiguousarray(splits.train)))
    dev = state.device
    tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(splits, k))).to(dev)
               for k in ("train", "val_normal", "val_spill")}
    shifted = nuisance_split(tensors["val_normal"], tensors["val_spill"], cfg)
    start_epoch = 0
    resumed = tune.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            payload = torch.load(Path(d) / CHECKPOINT_FILE, map_location=dev, weights_only=False)
        state.model.load_state_dict(payload["model_state"])
        if state.optimizer is not None:
            state.optimizer.load_state_dict(payload["optimizer_state"])
        state.epoch = start_epoch = payload["epoch"]
    # A closed-form variant is fitted once: one report, then the trial is done.
    last_epoch = 1 if model_spec(cfg["variant"]).closed_form else cfg["epochs"]
    best = -math.inf
    node_id = current_node_id()
    run.set_tag("node_id", node_id)
    for epoch in range(start_epoch + 1, last_epoch + 1):
        tick = time.perf_counter()
        try:
            train_loss = train_one_epoch(state, cfg, tensors["train"])
        except DivergedError:
            # Report a worst-case objective (never NaN: ASHA and Optuna would not learn from it).
            run.log_metrics({"objective": 0.0, "diverged": 1}, epoch)
            tune.report({"epoch": epoch, "objective": 0.0, "diverged": 1, "train_loss": float("inf")})
            raise
        if epoch % cfg["eval_every"] and epoch != last_epoch:
            continue
        metrics, val_scores = evaluate(state, cfg, tensors["val_normal"], tensors["val_spill"], shifted)
        verdict = judge(metrics, val_scores, cfg)
        report = epoch_report(epoch, train_loss, metrics, verdict, time.perf_counter() - tick)
        report["node_id"] = node_id
        report["baseline"] = cfg["baseline"] or ""
        report["final"] = int(epoch == last_epoch)
        run.log_metrics(report, epoch)
        judged = {**cfg, "score": verdict["score"]}
        payload = checkpoint_payload(state, judged, val_scores, report)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if report["objective"] > best:
                best = report["objective"]
                run.set_tag("score", verdict["score"])
                write_trial_artifacts(folder, state, judged, tensors, val_scores, report, payload)
                run.log_artifacts(tmp)
            else:
                torch.save(payload, folder / CHECKPOINT_FILE)
            if epoch == last_epoch:
                # The scheduler may stop the trial inside this last report (ASHA does at
                # max_t), so the run is closed first.
                run.end("FINISHED")
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
