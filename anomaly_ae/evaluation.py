"""Fix a threshold without test (on validation normals, or on the site pool), then evaluate once on test."""
from __future__ import annotations

import numpy as np
import torch

from anomaly_ae.data import SitePool, Splits
from anomaly_ae.metrics import evaluation_report, tpr_at_tnr
from anomaly_ae.thresholds import select_threshold, site_threshold
from anomaly_ae.training import TrialState
from anomaly_ae.validation import score_images


def site_calibration(site_scores: np.ndarray, tnr: float, pool: SitePool) -> dict:
    """The threshold the site rule fixes on a detector's pool scores, with what records the pool."""
    return {"threshold": site_threshold(site_scores, tnr, pool.max_spill_fraction, pool.delta),
            "scores": np.asarray(site_scores, dtype=np.float64), **pool.describe()}


def report_at_policies(val_normal: np.ndarray, val_spill: np.ndarray, test_scores: np.ndarray, test_labels,
                       policies: tuple[str, ...], tnr: float, site: dict | None = None) -> dict:
    """Test figures at each policy's validation threshold; the report is at the first, all under ``by_policy``.

    With ``site`` (a ``site_calibration``), ``report["site"]`` holds the test figures at the site threshold."""
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
    if site is not None:
        report["site"] = {**evaluation_report(test_scores[~labels], test_scores[labels], site["threshold"]),
                          "policy": "site", "calibration": site}
    return report


def operating_report(report: dict) -> dict:
    """The figures at the threshold a detector ships with: the site threshold when a pool fixed one."""
    return report.get("site", report)


def test_report(state: TrialState, cfg: dict, splits: Splits, val_scores: dict,
                policies: tuple[str, ...] | None = None) -> dict:
    """Thresholds from the validation scores, one per policy (default: the config's), and from the site
    pool's calibration part when the splits have one; one pass over test."""
    score = cfg["score"]
    test_scores, _ = score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(splits.test)))
    s = test_scores[score]
    site = None
    if splits.site_calibration is not None:  # the part of the pool that chose nothing
        pool = splits.site_calibration
        site_scores, _ = score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(pool.images)))
        site = site_calibration(site_scores[score], cfg["tnr_target"], pool)
    report = report_at_policies(val_scores["normal"][score], val_scores["spill"][score], s, splits.test_labels,
                                policies or (cfg["threshold_policy"],), cfg["tnr_target"], site)
    report["score"] = score
    report["test_scores"] = s
    return report
