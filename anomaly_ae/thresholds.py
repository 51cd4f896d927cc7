"""Threshold policies from the seed write-ups, one pure function each.

Every policy takes validation normal and spill scores and returns a threshold;
a crop is flagged when ``score > threshold``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import binom

from anomaly_ae.metrics import _as_scores, tnr_threshold

ThresholdPolicy = Callable[..., float]


def tnr_target(normal_scores, anomaly_scores, tnr: float = 0.95) -> float:
    """Seed 002: the threshold of max TPR subject to TNR >= tnr."""
    return tnr_threshold(normal_scores, tnr)


def midpoint(normal_scores, anomaly_scores) -> float:
    """Seed 003: halfway between the class means."""
    return float((np.mean(_as_scores(normal_scores, "normal_scores"))
                  + np.mean(_as_scores(anomaly_scores, "anomaly_scores"))) / 2)


def _candidate_thresholds(normals: np.ndarray, anomalies: np.ndarray) -> np.ndarray:
    # Just below each distinct score and above the largest one: every distinct split.
    values = np.unique(np.concatenate([normals, anomalies]))
    below = np.nextafter(values, -np.inf)
    return np.r_[below, values[-1]]


def best_f1(normal_scores, anomaly_scores) -> float:
    """Seed 004: the threshold with the best F1 on the spills (ties: the lowest)."""
    normals = _as_scores(normal_scores, "normal_scores")
    anomalies = _as_scores(anomaly_scores, "anomaly_scores")
    candidates = _candidate_thresholds(normals, anomalies)
    tp = (anomalies[None, :] > candidates[:, None]).sum(1)
    fp = (normals[None, :] > candidates[:, None]).sum(1)
    fn = anomalies.size - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return float(candidates[int(np.argmax(f1))])


def tpr_target(normal_scores, anomaly_scores, tpr: float = 0.95) -> float:
    """Seed 004: the highest threshold that still keeps TPR >= tpr (best TNR at that TPR)."""
    anomalies = np.sort(_as_scores(anomaly_scores, "anomaly_scores"))
    need = int(math.ceil(tpr * anomalies.size - 1e-9))
    if need == 0:
        return float(anomalies[-1])
    # Flag at least `need` spills: the threshold sits just below the need-th largest.
    return float(np.nextafter(anomalies[anomalies.size - need], -np.inf))


def min_anomaly(normal_scores, anomaly_scores) -> float:
    """Seed 001: just below the lowest spill score, so every validation spill is flagged."""
    return float(np.nextafter(np.min(_as_scores(anomaly_scores, "anomaly_scores")), -np.inf))


def neyman_pearson_rank(n_normals: int, alpha: float = 0.05, delta: float = 0.05) -> int:
    """Smallest rank k whose order statistic keeps P(FPR > alpha) <= delta.

    With threshold = k-th smallest of n i.i.d. normal scores, the FPR exceeds alpha
    exactly when at least k of the n draws fall below the (1 - alpha) quantile:
    probability P(Binomial(n, 1 - alpha) >= k), which falls as k grows.
    """
    if n_normals < 1:
        raise ValueError("need at least one normal score")
    for k in range(1, n_normals + 1):
        if binom.sf(k - 1, n_normals, 1 - alpha) <= delta:
            return k
    raise ValueError(
        f"{n_normals} normals are too few to bound FPR <= {alpha} with confidence {1 - delta}; "
        f"need at least {math.ceil(math.log(delta) / math.log(1 - alpha))}"
    )


def normal_quantile(normal_scores, anomaly_scores=None, alpha: float = 0.05, delta: float = 0.05) -> float:
    """Neyman-Pearson order-statistic rule: FPR <= alpha with probability >= 1 - delta, normals only."""
    normals = np.sort(_as_scores(normal_scores, "normal_scores"))
    return float(normals[neyman_pearson_rank(normals.size, alpha, delta) - 1])


THRESHOLD_POLICIES: dict[str, ThresholdPolicy] = {
    "tnr_target": tnr_target,
    "midpoint": midpoint,
    "best_f1": best_f1,
    "tpr_target": tpr_target,
    "min_anomaly": min_anomaly,
    "normal_quantile": normal_quantile,
}


def select_threshold(policy: str, normal_scores, anomaly_scores, target: float = 0.95) -> float:
    """Apply a named policy; ``target`` is the TNR (or TPR, or 1 - alpha) it aims for."""
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"unknown threshold policy {policy!r}; valid: {sorted(THRESHOLD_POLICIES)}")
    if policy == "tnr_target":
        return tnr_target(normal_scores, anomaly_scores, tnr=target)
    if policy == "tpr_target":
        return tpr_target(normal_scores, anomaly_scores, tpr=target)
    if policy == "normal_quantile":
        return normal_quantile(normal_scores, anomaly_scores, alpha=1 - target)
    return THRESHOLD_POLICIES[policy](normal_scores, anomaly_scores)
