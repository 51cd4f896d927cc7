"""A sweep's life, in one object: ``Sweep.create(spec)`` or ``Sweep.resume(spec)``, then ``run()``.

create: validate the spec, load the data and its splits, enqueue the seed baselines and start
points, gather warm-start trials, open the parent run (and the Optuna study), score the references.
run: the Ray Tune fit, progress lines, closing the runs, and the result frame (``SweepOutcome``).
"""
from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from anomaly_ae.stats.selection import site_blend
from sweeps.spec import (
    DEFAULT_OBJECTIVE, REPO, SpecError, SweepSpec, configure_environment, ensure_dataset,
)
from trainables.replay import data_key

logger = logging.getLogger(__name__)

LIBRARY_LOGGERS = ("ray", "mlflow", "optuna", "alembic")


@dataclass
class SweepOutcome:
    """What a finished (or interrupted) sweep leaves: its trials ranked, the references, where to look."""

    experiment: str
    parent_run_id: str
    interrupted: bool
    trials_recorded: int
    runs_closed: int
    frame: pd.DataFrame | None = None
    references: pd.DataFrame | None = None
    runs_page: str = ""

    def summary_lines(self, tracking_uri: str, log_path: Path) -> list[str]:
        """What a finished sweep prints: leaderboard, verdict, where its runs and logs are."""
        from sweeps.leaderboard import format_leaderboard, latent_cost_line, search_verdict

        lines = ["", format_leaderboard(self.frame, references=self.references),
                 search_verdict(self.frame, self.references)]
        if latent_cost_line(self.frame):
            lines.append(latent_cost_line(self.frame))
        lines.append(f"\nMLflow experiment {self.experiment!r}, parent run {self.parent_run_id}")
        # This sweep's runs, best objective first, with the telling columns (a view kept in the experiment).
        if tracking_uri.startswith(("http://", "https://")):
            return lines + [f"the sweep's runs:  {tracking_uri.rstrip('/')}/{self.runs_page}"]
        return lines + [f"library logs (Ray, MLflow, Optuna): {log_path}",
                        f"open the UI:  mlflow ui --backend-store-uri {tracking_uri}",
                        f"  then the sweep's runs:  http://127.0.0.1:5000/{self.runs_page}"]


def route_library_logs(path: Path) -> Path:
    """Send Ray's, MLflow's, Optuna's and Alembic's log lines to ``path`` instead of the terminal.

    Their notices (token auth, database creation, "new study") are for debugging, not progress.
    Each library installs its own handler when first imported, so they are imported first.
    """
    import mlflow  # noqa: F401
    import optuna
    import ray  # noqa: F401

    optuna.logging.disable_default_handler()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # On the root logger: ray.init() empties the "ray" logger's own handlers.
    logging.getLogger().addHandler(handler)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(logging.INFO)
    return path


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_perceptual() -> bool:
    from anomaly_ae.detector.losses import PerceptualWeightsMissing, find_perceptual_weights

    try:
        find_perceptual_weights("alexnet")
        return True
    except PerceptualWeightsMissing:
        logger.info("note: no pretrained AlexNet weights on disk, so the perceptual loss/score and the seed004 "
                    "baseline are left out (seed004_denoise runs instead); see README, 'What is searched'.")
        return False


def resolve_objective(spec: SweepSpec, splits) -> SweepSpec:
    """The objective checked against the data: the site objectives need a site pool, and each of its two
    parts large enough for the site rule."""
    from anomaly_ae.stats.thresholds import min_site_pool_size

    parts = (splits.site_selection, splits.site_calibration)
    if parts[0] is None:
        if spec.objective.startswith("site"):
            raise SpecError(f"--objective {spec.objective}: there is no site pool (give --site DIR, or put crops in "
                            f"DATA/site/)")
        return spec
    need = min_site_pool_size(spec.tnr_target, parts[0].spill_bound, parts[0].delta)
    if min(len(p) for p in parts) < need:
        raise SpecError(f"--site: {parts[0].root} holds {sum(len(p) for p in parts)} crops, split into "
                        f"{len(parts[0])} that choose and {len(parts[1])} that calibrate; the site threshold needs at "
                        f"least {need} in each for TNR >= {spec.tnr_target} with probability {1 - parts[0].delta:g} at "
                        f"a spill bound of {parts[0].spill_bound:g} (--site-calibration-share sets the split)")
    return spec


