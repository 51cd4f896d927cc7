"""Fix a threshold on validation, then evaluate once on test."""
from __future__ import annotations

import numpy as np
import torch

from anomaly_ae.data import Splits
from anomaly_ae.metrics import evaluation_report, tpr_at_tnr
from anomaly_ae.thresholds import select_threshold
from anomaly_ae.training import TrialState, score_images


def test_report(state: TrialState, cfg: dict, splits: Splits, val_scores: dict) -> dict:
    """Threshold from the validation scores with the config's policy; one pass over test."""
    score = cfg["score"]
    threshold = select_threshold(cfg["threshold_policy"], val_scores["normal"][score], val_scores["spill"][score],
                                 cfg["tnr_target"])
    test_scores, _ = score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(splits.test)))
    s = test_scores[score]
    labels = splits.test_labels.astype(bool)
    report = evaluation_report(s[~labels], s[labels], threshold)
    # For reference only, never for selection: what an oracle threshold on test would give.
    report["oracle_tpr_at_tnr"] = tpr_at_tnr(s[~labels], s[labels], cfg["tnr_target"])[0]
    report["policy"] = cfg["threshold_policy"]
    report["score"] = score
    report["test_scores"] = s
    return report
