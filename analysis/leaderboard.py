"""Leaderboard of a sweep: one row per trial, seed baselines always listed."""
from __future__ import annotations

import math

import pandas as pd

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
            "variant": cfg["variant"], "score": cfg["score"], "baseline": match_baseline(cfg) or "",
            "best_objective": best, "final_objective": last.get("objective", math.nan),
            "val_auroc": last.get("val_auroc", math.nan), "epochs": last.get("epoch", 0),
            "status": "ERROR" if result.error else ("DIVERGED" if last.get("diverged") else "OK"),
            "image": f"{cfg['image_height']}x{cfg['image_width']}", "normalisation": cfg["normalisation"],
            "lr": cfg["lr"], "batch_size": cfg["batch_size"],
        })
    return pd.DataFrame(rows).sort_values("best_objective", ascending=False, na_position="last")


def format_leaderboard(frame: pd.DataFrame, top: int = 10) -> str:
    """Top trials plus every seed baseline, whatever its rank."""
    ranked = frame.reset_index(drop=True)
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    shown = ranked[(ranked["rank"] <= top) | (ranked["baseline"] != "")]
    shown = shown.assign(baseline=shown["baseline"].replace("", "-"))
    cols = ["rank", "trial_id", "baseline", "variant", "score", "best_objective", "val_auroc", "epochs", "status",
            "image", "normalisation", "lr", "batch_size"]
    title = "Leaderboard: objective = val TPR at TNR >= target (best epoch); baselines marked"
    return title + "\n" + shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")
