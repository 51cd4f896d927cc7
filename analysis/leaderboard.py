"""Leaderboard of a sweep: top trials by objective, seed baselines always listed."""
from __future__ import annotations

import math

import pandas as pd

from analysis.sweep_runs import trial_row
from anomaly_ae.baselines import is_seed_baseline, match_baseline
from anomaly_ae.config import validate_config
from search_spaces import config_from_params


def results_frame(results) -> pd.DataFrame:
    """One row per trial from a Ray ResultGrid: best and final objective, epochs, status."""
    rows = []
    for result in results:
        if result.config is None:  # created but never started: the time budget ended first
            continue
        history = result.metrics_dataframe
        cfg = validate_config(config_from_params(result.config))
        has_history = history is not None and "objective" in history and history["objective"].notna().any()
        best = history["objective"].max() if has_history else math.nan
        last = result.metrics or {}
        # The score the trial was judged by at its best epoch (the fan-out's winner).
        score = history.loc[history["objective"].idxmax()].get("score", cfg["score"]) if has_history else cfg["score"]
        rows.append({
            "trial_id": last.get("trial_id", result.path.rsplit("/", 1)[-1]),
            "baseline": match_baseline(cfg) or "", **trial_row(cfg), "score": score,
            "best_objective": best, "final_objective": last.get("objective", math.nan),
            "val_auroc": last.get("val_auroc", math.nan), "epochs": last.get("epoch", 0),
            "status": "ERROR" if result.error else ("DIVERGED" if last.get("diverged") else "OK"),
        })
    return pd.DataFrame(rows).sort_values("best_objective", ascending=False, na_position="last")


def leaderboard_rows(frame: pd.DataFrame, top: int = 10, references: pd.DataFrame | None = None) -> pd.DataFrame:
    """The top trials plus every seed baseline, whatever its rank, with a rank column; references last."""
    ranked = frame.reset_index(drop=True)
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    shown = ranked[(ranked["rank"] <= top) | (ranked["baseline"].fillna("") != "")]
    if references is not None and len(references):
        shown = pd.concat([shown, references.assign(rank="-")], ignore_index=True)
    shown = shown.assign(baseline=shown["baseline"].fillna("").replace("", "-"))
    if "objective_lo" in shown:
        shown = shown.assign(objective_ci=[f"{lo:.3f}-{hi:.3f}" if math.isfinite(lo) else "-"
                                           for lo, hi in zip(shown["objective_lo"], shown["objective_hi"])])
    cols = ["rank", "trial_id", "baseline", "variant", "score", "best_objective", "objective_ci", "val_auroc",
            "epochs", "status", "image", "normalisation", "lr", "batch_size"]
    return shown[[c for c in cols if c in shown]]


def format_leaderboard(frame: pd.DataFrame, top: int = 10, references: pd.DataFrame | None = None) -> str:
    title = ("Leaderboard: objective = val TPR at TNR >= target (best epoch); seed baselines marked, "
             "reference detectors (ref:) last")
    rows = leaderboard_rows(frame, top, references)
    return title + "\n" + rows.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-")


def search_verdict(frame: pd.DataFrame, references: pd.DataFrame | None = None) -> str:
    """One line: did the searched trials beat the best seed baseline and every reference on val?

    Searched trials are those the sampler proposed: neither seed baselines nor start points."""
    enqueued = frame["baseline"].fillna("")
    searched = frame.loc[enqueued == "", "best_objective"].max()
    baseline = frame.loc[enqueued.map(is_seed_baseline), "best_objective"].max()
    parts = [f"best searched trial {searched:.4f}"]
    bars = []
    if baseline == baseline:  # not NaN: the sweep ran baselines
        parts.append(f"best seed baseline {baseline:.4f}")
        bars.append(baseline)
    if references is not None and len(references):
        for _, ref in references.iterrows():
            parts.append(f"{ref['baseline'][4:]} {ref['best_objective']:.4f}")
            bars.append(ref["best_objective"])
    if searched != searched:
        verdict = "no searched trial finished"
    elif all(searched > b for b in bars):
        verdict = "the search beat all of them"
    else:
        verdict = "the search did NOT beat all of them"
    return "val objective: " + ", ".join(parts) + f" -> {verdict}"


def summary_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """The sweep's outcome for its parent run: the leaderboard's top row, the best seed baseline and searched trial."""
    enqueued = frame["baseline"].fillna("")
    best = frame["best_objective"]
    return {"best_objective": best.max(), "best_searched_objective": best[enqueued == ""].max(),
            "best_baseline_objective": best[enqueued.map(is_seed_baseline)].max(), "trials_total": len(frame),
            "trials_ok": int((frame["status"] == "OK").sum())}