class Sweep:
    """One sweep: its spec, its parent run, and how to fit it."""

    def __init__(self, spec: SweepSpec, run, fit: Callable):
        self.spec, self.run_record, self._fit = spec, run, fit

    @property
    def parent_run_id(self) -> str:
        return self.run_record.run_id

    # ------------------------------------------------------------- create

    @classmethod
    def create(cls, spec: SweepSpec) -> "Sweep":
        """Validate, load the data, enqueue the fixed trials, open the parent run, score the references."""
        from anomaly_ae.data import load_proliv, make_splits
        from anomaly_ae.data.site import split_description
        from anomaly_ae.tracking.mlflow_runs import SweepRun

        configure_environment()
        spec.validate()
        trial_config = spec.trial_config()
        study_storage = open_study(spec)
        data_dir = ensure_dataset(spec.data, spec.scale)
        tick = time.perf_counter()
        data = load_proliv(data_dir, site=spec.site, site_max_spill_fraction=spec.site_bound,
                           site_delta=spec.site_risk, site_review=spec.site_review)
        splits = make_splits(data, spec.val_fraction, spec.val_spill_fraction, seed=0,
                             site_calibration_share=spec.site_share)
        site_note = (f", {len(data.site)} site crops from {data.site.root} ({len(splits.site_selection)} choose, "
                     f"{len(splits.site_calibration)} calibrate)" if data.site is not None else ", no site pool")
        logger.info(f"data: {data_dir} ({len(splits.train)} train, {len(splits.val_normal)} val normals, "
                    f"{len(splits.val_spill)} val spills{site_note}; decoded/cached in {time.perf_counter() - tick:.1f}s)")
        spec = resolve_objective(spec, splits)
        perceptual = find_perceptual()
        points = enqueued_points(spec, trial_config, perceptual)
        tags = {
            "space": spec.space, "storage_path": str(spec.storage_path), "dataset_path": str(Path(data_dir).resolve()), "dataset_hash": data.content_hash,
            "git_commit": git_commit(), "command": " ".join(shlex.quote(a) for a in sys.argv),
            "num_samples": str(spec.num_samples), "perceptual": str(int(perceptual)),
            "tnr_target": str(spec.tnr_target), "n_val_normal": str(len(splits.val_normal)),
            "n_val_spill": str(len(splits.val_spill)), "val_normal_fraction": str(spec.val_fraction),
            "val_spill_fraction": str(spec.val_spill_fraction), "split_seed": "0",
            "ray_experiment_path": spec.experiment_path, "objective": spec.objective,
            "score_selection": spec.score_selection, "sampler": spec.sampler, "scheduler": spec.scheduler,
            "seed": str(spec.seed), "grace_period": str(spec.grace_period), "labelled_hash": data.labelled_hash,
            **(data.site.describe() if data.site is not None else {}),
            **(split_description(splits.site_selection, splits.site_calibration, spec.site_share)
               if data.site is not None else {}),
        }
        warm_trials = gather_warm_start(spec, tags, perceptual)
        run = SweepRun.create(spec.tracking_uri, spec.experiment_name, tags)
        study = claim_study(spec, study_storage, run)
        references = {} if spec.no_references else score_references(run, splits, spec)

        def fit():
            from sweeps.tuning import run_sweep

            return run_sweep(spec, splits, run.tracking, data_key(tags), points, perceptual, warm_trials,
                             references, study)

        return cls(spec, run, fit)

    # ------------------------------------------------------------- resume

    @classmethod
    def resume(cls, spec: SweepSpec) -> "Sweep":
        """Reopen the interrupted sweep's parent run; its dataset must be unchanged."""
        configure_environment()  # before Ray's first import
        from mlflow.tracking import MlflowClient
        from ray import tune

        from anomaly_ae.tracking.mlflow_runs import SweepRun
        from sweeps.runs import find_parent_run, load_sweep_data
        from sweeps.tuning import resume_sweep

        spec.validate()
        if not tune.Tuner.can_restore(spec.experiment_path):
            raise SpecError(f"--resume: no Ray experiment state at {spec.experiment_path} "
                            f"(check --storage-path and --experiment)")
        parent = find_parent_run(MlflowClient(spec.tracking_uri), spec.experiment_name)
        tags = parent.data.tags
        spec = spec.replace(space=tags.get("space", spec.space),
                            num_samples=int(tags.get("num_samples", spec.num_samples)),
                            objective=tags.get("objective", DEFAULT_OBJECTIVE))
        _, splits = load_sweep_data(parent, spec.data)
        # Runs the interruption cut off are marked KILLED; a resumed trial reopens its own run.
        run, closed = SweepRun.reopen(spec.tracking_uri, parent)
        study = tags.get("optuna_study")
        logger.info(f"resuming sweep {spec.experiment_name!r} (parent run {parent.info.run_id}); {closed} interrupted "
                    f"run(s) marked KILLED" + (f"; optuna study {study!r} in {tags['optuna_storage']} continues"
                                               if study else ""))
        return cls(spec, run, lambda: resume_sweep(spec, splits, run.tracking, data_key(tags), spec.experiment_path))

    # ------------------------------------------------------------- run

    def run(self) -> SweepOutcome:
        """Fit; close the runs; rank the trials. An interrupted fit leaves the sweep resumable."""
        from sweeps.leaderboard import leaderboard_rows, results_frame, summary_metrics
        from sweeps.runs import reference_frame
        from sweeps.tuning import was_interrupted

        spec, run = self.spec, self.run_record
        try:
            results = self._fit()
        except BaseException as exc:
            run.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        outcome = SweepOutcome(spec.experiment_name, run.run_id, False, len(results), 0, runs_page=run.runs_page)
        if was_interrupted(results, spec.num_samples, spec.time_budget_s):
            outcome.interrupted, outcome.runs_closed = True, run.end("KILLED")
            return outcome
        frame = results_frame(results)
        references = reference_frame(run.client, run.client.get_run(run.run_id))
        run.summarise(leaderboard_rows(frame, len(frame), references), summary_metrics(frame))
        # Trials the time budget cut off ran as told: they end FINISHED, like those ASHA stopped.
        outcome.runs_closed = run.end("FINISHED", "FINISHED", "time_budget" if spec.time_budget_s else "sweep_end")
        outcome.frame, outcome.references = frame, references
        return outcome


