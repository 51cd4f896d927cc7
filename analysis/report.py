"""`run_search.py analyze`: a sweep's report as text, Markdown and PNGs on its parent run."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from analysis import plots
from analysis.importance import param_importances
from analysis.leaderboard import leaderboard_rows
from analysis.sweep_runs import download_checkpoint, find_parent_run, sweep_frame

REPORT_DIR = "analysis"


@dataclass
class SweepReport:
    frame: pd.DataFrame
    importances: dict
    markdown: str
    parent_run_id: str
    figures: list[str] = field(default_factory=list)


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


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

    status = frame["status"].value_counts().to_dict()
    best = frame.iloc[0]
    baselines = frame[frame["baseline"] != ""]
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
        "## Leaderboard (top trials and every seed baseline)",
        "",
        markdown_table(leaderboard_rows(frame, top)),
        "",
        f"## Parameter importance ({importance_note})",
        "",
    ]
    if importances:
        imp = pd.DataFrame({"parameter": list(importances), "importance": list(importances.values())})
        lines.append(markdown_table(imp))
    lines += ["", "## Figures", ""]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = [plots.objective_over_trials(frame, folder / "objective_over_trials.png"),
                   plots.objective_by(frame, "variant", folder / "objective_by_variant.png"),
                   plots.objective_by(frame, "score", folder / "objective_by_score.png")]
        if importances:
            figures.append(plots.importance_bars(importances, folder / "param_importance.png"))
        hist = _best_trial_histogram(client, frame, folder)
        if hist:
            figures.append(hist)
        lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
        markdown = "\n".join(lines) + "\n"
        (folder / "report.md").write_text(markdown)
        (folder / "checkpoint.pt").unlink(missing_ok=True)
        if log:
            client.log_artifacts(parent.info.run_id, tmp, REPORT_DIR)
    return SweepReport(frame, importances, markdown, parent.info.run_id, [Path(f).name for f in figures])
