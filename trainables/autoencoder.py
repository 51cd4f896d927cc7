"""The Ray Tune function trainable: a plain function of a config dict.

It validates the sampled config, trains the chosen variant, and after every
``eval_every`` epochs reports one dict with stable keys whose ``objective`` is
the TNR-constrained TPR of the trial's score on the validation split.
Each trial also writes one MLflow child run under the sweep's parent run (anomaly_ae.tracking.mlflow_runs),
continued by trial id when Ray retries the trial on another node.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ray import tune

from anomaly_ae.data import Splits
from anomaly_ae.detector.checkpoints import CHECKPOINT_FILE, MODEL_FILE, checkpoint_payload, load_checkpoint, save_checkpoint
from anomaly_ae.detector.config import stored_config
from anomaly_ae.detector.training import DivergedError, build_trial, train_one_epoch
from anomaly_ae.detector.validation import SiteInput, evaluate, judge, nuisance_split, score_images
from anomaly_ae.models import model_spec
from anomaly_ae.stats.selection import OBJECTIVE_COLUMNS, OBJECTIVE_MARGIN, site_blend, tie_break
from anomaly_ae.tracking.mlflow_runs import Tracking, TrackingUnavailable, TrialRun, trial_run_name
from anomaly_ae.tracking.plots import reconstruction_grid, roc_plot, score_histogram
from search_spaces import config_from_params
from search_spaces.baselines import match_baseline
from trainables.replay import KEY_TAG, REPORTS_FILE, REUSED_TAG, find_reusable_run, replay_key

# How long a trial being torn down (stopped by the scheduler) waits for its queued MLflow writes.
TEARDOWN_FLUSH_S = 30.0


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
    # Every objective the trial's scores support, whichever one judges it: the leaderboard and the UI
    # show the clean and the site objective side by side.
    report["objective_clean"] = main["tpr_at_tnr"]
    report["val_margin"] = main["val_margin"]
    if "tpr_at_tnr_shift" in main:
        report["objective_shift"] = main["tpr_at_tnr_shift"]
    if "tpr_at_site" in main:
        report["objective_site"], report["site_margin"] = main["tpr_at_site"], main["site_margin"]
        report["site_threshold"] = main["site_threshold"]
    if "tpr_at_site_matched" in main:
        report["objective_site_matched"] = main["tpr_at_site_matched"]
        report["site_matched_margin"] = main["site_matched_margin"]
        report["objective_site_blend"] = site_blend(main["tpr_at_tnr"], main["tpr_at_site_matched"])
    for name, m in metrics.items():
        report[f"tpr_at_tnr_{name}"] = m["tpr_at_tnr"]
        report[f"auroc_{name}"] = m["auroc"]
        if "tpr_at_tnr_shift" in m:
            report[f"tpr_at_tnr_shift_{name}"] = m["tpr_at_tnr_shift"]
        if "tpr_at_site" in m:
            report[f"tpr_at_site_{name}"] = m["tpr_at_site"]
    return report


def best_epoch_metrics(report: dict, objective: str) -> dict:
    """The figures a trial is ranked by, logged again whenever its objective reaches a new best."""
    out = {"best_objective": report["objective"],
           "best_tie_break": tie_break({k: report.get(k, math.nan) for k in OBJECTIVE_MARGIN.values()}, objective)}
    for key in OBJECTIVE_COLUMNS:
        if key in report:
            out[f"best_{key}"] = report[key]
    return out


def log_best_epoch(run: TrialRun, cfg: dict, report: dict) -> None:
    """A new best epoch: its figures become the run's latest values (what the leaderboard ranks by),
    and the run's score tag and name follow the score it was judged by."""
    run.log_report(best_epoch_metrics(report, cfg["objective"]), report["epoch"])
    if report["score"] != run.score:
        judged = {**cfg, "score": report["score"]}
        run.set_tags(score=report["score"], **{"mlflow.runName": trial_run_name(judged, run.trial_id)})
        run.score = report["score"]


