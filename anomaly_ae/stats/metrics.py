"""Detection metrics on anomaly scores. Pure numpy functions.

Convention everywhere: a crop is flagged as a spill when ``score > threshold``.
Normals are the negatives, spills the positives.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta as beta_dist

# The TNR every operating point is held to unless told otherwise.
TNR_TARGET = 0.95


def as_scores(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def min_normals_kept(n_normals: int, tnr: float) -> int:
    """The number of normals that must sit at or below the threshold for TNR >= tnr."""
    if not 0.0 <= tnr <= 1.0:
        raise ValueError(f"tnr must be in [0, 1], got {tnr}")
    # The epsilon keeps 0.95 * 100 from rounding up to 96 through float error.
    return int(math.ceil(tnr * n_normals - 1e-9))


def tnr_threshold(normal_scores, tnr: float = TNR_TARGET) -> float:
    """The lowest threshold that keeps TNR >= tnr on these normals (ties included)."""
    normals = np.sort(as_scores(normal_scores, "normal_scores"))
    k = min_normals_kept(normals.size, tnr)
    return -math.inf if k == 0 else float(normals[k - 1])


def tpr_at_tnr(normal_scores, anomaly_scores, tnr: float = TNR_TARGET) -> tuple[float, float]:
    """Best TPR among thresholds that keep TNR >= tnr; returns (tpr, threshold).

    TPR only falls as the threshold rises, so the best admissible threshold is the
    lowest one, which is the k-th smallest normal score with k = ceil(tnr * n).
    """
    anomalies = as_scores(anomaly_scores, "anomaly_scores")
    threshold = tnr_threshold(normal_scores, tnr)
    return float(np.mean(anomalies > threshold)), threshold


@dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def tpr(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def tnr(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "tpr": self.tpr, "tnr": self.tnr}


def confusion_at(normal_scores, anomaly_scores, threshold: float) -> Confusion:
    normals = np.asarray(normal_scores, dtype=np.float64).ravel()
    anomalies = np.asarray(anomaly_scores, dtype=np.float64).ravel()
    tp = int(np.sum(anomalies > threshold))
    fp = int(np.sum(normals > threshold))
    return Confusion(tp=tp, fp=fp, tn=normals.size - fp, fn=anomalies.size - tp)


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for a proportion."""
    if trials <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= successes <= trials:
        raise ValueError(f"successes={successes} outside [0, {trials}]")
    alpha = 1.0 - confidence
    lower = 0.0 if successes == 0 else float(beta_dist.ppf(alpha / 2, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta_dist.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return lower, upper


def roc_curve_points(normal_scores, anomaly_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC as (fpr, tpr, thresholds), from the strictest threshold down; ties form one step.

    A point at threshold t counts ``score >= t`` as positive, as scikit-learn does.
    """
    normals = as_scores(normal_scores, "normal_scores")
    anomalies = as_scores(anomaly_scores, "anomaly_scores")
    scores = np.concatenate([anomalies, normals])
    labels = np.concatenate([np.ones(anomalies.size), np.zeros(normals.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], scores.size - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    fpr = np.r_[0.0, fps / normals.size]
    tpr = np.r_[0.0, tps / anomalies.size]
    thresholds = np.r_[np.inf, scores[last_of_tie]]
    return fpr, tpr, thresholds


def auroc(normal_scores, anomaly_scores) -> float:
    fpr, tpr, _ = roc_curve_points(normal_scores, anomaly_scores)
    return float(np.trapezoid(tpr, fpr))


def partial_auroc(normal_scores, anomaly_scores, max_fpr: float = 0.05) -> float:
    """Area under the ROC for FPR in [0, max_fpr], divided by max_fpr (1.0 is perfect)."""
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, tpr, _ = roc_curve_points(normal_scores, anomaly_scores)
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x = np.r_[fpr[:stop], max_fpr]
    y = np.r_[tpr[:stop], np.interp(max_fpr, fpr, tpr)]
    return float(np.trapezoid(y, x) / max_fpr)


def average_precision(normal_scores, anomaly_scores) -> float:
    """AUPR as average precision: sum over recall steps of precision (no interpolation)."""
    fpr, tpr, _ = roc_curve_points(normal_scores, anomaly_scores)
    n_pos = np.asarray(anomaly_scores).size
    n_neg = np.asarray(normal_scores).size
    tp, fp = tpr[1:] * n_pos, fpr[1:] * n_neg
    precision = tp / np.maximum(tp + fp, 1)
    return float(np.sum(np.diff(tpr) * precision))


def operating_margin(normal_scores, anomaly_scores, threshold: float, quantile: float = 0.05) -> float:
    """How far the weak anomalies stand above ``threshold``, in units of the normals' spread below it.

    ``(q(anomalies) - threshold) / (threshold - median(normals))`` with q the ``quantile``-th quantile:
    the spill at the edge of TPR 1 - quantile. Scale-free, so it compares across scores, and it keeps
    separating detectors after their TPR has saturated at 1.0. Positive: that spill is flagged with room
    to spare; the larger, the further the threshold (or the spills) can move before TPR falls.
    """
    normals = as_scores(normal_scores, "normal_scores")
    anomalies = as_scores(anomaly_scores, "anomaly_scores")
    spread = threshold - float(np.median(normals))
    if not math.isfinite(threshold) or spread <= 0:
        return math.nan
    return float((np.quantile(anomalies, quantile) - threshold) / spread)


def detection_summary(normal_scores, anomaly_scores, tnr: float = TNR_TARGET) -> dict:
    """Every ranking metric the trainable reports for one score type."""
    tpr, threshold = tpr_at_tnr(normal_scores, anomaly_scores, tnr)
    return {
        "tpr_at_tnr": tpr,
        "threshold": threshold,
        "auroc": auroc(normal_scores, anomaly_scores),
        "pauroc": partial_auroc(normal_scores, anomaly_scores, 0.05),
        "aupr": average_precision(normal_scores, anomaly_scores),
    }


def evaluation_report(normal_scores, anomaly_scores, threshold: float, confidence: float = 0.95) -> dict:
    """TPR/TNR with Clopper-Pearson intervals, the confusion counts and AUROC at a fixed threshold."""
    c = confusion_at(normal_scores, anomaly_scores, threshold)
    tpr_lo, tpr_hi = clopper_pearson(c.tp, c.tp + c.fn, confidence)
    tnr_lo, tnr_hi = clopper_pearson(c.tn, c.tn + c.fp, confidence)
    return {
        **c.as_dict(),
        "tpr_ci": (tpr_lo, tpr_hi),
        "tnr_ci": (tnr_lo, tnr_hi),
        "auroc": auroc(normal_scores, anomaly_scores),
        "threshold": float(threshold),
    }
