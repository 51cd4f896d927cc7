"""PNG figures for a sweep. Matplotlib with the Agg backend only; a trial's own figures are in
anomaly_ae.tracking.plots (trials import nothing from analysis)."""
from __future__ import annotations

from anomaly_ae.tracking.plots import reconstruction_grid, roc_plot, save, score_histogram  # noqa: F401  (sets Agg first)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def objective_over_trials(frame, path) -> str:
    """Each trial's best objective in start order, with the best so far; baselines marked."""
    ordered = frame.sort_values("trial_number")
    x, y = ordered["trial_number"].to_numpy(), ordered["best_objective"].to_numpy(dtype=float)
    is_base = (ordered["baseline"].fillna("") != "").to_numpy()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(x[~is_base], y[~is_base], s=18, label="searched")
    ax.scatter(x[is_base], y[is_base], s=28, marker="s", label="seed baseline")
    ax.step(x, np.fmax.accumulate(np.nan_to_num(y, nan=-np.inf)), where="post", color="k", label="best so far")
    ax.set_xlabel("trial (start order)")
    ax.set_ylabel("val TPR @ TNR target")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return save(fig, path)


def importance_bars(importances: dict, path) -> str:
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1))
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance")
    ax.tick_params(axis="y", labelsize=7)
    return save(fig, path)


def objective_by(frame, column: str, path) -> str:
    """Best objective per trial, grouped by one column (variant, score type)."""
    groups = sorted(frame[column].dropna().unique())
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(groups) + 1), 3.5))
    for i, g in enumerate(groups):
        y = frame.loc[frame[column] == g, "best_objective"].to_numpy(dtype=float)
        ax.scatter(np.full(len(y), i) + np.linspace(-0.15, 0.15, len(y)), y, s=16)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("val TPR @ TNR target")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"objective by {column}", fontsize=9)
    return save(fig, path)


def anytime_curves(curves: dict[str, list[tuple[list[float], list[float]]]], lines: dict[str, float], path,
                   title: str = "") -> str:
    """Best-so-far against wall time: one thin line per sweep, coloured by sampler; references as dashes."""
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, sweeps) in enumerate(sorted(curves.items())):
        for j, (t, best) in enumerate(sweeps):
            ax.step(t, best, where="post", color=colours[i % len(colours)], alpha=0.7,
                    label=label if j == 0 else None)
    for k, (name, value) in enumerate(sorted(lines.items())):
        if value == value:
            ax.axhline(value, linestyle="--", linewidth=1, color=colours[(k + 3) % len(colours)], label=name)
    ax.set_xlabel("wall time since the sweep started (s)")
    ax.set_ylabel("best-so-far val objective (searched trials)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)
