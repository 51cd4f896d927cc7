"""Fix a threshold on validation, then evaluate once on test."""
from __future__ import annotations

import numpy as np
import torch

from anomaly_ae.data import Splits
from anomaly_ae.metrics import evaluation_report, tpr_at_tnr
from anomaly_ae.thresholds import select_threshold
from anomaly_ae.training import TrialState, score_images


def report_at_policies(val_normal: np.ndarray, val_spill: np.ndarray, test_scores: np.ndarray, test_labels,
                       policies: tuple[str, ...], tnr: float) -> dict:
    """Test figures at each policy's validation threshold; the report is at the first, all under ``by_policy``."""
    labels = np.asarray(test_labels).astype(bool)
    by_policy = {}
    for policy in policies:
        threshold = select_threshold(policy, val_normal, val_spill, tnr)
        by_policy[policy] = evaluation_report(test_scores[~labels], test_scores[labels], threshold)
    report = dict(by_policy[policies[0]])
    # For reference only, never for selection: what an oracle threshold on test would give.
    report["oracle_tpr_at_tnr"] = tpr_at_tnr(test_scores[~labels], test_scores[labels], tnr)[0]
    report["policy"] = policies[0]
    report["by_policy"] = by_policy
    return report


def test_report(state: TrialState, cfg: dict, splits: Splits, val_scores: dict,
                policies: tuple[str, ...] | None = None) -> dict:
    """Thresholds from the validation scores, one per policy (default: the config's); one pass over test."""
    score = cfg["score"]
    test_scores, _ = score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(splits.test)))
    s = test_scores[score]
    report = report_at_policies(val_scores["normal"][score], val_scores["spill"][score], s, splits.test_labels,
                                policies or (cfg["threshold_policy"],), cfg["tnr_target"])
    report["score"] = score
    report["test_scores"] = s
    return report
