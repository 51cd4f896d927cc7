"""A sweep as one DataFrame, read from its MLflow runs (the durable record).

One row per trial: the leaderboard columns, status, wall time, epochs run,
the best and final objective, and every config key as a ``param.<key>`` column.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from anomaly_ae.stats.metrics import clopper_pearson
from anomaly_ae.stats.thresholds import SITE_RISK, SITE_SPILL_BOUND
from anomaly_ae.tracking.mlflow_runs import run_metric


class SweepNotFound(LookupError):
    """No such experiment, parent run or trial in the tracking store."""


def trial_row(cfg: dict) -> dict:
    """The config columns every leaderboard shows (no optimiser columns for a closed-form variant)."""
    from anomaly_ae.models import model_spec

    gradient = not model_spec(cfg["variant"]).closed_form
    return {"variant": cfg["variant"], "score": cfg["score"], "image": f"{cfg['image_height']}x{cfg['image_width']}",
            "normalisation": cfg["normalisation"], "lr": float(cfg["lr"]) if gradient else math.nan,
            "batch_size": int(cfg["batch_size"]) if gradient else math.nan}


def find_parent_run(client, experiment: str, parent_run_id: str | None = None):
    """The named sweep's parent run, or the experiment's latest one."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise SweepNotFound(f"--experiment: no MLflow experiment {experiment!r}; found: {', '.join(names) or 'none'}")
    if parent_run_id:
        run = client.get_run(parent_run_id)
        if run.info.experiment_id != exp.experiment_id or run.data.tags.get("sweep") != "parent":
            raise SweepNotFound(f"--parent: run {parent_run_id} is not a sweep of experiment {experiment!r}")
        return run
    parents = client.search_runs([exp.experiment_id], filter_string="tags.sweep = 'parent'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    if not parents:
        raise SweepNotFound(f"--experiment: {experiment!r} holds no sweep (no run tagged sweep=parent)")
    return parents[0]


def trial_runs(client, parent) -> list:
    """The parent's trial runs (promotion runs, also nested under it, are left out)."""
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10_000)
    return [r for r in runs if "trial_id" in r.data.tags]


def _config_of(run) -> dict:
    from anomaly_ae.detector.config import stored_config

    params = {}
    for key, text in run.data.params.items():
        try:
            params[key] = json.loads(text)
        except json.JSONDecodeError:
            params[key] = {"True": True, "False": False, "None": None}.get(text, text)
    params.pop("baseline", None)
    return stored_config(params)


def objective_interval(objective: float, n_spill: int | None) -> tuple[float, float]:
    """Clopper-Pearson 95% interval of a TPR measured on ``n_spill`` validation spills."""
    if not n_spill or not math.isfinite(objective):
        return (math.nan, math.nan)
    return clopper_pearson(int(round(objective * n_spill)), n_spill)


def sweep_frame(client, parent) -> pd.DataFrame:
    """One row per trial of the sweep under ``parent``, best objective first."""
    n_spill = int(parent.data.tags.get("n_val_spill", 0)) or None
    rows = []
    for run in trial_runs(client, parent):
        cfg = _config_of(run)
        history = client.get_metric_history(run.info.run_id, "objective")
        metrics = run.data.metrics
        best = max((m.value for m in history), default=math.nan)
        lo, hi = objective_interval(best, n_spill)
        end = run.info.end_time or run.info.start_time
        rows.append({
            "trial_id": run.data.tags["trial_id"], "run_id": run.info.run_id,
            "baseline": run.data.tags.get("baseline", ""), "reused_from": run.data.tags.get("reused_from", ""),
            # The tag holds the score the trial was judged by (the fan-out's winner at its best epoch).
            **trial_row(cfg), "score": run.data.tags.get("score", cfg["score"]),
            "best_objective": best, "objective_lo": lo, "objective_hi": hi,
            # Logged again at each new best epoch, so the latest values are the best epoch's.
            "objective_clean": run_metric(run, "best_objective_clean"),
            "objective_site": run_metric(run, "best_objective_site"),
            "objective_site_matched": run_metric(run, "best_objective_site_matched"),
            "objective_site_blend": run_metric(run, "best_objective_site_blend"),
            "tie_break": run_metric(run, "best_tie_break", -math.inf),
            "final_objective": metrics.get("objective", math.nan),
            "val_auroc": metrics.get("val_auroc", math.nan),
            "selection_bias": run_metric(run, "selection_bias"),
            "epochs": int(run_metric(run, "epoch", 0)),
            "status": "DIVERGED" if run_metric(run, "diverged", 0) else run.info.status,
            "wall_s": (end - run.info.start_time) / 1000.0,
            "latent_s": run_metric(run, "latent_seconds"),
            "start_time": run.info.start_time,
            "search_params": json.loads(run.data.tags.get("search_params", "{}")),
            "history": {int(m.step): m.value for m in history},
            **{f"param.{k}": v for k, v in cfg.items()},
        })
    if not rows:
        raise SweepNotFound(f"sweep {parent.info.run_id} has no trial runs")
    frame = pd.DataFrame(rows).sort_values("start_time")
    # A trial restarted by a resumed sweep has a second run: keep the newest, with the best of both
    # and both objective histories.
    merged = frame.groupby("trial_id")["history"].agg(lambda hs: {k: v for h in hs for k, v in h.items()})
    frame["history"] = frame["trial_id"].map(merged)
    best = frame.groupby("trial_id")["best_objective"].transform("max")
    frame = frame.assign(best_objective=best).drop_duplicates("trial_id", keep="last").reset_index(drop=True)
    frame.insert(0, "trial_number", range(len(frame)))
    return frame.sort_values(["best_objective", "tie_break", "val_auroc"], ascending=False, na_position="last")


