"""Leaderboard of a sweep: top trials by objective, seed baselines always listed."""
from __future__ import annotations

import math

import pandas as pd

from analysis.sweep_runs import trial_row
from anomaly_ae.baselines import match_baseline
from anomaly_ae.config import validate_config
from search_spaces import config_from_params


def results_frame(results) -> pd.DataFrame:
    """One row per trial from a Ray ResultGrid: best and final objective, epochs, status."""
    rows = []
    for result in results:
        history = result.metrics_dataframe
        cfg = validate_config(config_from_params(result.config))
        best = history["objective"].max() if history is not None and "objective" in history else math.nan
        last = result.metrics or {}
        rows.append({
            "trial_id": last.get("trial_id", result.path.rsplit("/", 1)[-1]),
            "baseline": match_baseline(cfg) or "", **trial_row(cfg),
            "best_objective": best, "final_objective": last.get("objective", math.nan),
            "val_auroc": last.get("val_auroc", math.nan), "epochs": last.get("epoch", 0),
            "status": "ERROR" if result.error else ("DIVERGED" if last.get("diverged") else "OK"),
        })
    return pd.DataFrame(rows).sort_values("best_objective", ascending=False, na_position="last")


def leaderboard_rows(frame: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The top trials plus every seed baseline, whatever its rank, with a rank column."""
    ranked = frame.reset_index(drop=True)
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    shown = ranked[(ranked["rank"] <= top) | (ranked["baseline"].fillna("") != "")]
    shown = shown.assign(baseline=shown["baseline"].fillna("").replace("", "-"))
    if "objective_lo" in shown:
        shown = shown.assign(objective_ci=[f"{lo:.3f}-{hi:.3f}" if math.isfinite(lo) else "-"
                                           for lo, hi in zip(shown["objective_lo"], shown["objective_hi"])])
    cols = ["rank", "trial_id", "baseline", "variant", "score", "best_objective", "objective_ci", "val_auroc",
            "epochs", "status", "image", "normalisation", "lr", "batch_size"]
    return shown[[c for c in cols if c in shown]]


def format_leaderboard(frame: pd.DataFrame, top: int = 10) -> str:
    title = "Leaderboard: objective = val TPR at TNR >= target (best epoch); baselines marked"
    return title + "\n" + leaderboard_rows(frame, top).to_string(index=False, float_format=lambda v: f"{v:.4g}")
