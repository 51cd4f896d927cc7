"""Fix a threshold without test (on validation normals, or on the site pool), then evaluate once on test."""
from __future__ import annotations

import numpy as np
import torch

from anomaly_ae.data import SitePool, Splits
from anomaly_ae.detector.training import TrialState
from anomaly_ae.detector.validation import score_images
from anomaly_ae.stats.metrics import evaluation_report, tpr_at_tnr
from anomaly_ae.stats.thresholds import (
    DEFAULT_SITE_CALIBRATION, SITE_CALIBRATIONS, matched_site_threshold, select_threshold, site_threshold,
)


def calibration_record(scores, site_fields: dict | None = None) -> dict:
    """What a shipped threshold was fixed on, as ``detector.json`` keeps it for the drift alarm: the
    site pool's scores and its ``site_*`` description, or (``site_fields`` None) the validation normals'."""
    scores = np.asarray(scores, dtype=float).tolist()
    if site_fields is None:
        return {"source": "validation", "scores": scores}
    return {"source": "site", "scores": scores, **{k: v for k, v in site_fields.items() if k.startswith("site_")}}


def site_calibration(site_scores: np.ndarray, tnr: float, pool: SitePool, mode: str = DEFAULT_SITE_CALIBRATION,
                     matched: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """The threshold the site rule fixes on a detector's pool scores, with what records the pool.

    ``mode`` "matched" also uses the detector's scores of the carried validation normals and spills
    (``matched``) by ``matched_site_threshold``, and records its assumptions' inputs."""
    record = {"scores": np.asarray(site_scores, dtype=np.float64), **pool.describe()}
    if mode == "distribution_free":
        return {"threshold": site_threshold(site_scores, tnr, pool.spill_bound, pool.delta),
                "site_calibration_mode": mode, **record}
    if mode != "matched":
        raise ValueError(f"unknown site calibration {mode!r}; valid: {list(SITE_CALIBRATIONS)}")
    if matched is None:
        raise ValueError("the matched site calibration needs the carried validation crops' scores")
    threshold, details = matched_site_threshold(site_scores, matched[0], matched[1], tnr, pool.spill_bound,
                                                pool.delta)
    return {"threshold": threshold, **details, **record}


def calibrate_at_site(score, splits: Splits, tnr: float, mode: str) -> dict | None:
    """``site_calibration`` on the pool's calibration part for a detector given as ``score`` (uint8 crops
    to scores); None without a pool."""
    pool = splits.site_calibration
    if pool is None:
        return None
    matched = None
    if mode == "matched":
        matched = (score(splits.val_normal_matched), score(splits.val_spill_matched))
    return site_calibration(score(pool.images), tnr, pool, mode, matched)


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
                policies: tuple[str, ...] | None = None, site_mode: str = DEFAULT_SITE_CALIBRATION) -> dict:
    """Thresholds from the validation scores, one per policy (default: the config's), and from the site
    pool's calibration part when the splits have one; one pass over test."""
    score = cfg["score"]
    test_scores, _ = score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(splits.test)))
    s = test_scores[score]
    # The part of the pool that chose nothing fixes the site threshold.
    site = calibrate_at_site(lambda u8: score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(u8)))[0][score],
                             splits, cfg["tnr_target"], site_mode)
    report = report_at_policies(val_scores["normal"][score], val_scores["spill"][score], s, splits.test_labels,
                                policies or (cfg["threshold_policy"],), cfg["tnr_target"], site)
    report["score"] = score
    report["test_scores"] = s
    return report