def write_trial_artifacts(folder: Path, state, cfg: dict, splits_tensors, val_scores: dict, report: dict,
                          payload: dict) -> None:
    """What MLflow keeps of the best epoch so far: weights without optimizer state, and the plots."""
    save_checkpoint(folder / MODEL_FILE, payload, with_optimizer=False)
    _, normal_pairs = score_images(state, cfg, splits_tensors["val_normal"][:8], keep_recon=8)
    _, spill_pairs = score_images(state, cfg, splits_tensors["val_spill"][:8], keep_recon=8)
    reconstruction_grid(normal_pairs, spill_pairs, folder / "reconstructions.png")
    normal, spill = val_scores["normal"][cfg["score"]], val_scores["spill"][cfg["score"]]
    score_histogram(normal, spill, report["threshold"], folder / "score_histogram.png",
                    f"{cfg['variant']} / {cfg['score']}: TPR@TNR{cfg['tnr_target']:.2f} = {report['objective']:.3f}")
    roc_plot(normal, spill, folder / "roc.png")


def _trial_identity() -> str:
    try:
        return tune.get_context().get_trial_id() or "local"
    except Exception:  # noqa: BLE001 - called outside a Tune session (unit tests)
        return "local"


def cap_gpu_memory(device: torch.device) -> None:
    """Hold a fractional-GPU trial to its share of the GPU's memory.

    Ray's ``num_gpus`` only schedules; nothing stops four trials at 0.25 from using the whole card.
    Past its share a trial gets a CUDA out-of-memory error, and fails alone."""
    import ray

    if device.type != "cuda" or not ray.is_initialized():
        return
    share = ray.get_runtime_context().get_assigned_resources().get("GPU", 1.0)
    if 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, device)


def current_node_id() -> str:
    """The Ray node this trial runs on ("local" outside Ray): cluster sweeps show their spread."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def train_autoencoder(config: dict, splits: Splits | None = None, tracking: Tracking | None = None,
                      data_key: str | None = None, reuse: bool = True) -> None:
    """Ray Tune function trainable. ``splits`` arrives through the object store.

    ``data_key`` (trainables.replay) makes an enqueued trial's run findable by later sweeps; with
    ``reuse``, an enqueued trial that a finished run in the store already trained is replayed from it.
    """
    if splits is None:
        raise ValueError("train_autoencoder needs the dataset splits (tune.with_parameters(..., splits=...))")
    cfg = stored_config(config_from_params(config))
    cfg["baseline"] = cfg["baseline"] or match_baseline(cfg)
    if cfg["baseline"]:
        cfg["score_selection"] = "fixed"  # a baseline is judged by the score its write-up used
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    trial_id = _trial_identity()
    # Retried on another node or resumed, the trial reopens its own run (found by trial id).
    run = TrialRun(tracking, cfg, trial_id, config)
    key = replay_key(cfg, data_key) if cfg["baseline"] and data_key is not None and tracking else None
    if key is not None:
        run.set_tags(**{KEY_TAG: key})
    earlier = None
    if key is not None and reuse and tune.get_checkpoint() is None:
        try:
            earlier = find_reusable_run(run.writer.client, key)
        except Exception:  # noqa: BLE001 - a store that cannot answer now costs a retraining, not the trial
            earlier = None
    try:
        if earlier is not None:
            _replay(cfg, run, *earlier)
        else:
            _train(cfg, splits, run, keep_reports=key is not None)
    except DivergedError as exc:
        run.end("FAILED", failure=f"diverged: {exc}")
    except TrackingUnavailable:
        raise  # nothing more can be written; Ray records the error (and retries the trial, if allowed)
    except Exception as exc:
        run.end("FAILED", failure=f"{type(exc).__name__}: {exc}"[:5000])
        raise
    except BaseException:
        # SystemExit inside tune.report: the scheduler stopped the trial, or the user interrupted the
        # sweep. The driver knows which, and closes the run (FINISHED with stopped_by=asha, or KILLED).
        run.flush(TEARDOWN_FLUSH_S)
        raise


def _replay(cfg: dict, run: TrialRun, origin_run_id: str, reports: list[dict]) -> None:
    """Report a finished run's epochs again, as this trial's: the search, the scheduler and this
    sweep's run see what training would have given; the weights stay in the earlier run."""
    run.set_tags(**{REUSED_TAG: origin_run_id, "node_id": current_node_id()})
    best = -math.inf
    for i, report in enumerate(reports, 1):
        report = {**report, REUSED_TAG: origin_run_id}
        run.log_report(report, report["epoch"])
        if report["objective"] > best:
            best = report["objective"]
            log_best_epoch(run, cfg, report)
        if i == len(reports):
            run.end("FINISHED")
        tune.report(report)