def load_sweep_data(parent, data_dir: Path | None, site_dir: Path | None = None,
                    max_spill_fraction: float | None = None, delta: float | None = None,
                    review: Path | None = None, calibration_share: float | None = None):
    """The sweep's dataset and splits, with its site pool (or ``site_dir``, a new window of site crops)
    split as the sweep split it (or at ``calibration_share``).

    train/, proliv/ and test/ must be what the sweep saw (content hash); so must its site pool, unless
    ``site_dir`` or a new ``review`` changes it on purpose."""
    from anomaly_ae.data import load_proliv, make_splits
    from anomaly_ae.data.site import DEFAULT_CALIBRATION_SHARE

    tags = parent.data.tags
    root = Path(data_dir or tags.get("dataset_path", ""))
    bound = float(tags.get("site_max_spill_fraction", SITE_SPILL_BOUND)) if max_spill_fraction is None else max_spill_fraction
    risk = float(tags.get("site_delta", SITE_RISK)) if delta is None else delta
    # Sweeps from before the split chose on the whole pool: promote splits it at the default share then.
    share = float(tags.get("site_calibration_share", DEFAULT_CALIBRATION_SHARE)) if calibration_share is None \
        else calibration_share
    sweep_site = tags.get("site_path") if "site_hash" in tags else None
    sweep_review = tags.get("site_review_file") or tags.get("site_known_spills_file") or None
    # A new window or a new review changes the pool on purpose; only the sweep's own pool is checked.
    same_pool = site_dir is None and (review is None or str(review) == sweep_review)
    if same_pool:
        review = sweep_review
    data = load_proliv(root, site=sweep_site if site_dir is None else site_dir, site_max_spill_fraction=bound,
                       site_delta=risk, site_review=review)
    # Sweeps from before site pools recorded no labelled_hash: their dataset_hash is that hash.
    expected = tags.get("labelled_hash") or (tags.get("dataset_hash") if "site_hash" not in tags else None)
    if expected and data.labelled_hash != expected:
        raise SweepNotFound(f"--data: {root} has content hash {data.labelled_hash[:12]}, but the sweep ran on "
                            f"{expected[:12]} ({tags.get('dataset_path')}); pass the sweep's dataset")
    if same_pool and sweep_site is not None and data.site.content_hash != tags["site_hash"]:
        raise SweepNotFound(f"--site: the sweep's site pool {sweep_site} has changed since (content hash "
                            f"{data.site.content_hash[:12]}, the sweep saw {tags['site_hash'][:12]}); pass --site "
                            f"to calibrate on the pool as it is now")
    splits = make_splits(data, float(tags.get("val_normal_fraction", 0.1)), float(tags.get("val_spill_fraction", 1.0)),
                         int(tags.get("split_seed", 0)), site_calibration_share=share)
    return data, splits


