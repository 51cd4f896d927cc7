"""`run_search.py analyze`: a sweep's report as text, Markdown and PNGs on its parent run."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.fidelity import asha_rungs, rung_fidelity
from analysis.importance import param_importances
from anomaly_ae.detector.checkpoints import CHECKPOINT_FILE, MODEL_FILE
from anomaly_ae.tracking.mlflow_runs import log_sweep_report
from search_spaces.baselines import is_seed_baseline
from sweeps.leaderboard import leaderboard_rows, markdown_table, search_verdict
from sweeps.runs import download_checkpoint, find_parent_run, reference_frame, sweep_frame

REPORT_DIR = "analysis"


@dataclass
class SweepReport:
    frame: pd.DataFrame
    importances: dict
    markdown: str
    parent_run_id: str
    figures: list[str] = field(default_factory=list)


def _best_trial_histogram(client, frame: pd.DataFrame, folder: Path) -> str | None:
    """Validation score histograms of the best trial, replotted from its checkpoint."""
    best = frame.iloc[0]
    try:
        payload = download_checkpoint(client, best["run_id"], folder)
    except LookupError:
        return None
    cfg, scores = payload["config"], payload["val_scores"]
    name = cfg["score"]
    return plots.score_histogram(scores["normal"][name], scores["spill"][name], payload["report"]["threshold"],
                                 folder / "best_trial_scores.png",
                                 f"best trial {best['trial_id']}: {cfg['variant']} / {name}")


def selection_bias_lines(frame: pd.DataFrame) -> list[str]:
    bias = frame.loc[frame["baseline"] == "", "selection_bias"].dropna() if "selection_bias" in frame else []
    if not len(bias):
        return []
    return [f"Score fan-out: each searched trial is judged by its best score; picking that best on the same "
            f"validation crops is optimistic by {bias.mean():.4f} TPR on average (two-fold estimate, max "
            f"{bias.max():.4f}, over {len(bias)} trials).", ""]


def fidelity_lines(fidelity: pd.DataFrame, rungs: list[int]) -> list[str]:
    if fidelity.empty or fidelity["trials"].max() < 3:
        return [f"Not measurable: {int(fidelity['trials'].max()) if len(fidelity) else 0} trial(s) ran the whole "
                "budget. A sweep with --scheduler fifo runs every trial to the end."]
    shown = fidelity.assign(asha_rung=fidelity["epoch"].isin(rungs).map({True: "yes", False: ""}))
    return [markdown_table(shown)]


def draw_figures(client, frame: pd.DataFrame, importances: dict, folder: Path) -> list[str]:
    """The report's PNGs in ``folder``: the objective over trials, by variant and by score, importances, and
    the best trial's score histogram (its downloaded weights removed again)."""
    figures = [plots.objective_over_trials(frame, folder / "objective_over_trials.png"),
               plots.objective_by(frame, "variant", folder / "objective_by_variant.png"),
               plots.objective_by(frame, "score", folder / "objective_by_score.png")]
    if importances:
        figures.append(plots.importance_bars(importances, folder / "param_importance.png"))
    hist = _best_trial_histogram(client, frame, folder)
    if hist:
        figures.append(hist)
    for name in (MODEL_FILE, CHECKPOINT_FILE):
        (folder / name).unlink(missing_ok=True)
    return figures


def analyze(client, experiment: str, parent_run_id: str | None = None, top: int = 10,
            evaluator: str = "ped_anova", log: bool = True) -> SweepReport:
    """Load the sweep, rank it, compute importances, draw the figures; log them to the parent run."""
    parent = find_parent_run(client, experiment, parent_run_id)
    tags = parent.data.tags
    frame = sweep_frame(client, parent)
    try:
        importances = param_importances(frame, tags.get("space", "quick"), tags.get("perceptual") == "1", evaluator)
        importance_note = f"{evaluator} over {int(frame['best_objective'].notna().sum())} trials"
    except ValueError as exc:
        importances, importance_note = {}, f"not computed: {exc}"

    references = reference_frame(client, parent)
    max_t = int(frame["param.epochs"].max())
    fidelity = rung_fidelity(dict(zip(frame["trial_id"], frame["history"])), max_t)
    rungs = asha_rungs(max_t, int(tags.get("grace_period", 1))) if tags.get("scheduler", "asha") == "asha" else []
    status = frame["status"].value_counts().to_dict()
    best = frame.iloc[0]
    baselines = frame[frame["baseline"].map(is_seed_baseline)]
    best_base = baselines["best_objective"].max() if len(baselines) else math.nan
    lines = [
        f"# Sweep report: {experiment}",
        "",
        f"- parent run `{parent.info.run_id}`, space `{tags.get('space', '?')}`, "
        f"dataset `{tags.get('dataset_path', '?')}` (hash `{tags.get('dataset_hash', '?')[:12]}`), "
        f"commit `{tags.get('git_commit', '?')[:10]}`",
        f"- {len(frame)} trials: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())),
        f"- validation: {tags.get('n_val_normal', '?')} normals, {tags.get('n_val_spill', '?')} spills; "
        f"objective = TPR at TNR >= {tags.get('tnr_target', '0.95')}",
        f"- best: trial `{best['trial_id']}` ({best['variant']}, score {best['score']}) "
        f"objective {best['best_objective']:.4f}; best seed baseline {best_base:.4f}",
        "",
        "## Leaderboard (top trials, every seed baseline, the reference detectors)",
        "",
        markdown_table(leaderboard_rows(frame, top, references)),
        "",
        search_verdict(frame, references),
        "",
        *selection_bias_lines(frame),
        "## Rung fidelity (Spearman's rho between the objective at an epoch and at the last epoch)",
        "",
        *fidelity_lines(fidelity, rungs),
        "",
        f"## Parameter importance ({importance_note})",
        "",
    ]
    if importances:
        imp = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
        lines.append(markdown_table(imp))
    lines += ["", "## Figures", ""]

    with tempfile.TemporaryDirectory() as tmp:
        figures = draw_figures(client, frame, importances, Path(tmp))
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
        markdown = "\n".join(lines) + "\n"
        (Path(tmp) / "report.md").write_text(markdown)
        if log:
            log_sweep_report(client.tracking_uri, parent.info.run_id, tmp, REPORT_DIR,
                             {"analysis_report": f"{REPORT_DIR}/report.md"})
    return SweepReport(frame, importances, markdown, parent.info.run_id, [Path(f).name for f in figures])