def resume_from_checkpoint(state) -> tuple[int, float]:
    """(epochs done, best objective so far): from Tune's checkpoint when the trial restarts, else (0, -inf)."""
    resumed = tune.get_checkpoint()
    if resumed is None:
        return 0, -math.inf
    with resumed.as_directory() as d:
        payload = load_checkpoint(Path(d) / CHECKPOINT_FILE, map_location=state.device)
    state.model.load_state_dict(payload["model_state"])
    if state.optimizer is not None:
        state.optimizer.load_state_dict(payload["optimizer_state"])
    state.epoch = payload["epoch"]
    return payload["epoch"], payload.get("best_objective", -math.inf)


def trial_facts(state, cfg: dict, node_id: str) -> dict:
    """What an epoch report carries besides its figures: where it ran, what the latent scores cost so far,
    the GPU memory peak, and which enqueued trial it is."""
    facts = {"node_id": node_id, "latent_seconds": state.latent_seconds, "baseline": cfg["baseline"] or ""}
    if state.device.type == "cuda":
        facts["gpu_peak_mem_mb"] = torch.cuda.max_memory_allocated(state.device) / 2**20
    return facts


def _train(cfg: dict, splits: Splits, run: TrialRun, keep_reports: bool = False) -> None:
    state = build_trial(cfg, torch.from_numpy(np.ascontiguousarray(splits.train)))
    dev = state.device
    cap_gpu_memory(dev)
    tensors = {k: torch.from_numpy(np.ascontiguousarray(getattr(splits, k))).to(dev)
               for k in ("train", "val_normal", "val_spill")}
    shifted = nuisance_split(tensors["val_normal"], tensors["val_spill"], cfg)
    site = SiteInput.of(splits, dev)
    start_epoch, best = resume_from_checkpoint(state)
    # A closed-form variant is fitted once: one report, then the trial is done.
    last_epoch = 1 if model_spec(cfg["variant"]).closed_form else cfg["epochs"]
    node_id = current_node_id()
    run.set_tags(node_id=node_id)
    reports = []
    for epoch in range(start_epoch + 1, last_epoch + 1):
        tick = time.perf_counter()
        try:
            train_loss = train_one_epoch(state, cfg, tensors["train"])
        except DivergedError:
            # Report a worst-case objective (never NaN: ASHA and Optuna would not learn from it).
            run.log_report({"objective": 0.0, "diverged": 1}, epoch)
            tune.report({"epoch": epoch, "objective": 0.0, "diverged": 1, "train_loss": float("inf")})
            raise
        if epoch % cfg["eval_every"] and epoch != last_epoch:
            continue
        metrics, val_scores = evaluate(state, cfg, tensors["val_normal"], tensors["val_spill"], shifted, site)
        verdict = judge(metrics, val_scores, cfg)
        report = {**epoch_report(epoch, train_loss, metrics, verdict, time.perf_counter() - tick),
                  **trial_facts(state, cfg, node_id), "final": int(epoch == last_epoch)}
        run.log_report(report, epoch)
        reports.append(report)
        judged = {**cfg, "score": verdict["score"]}
        payload = checkpoint_payload(state, judged, val_scores, report)
        if report["objective"] > best:
            best = report["objective"]
            log_best_epoch(run, cfg, report)
            with tempfile.TemporaryDirectory() as tmp:
                write_trial_artifacts(Path(tmp), state, judged, tensors, val_scores, report, payload)
                run.log_artifacts(tmp)
        with tempfile.TemporaryDirectory() as tmp:
            # Ray keeps what resume needs (weights, optimizer state, epoch), only the latest one.
            save_checkpoint(Path(tmp) / CHECKPOINT_FILE, {**payload, "best_objective": best}, with_optimizer=True)
            if epoch == last_epoch:
                if keep_reports and start_epoch == 0:  # what a later sweep replays (trainables.replay)
                    run.log_dict(reports, REPORTS_FILE)
                # The scheduler may stop the trial inside this last report (ASHA does at
                # max_t), so the run is closed first.
                run.end("FINISHED")
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