def download_checkpoint(client, run_id: str, dst: Path) -> dict:
    """The trial's best-epoch model (weights, config, preprocessing, val scores), loaded without running code.

    A trial replayed from an earlier run (tagged ``reused_from``) has its weights in that run."""
    from anomaly_ae.detector.checkpoints import MODEL_FILE, load_checkpoint
    from trainables.replay import REUSED_TAG

    run_id = client.get_run(run_id).data.tags.get(REUSED_TAG) or run_id
    names = {a.path for a in client.list_artifacts(run_id)}
    if MODEL_FILE not in names:
        raise SweepNotFound(f"run {run_id} has no {MODEL_FILE} artifact (it ended before its first evaluation, "
                            f"or an older version of the harness wrote it)")
    Path(dst).mkdir(parents=True, exist_ok=True)
    return load_checkpoint(client.download_artifacts(run_id, MODEL_FILE, str(dst)))


def reference_frame(client, parent) -> pd.DataFrame:
    """The reference detectors scored with the sweep (runs tagged ``reference`` under its parent)."""
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=10_000)
    n_spill = int(parent.data.tags.get("n_val_spill", 0)) or None
    rows = []
    for run in runs:
        name = run.data.tags.get("reference")
        if not name:
            continue
        objective = run.data.metrics.get("objective", math.nan)
        lo, hi = objective_interval(objective, n_spill)
        rows.append({"trial_id": "-", "run_id": run.info.run_id, "baseline": f"ref:{name}",
                     "variant": run.data.params.get("description", name), "score": "-",
                     "best_objective": objective, "objective_lo": lo, "objective_hi": hi,
                     "objective_clean": run_metric(run, "objective_clean"),
                     "objective_site": run_metric(run, "objective_site"),
                     "objective_site_matched": run_metric(run, "objective_site_matched"),
                     "objective_site_blend": run_metric(run, "objective_site_blend"),
                     "val_auroc": run.data.metrics.get("val_auroc", math.nan), "status": run.info.status})
    return pd.DataFrame(rows)


# Sweeps whose objectives compare: same data, same TNR target, same objective and score selection.
# Tags missing on older sweeps read as what those sweeps did.
COMPARABLE_TAGS = {"dataset_hash": None, "tnr_target": "0.95", "objective": "clean", "score_selection": "fixed"}


def earlier_observations(client, tags: dict, experiments: list[str] | None = None) -> tuple[list, int]:
    """``(search_params, objective)`` of every finished trial of earlier comparable sweeps, and their count.

    With ``experiments``, the sweeps of those experiments; otherwise every sweep of the same space in
    the store. ASHA-stopped trials count with the objective they last reported, as Optuna was told.
    """
    if experiments:
        exps = []
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise SweepNotFound(f"--warm-start: no MLflow experiment {name!r}")
            exps.append(exp)
    else:
        exps = client.search_experiments()
    if not exps:
        return [], 0
    want = {k: tags.get(k, default) for k, default in COMPARABLE_TAGS.items()}
    if not experiments:
        want["space"] = tags["space"]
    parents = [p for p in client.search_runs([e.experiment_id for e in exps], filter_string="tags.sweep = 'parent'",
                                             max_results=10_000)
               if all(p.data.tags.get(k, COMPARABLE_TAGS.get(k)) == v for k, v in want.items())]
    observations = []
    for parent in parents:
        for run in trial_runs(client, parent):
            # ASHA-stopped trials end FINISHED; sweeps of older versions marked them KILLED.
            finished = run.info.status == "FINISHED" or (
                run.info.status == "KILLED" and run.data.tags.get("stopped_by") == "scheduler")
            value = run.data.metrics.get("objective")
            params = run.data.tags.get("search_params")
            # A replayed trial is its earlier run again: that run counts once, in its own sweep.
            replayed = "reused_from" in run.data.tags
            if finished and params and value is not None and math.isfinite(value) and not replayed:
                observations.append((json.loads(params), value))
    return observations, len(parents)


def experiments_with_prefix(client, prefix: str) -> list[str]:
    """Names of the experiments that start with ``prefix``, sorted (a benchmark's sweeps); none is refused."""
    names = sorted(e.name for e in client.search_experiments() if e.name.startswith(prefix))
    if not names:
        raise SweepNotFound(f"--prefix/--summarize: no experiment starts with {prefix!r}")
    return names