# ----------------------------------------------------------------- the parts create() puts together

def enqueued_points(spec: SweepSpec, trial_config: dict | None, perceptual: bool) -> list[dict]:
    """The trials every sweep runs first: a ``--config`` file, the PCA start point, the seed baselines."""
    from search_spaces import baseline_point, baseline_points

    points = [] if trial_config is None else [baseline_point(trial_config, perceptual)]
    if not spec.no_baselines and spec.space != "writeups":
        points += baseline_points(perceptual)
    return points


def open_study(spec: SweepSpec):
    """The ``--optuna-storage`` database, reachable and ready, or None."""
    if not spec.optuna_storage:
        return None
    from anomaly_ae.tracking.study_storage import StudyStorageError, open_study_storage

    try:
        return open_study_storage(spec.optuna_storage)
    except StudyStorageError as exc:
        raise SpecError(str(exc)) from exc


def claim_study(spec: SweepSpec, storage, run) -> tuple | None:
    """The sweep's study name in ``storage``, claimed (a taken name is refused); recorded on the parent run."""
    if storage is None:
        return None
    from anomaly_ae.tracking.study_storage import StudyStorageError, claim_study_name, sweep_study_name
    from anomaly_ae.tracking.server import redact

    try:
        name = claim_study_name(storage, sweep_study_name(spec.experiment_name, run.run_id))
    except StudyStorageError as exc:
        run.end("FAILED")
        raise SpecError(str(exc)) from exc
    run.client.set_tag(run.run_id, "optuna_study", name)
    run.client.set_tag(run.run_id, "optuna_storage", redact(spec.optuna_storage))
    logger.info(f"optuna study {name!r} in {redact(spec.optuna_storage)} (optuna-dashboard "
                f"{redact(spec.optuna_storage)} shows it)")
    return storage, name


def score_references(run, splits, spec: SweepSpec) -> dict[str, float]:
    """Fit the reference detectors and log each as a run under the sweep's parent; returns their objectives."""
    from sweeps.references import fit_references

    refs = fit_references(splits, spec.tnr_target, spec.objective)
    for ref in refs:
        metrics = {"objective": ref.objective, "best_objective": ref.objective, "val_auroc": ref.metrics["auroc"],
                   "val_pauroc": ref.metrics["pauroc"], "tpr_at_tnr": ref.metrics["tpr_at_tnr"],
                   "threshold": ref.metrics["threshold"], "fit_seconds": ref.fit_seconds}
        if "tpr_at_tnr_shift" in ref.metrics:
            metrics["objective_shift"] = ref.metrics["tpr_at_tnr_shift"]
        if "tpr_at_site" in ref.metrics:
            metrics.update(objective_site=ref.metrics["tpr_at_site"], site_margin=ref.metrics["site_margin"])
        if "tpr_at_site_matched" in ref.metrics:
            metrics.update(objective_site_matched=ref.metrics["tpr_at_site_matched"],
                           site_matched_margin=ref.metrics["site_matched_margin"],
                           objective_site_blend=site_blend(ref.metrics["tpr_at_tnr"], ref.metrics["tpr_at_site_matched"]))
        metrics.update(objective_clean=ref.metrics["tpr_at_tnr"], val_margin=ref.metrics["val_margin"])
        run.log_reference(ref.name, ref.description, metrics)
    logger.info("references: " + ", ".join(f"{r.name} {r.objective:.3f} ({r.fit_seconds:.1f}s)" for r in refs))
    return {r.name: r.objective for r in refs}


def gather_warm_start(spec: SweepSpec, tags: dict, perceptual: bool) -> list:
    """Finished trials of earlier sweeps that fit this sweep's space, as Optuna trials."""
    if spec.no_warm_start:
        return []
    from mlflow.tracking import MlflowClient

    from search_spaces import frozen_trials
    from sweeps.runs import earlier_observations

    experiments = spec.warm_start.split(",") if spec.warm_start else None
    observations, sweeps = earlier_observations(MlflowClient(spec.tracking_uri), tags, experiments)
    if not observations:
        if experiments:
            logger.info(f"warm start: no finished trials in {', '.join(experiments)} on this dataset")
        return []
    trials, skipped = frozen_trials(spec.search_space(perceptual), observations)
    logger.info(f"warm start: {len(trials)} trials from {sweeps} earlier sweep(s)"
                + (f"; {skipped} skipped (no longer fit the space)" if skipped else ""))
    return trials
