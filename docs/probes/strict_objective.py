"""Probe behind docs/results.md §15: which trial of a finished sweep each validation objective would pick
when the TNR it is judged at is stricter than the promise (0.95), from the stored validation scores of
every trial's checkpoint (MLflow artifacts). Prints one line per sweep; the picks were then shipped with
`promote --trial RUN_ID` to read their test figures at the site threshold.

    python docs/probes/strict_objective.py ARTIFACTS/EXPERIMENT [...]
"""
import glob
import sys
from pathlib import Path

import numpy as np

from anomaly_ae.detector.checkpoints import load_checkpoint
from anomaly_ae.stats.metrics import operating_margin, tpr_at_tnr

TNRS = (0.95, 0.99, 0.995)


def judged(normal, spill, tnr):
    """(TPR at TNR >= tnr, the margin that breaks ties), as the clean objective ranks a score."""
    tpr, threshold = tpr_at_tnr(normal, spill, tnr)
    margin = operating_margin(normal, spill, threshold)
    return tpr, margin if margin == margin else -np.inf


for experiment in sys.argv[1:]:
    trials = []
    for path in sorted(glob.glob(f"{experiment}/*/artifacts/model.pt")):
        payload = load_checkpoint(Path(path))
        scores = payload["val_scores"]
        best = {tnr: max((judged(np.asarray(scores["normal"][s], float), np.asarray(scores["spill"][s], float), tnr), s)
                         for s in scores["normal"]) for tnr in TNRS}
        trials.append((path.split("/")[-3], payload["config"]["variant"], best))
    picks = []
    for tnr in TNRS:
        run, variant, best = max(trials, key=lambda t: t[2][tnr][0])
        picks.append(f"at TNR {tnr}: {run} {variant}/{best[tnr][1]} TPR {best[tnr][0][0]:.3f}")
    print(f"{Path(experiment).name} ({len(trials)} trials) | " + " | ".join(picks))
