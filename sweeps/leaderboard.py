"""Leaderboard of a sweep: top trials by objective, seed baselines always listed."""
from __future__ import annotations

import math

import pandas as pd

from anomaly_ae.detector.config import stored_config
from anomaly_ae.stats.selection import OBJECTIVE_MARGIN, tie_break
from search_spaces import config_from_params
from search_spaces.baselines import SEED_BASELINES, is_seed_baseline, match_baseline
from sweeps.runs import trial_row


def results_frame(results) -> pd.DataFrame:
    """One row per trial from a Ray ResultGrid: best and final objective, epochs, status."""
    rows = []
    for result in results:
        if result.config is None:  # created but never started: the time budget ended first
            continue
        history = result.metrics_dataframe
        cfg = stored_config(config_from_params(result.config))
        has_history = history is not None and "objective" in history and history["objective"].notna().any()
        best = history["objective"].max() if has_history else math.nan
        last = result.metrics or {}
        # The score the trial was judged by at its best epoch (the fan-out's winner), and that epoch's figures.
        at_best = history.loc[history["objective"].idxmax()] if has_history else pd.Series(dtype=object)
        score = at_best.get("score", cfg["score"]) if has_history else cfg["score"]
        rows.append({
            "trial_id": last.get("trial_id", result.path.rsplit("/", 1)[-1]),
            "baseline": match_baseline(cfg) or "", "reused_from": str(last.get("reused_from") or ""),
            **trial_row(cfg), "score": score,
            "best_objective": best, "final_objective": last.get("objective", math.nan),
            **{key: float(at_best.get(key, math.nan))
               for key in ("objective_clean", "objective_site", "objective_site_matched", "objective_site_blend")},
            "tie_break": tie_break({k: float(at_best.get(k, math.nan)) for k in OBJECTIVE_MARGIN.values()},
                                   cfg["objective"]),
            "val_auroc": last.get("val_auroc", math.nan), "epochs": last.get("epoch", 0),
            "status": "ERROR" if result.error else ("DIVERGED" if last.get("diverged") else "OK"),
            "wall_s": float(last.get("time_total_s", math.nan)), "latent_s": float(last.get("latent_seconds", math.nan)),
        })
    return rank_trials(pd.DataFrame(rows))


def rank_trials(frame: pd.DataFrame) -> pd.DataFrame:
    """Best objective first; a tie is broken by the margin at the operating point (``selection.tie_break``)."""
    return frame.sort_values(["best_objective", "tie_break"], ascending=False, na_position="last")


def top_tie(frame: pd.DataFrame) -> tuple[int, float]:
    """How many trials share the top objective, and that objective."""
    best = frame["best_objective"].max()
    return int((frame["best_objective"] == best).sum()), float(best)


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
    if "reused_from" in shown and (shown["reused_from"].fillna("") != "").any():
        # A replayed seed baseline or start point: the run (first 8 characters) that trained it.
        shown = shown.assign(reused_from=shown["reused_from"].fillna("").str[:8].replace("", "-"))
    elif "reused_from" in shown:
        shown = shown.drop(columns="reused_from")
    cols = ["rank", "trial_id", "baseline", "reused_from", "variant", "score", "best_objective", "objective_ci", "objective_clean",
            "objective_site", "objective_site_matched", "objective_site_blend", "tie_break", "val_auroc", "epochs", "status", "image", "normalisation", "lr", "batch_size"]
    return shown[[c for c in cols if c in shown]]


def format_leaderboard(frame: pd.DataFrame, top: int = 10, references: pd.DataFrame | None = None) -> str:
    title = ("Leaderboard: best_objective = the sweep's objective at the best epoch (objective_clean: val TPR at "
             "TNR >= target on val normals; objective_site: val TPR at the site threshold; objective_site_matched: "
             "the same for val spills carried to the site's light); ties broken by "
             "tie_break, the margin at the operating point; seed baselines marked, reference detectors (ref:) last")
    rows = leaderboard_rows(frame, top, references)
    tied, best = top_tie(frame)
    note = f"\n{tied} trials share the top objective {best:.4f}; tie_break orders them" if tied > 1 else ""
    return title + "\n" + rows.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-") + note


def baseline_budget(rows: pd.DataFrame) -> str:
    """What budget the seed baselines had in this sweep, against what their write-ups state."""
    ran = rows["epochs"].astype(int)
    stated = rows["baseline"].map(lambda name: SEED_BASELINES[name]["epochs"])
    if (ran >= stated).all():
        return "(at their write-ups' stated budgets)"
    def span(values):
        return f"{values.min()}" if values.min() == values.max() else f"{values.min()}-{values.max()}"

    return (f"(cut to this sweep's budget: {span(ran)} epochs of this sweep's length, where their write-ups state "
            f"{span(stated)} full passes; --space writeups runs them as written)")


def search_verdict(frame: pd.DataFrame, references: pd.DataFrame | None = None) -> str:
    """One line: did the searched trials beat the best seed baseline and every reference on val?

    Searched trials are those the sampler proposed: neither seed baselines nor start points."""
    enqueued = frame["baseline"].fillna("")
    searched = frame.loc[enqueued == "", "best_objective"].max()
    baseline = frame.loc[enqueued.map(is_seed_baseline), "best_objective"].max()
    parts = [f"best searched trial {searched:.4f}"]
    bars = []
    if baseline == baseline:  # not NaN: the sweep ran baselines
        parts.append(f"best seed baseline {baseline:.4f} {baseline_budget(frame[enqueued.map(is_seed_baseline)])}")
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
    return "val objective: " + ", ".join(parts) + f" -> {verdict}" + champion_line(frame, references)


def latent_cost_line(frame: pd.DataFrame) -> str:
    """The latent-distance scores' extra cost per trial that has them, against the trials' wall time."""
    has = frame[frame["latent_s"].notna() & (frame["latent_s"] > 0)] if "latent_s" in frame else frame[:0]
    if has.empty:
        return ""
    return (f"latent-distance scores: {has['latent_s'].mean():.2f}s per trial on average over {len(has)} trials "
            f"({has['latent_s'].sum() / has['wall_s'].sum():.1%} of their wall time)")


def champion_line(frame: pd.DataFrame, references: pd.DataFrame | None = None) -> str:
    """What promote ships by default, whatever kind of trial it is; a reference that scores above it
    on validation is named with the command that ships its start point."""
    ranked = rank_trials(frame[frame["best_objective"].notna()])
    if ranked.empty:
        return ""
    top = ranked.iloc[0]
    name = top["baseline"] or ""
    kind = ("a searched trial" if not name else f"the {name[6:]} reference, enqueued as a trial"
            if name in ("start:pca16", "start:knn5") else f"the start point {name}" if name.startswith("start:")
            else f"seed baseline {name}")
    line = f"\nchampion (what promote ships): trial {top['trial_id']}, {top['variant']}, {kind}, val {top['best_objective']:.4f}"
    if references is not None and len(references):
        ref = references.sort_values("best_objective", ascending=False).iloc[0]
        if ref["best_objective"] > top["best_objective"]:
            line += (f"\nreference {ref['baseline'][4:]} scores {ref['best_objective']:.4f} on val, above every trial: "
                     f"promote --trial start:{ref['baseline'][4:]} ships it (its start point is the same detector)")
    return line


def summary_metrics(frame: pd.DataFrame) -> dict[str, float]:
    """The sweep's outcome for its parent run: the leaderboard's top row, the best seed baseline and searched trial."""
    enqueued = frame["baseline"].fillna("")
    best = frame["best_objective"]
    return {"best_objective": best.max(), "best_searched_objective": best[enqueued == ""].max(),
            "best_baseline_objective": best[enqueued.map(is_seed_baseline)].max(), "trials_total": len(frame),
            "trials_ok": int((frame["status"] == "OK").sum()), "trials_tied_at_top": top_tie(frame)[0]}


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table (reports, registry descriptions)."""
    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)
