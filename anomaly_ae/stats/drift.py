"""The drift alarm: does a batch of scores still look like the normals the threshold was fixed on?

Two tests, both against what the detector was calibrated with. Pure functions.

- **Exceedance.** The detector promises TNR >= target on normals, and a batch may hold up to a stated
  share of spills (each flagged, at worst). So at most ``p0 = eps + (1 - eps) * (1 - target)`` of the
  batch should exceed the threshold. A one-sided binomial test of the batch's exceedance count against
  ``p0``: a small p-value means the promised TNR probably no longer holds. This is the alarm.
- **Shift.** Are the batch's scores stochastically larger than the calibration scores, by more than
  spills alone could make them? A batch of normals with a share b <= eps of spills has a CDF at least
  (1 - b) times the normals', so its one-sided Kolmogorov-Smirnov distance below the calibration CDF is
  at most eps plus sampling noise. The note fires only on the excess over eps (a one-sided two-sample
  DKW bound), so a batch that merely holds spills stays quiet. It sees a shift before the exceedance
  does, but a shift alone does not break the promise (the threshold may have room).

``alarm_power`` and ``detectable_tnr`` say what the alarm can see: the TNR below which it fires with a
given probability, at a batch size and a true spill share.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.stats import binom, binomtest

from anomaly_ae.stats.metrics import as_scores
from anomaly_ae.stats.thresholds import SITE_SPILL_BOUND

ALARM_LEVEL = 0.01


def drift_check(batch_scores, calibration_scores, threshold: float, tnr_target: float,
                max_spill_fraction: float = SITE_SPILL_BOUND, level: float = ALARM_LEVEL) -> dict:
    """Exceedance and shift tests of a batch against the calibration scores; ``alarm`` is the first."""
    batch = as_scores(batch_scores, "batch_scores")
    calibration = as_scores(calibration_scores, "calibration_scores")
    if not 0.0 <= max_spill_fraction < 1.0:
        raise ValueError(f"max_spill_fraction must be in [0, 1), got {max_spill_fraction}")
    flagged = int(np.sum(batch > threshold))
    bound = exceedance_bound(tnr_target, max_spill_fraction)
    exceedance_p = float(binomtest(flagged, batch.size, bound, alternative="greater").pvalue)
    statistic = shift_statistic(batch, calibration)
    shift_p = tolerant_shift_p(statistic, max_spill_fraction, batch.size, calibration.size)
    return {
        "n": int(batch.size), "flagged": flagged, "exceedance_rate": flagged / batch.size,
        "calibration_exceedance_rate": float(np.mean(calibration > threshold)),
        "exceedance_bound": bound, "exceedance_p": exceedance_p,
        "shift_statistic": statistic, "shift_p": shift_p,
        "alarm": exceedance_p < level, "shifted": shift_p < level, "level": level,
        "detectable_tnr": detectable_tnr(batch.size, max_spill_fraction, tnr_target, max_spill_fraction, level),
    }


def exceedance_bound(tnr_target: float, max_spill_fraction: float) -> float:
    """The most a batch may exceed the threshold while the promise holds: every spill flagged, and
    1 - target of the normals."""
    return max_spill_fraction + (1.0 - max_spill_fraction) * (1.0 - tnr_target)


def shift_statistic(batch: np.ndarray, calibration: np.ndarray) -> float:
    """max over x of F_calibration(x) - F_batch(x): how far the batch's scores sit above (one-sided KS)."""
    grid = np.concatenate([batch, calibration])
    f_batch = np.searchsorted(np.sort(batch), grid, side="right") / batch.size
    f_cal = np.searchsorted(np.sort(calibration), grid, side="right") / calibration.size
    return float(max(0.0, np.max(f_cal - f_batch)))


def tolerant_shift_p(statistic: float, tolerance: float, n: int, m: int) -> float:
    """P-value of a one-sided KS distance beyond ``tolerance`` (the spill share the batch may hold), by the
    two-sample DKW bound exp(-2 t^2 n m / (n + m))."""
    excess = statistic - tolerance
    return 1.0 if excess <= 0 else float(min(1.0, math.exp(-2.0 * excess ** 2 * n * m / (n + m))))


def critical_count(n: int, tnr_target: float, max_spill_fraction: float, level: float = ALARM_LEVEL) -> int | None:
    """The fewest flagged crops of ``n`` at which the alarm fires (None: it cannot fire at this size)."""
    flagged = np.arange(n + 1)
    fires = binom.sf(flagged - 1, n, exceedance_bound(tnr_target, max_spill_fraction)) < level
    return int(flagged[np.argmax(fires)]) if fires.any() else None


def alarm_power(n: int, true_tnr: float, spill_share: float, tnr_target: float, max_spill_fraction: float,
                level: float = ALARM_LEVEL) -> float:
    """The probability that the alarm fires on a batch of ``n`` crops whose normals are kept at
    ``true_tnr`` and of which ``spill_share`` are spills (each flagged)."""
    critical = critical_count(n, tnr_target, max_spill_fraction, level)
    if critical is None:
        return 0.0
    return float(binom.sf(critical - 1, n, spill_share + (1.0 - spill_share) * (1.0 - true_tnr)))


def detectable_tnr(n: int, spill_share: float, tnr_target: float, max_spill_fraction: float,
                   level: float = ALARM_LEVEL, power: float = 0.8) -> float:
    """The highest true TNR at which the alarm fires with probability >= ``power`` (0 if none)."""
    critical = critical_count(n, tnr_target, max_spill_fraction, level)
    if critical is None:
        return 0.0

    def fires(tnr):
        return binom.sf(critical - 1, n, spill_share + (1.0 - spill_share) * (1.0 - tnr)) >= power

    lo, hi = 0.0, tnr_target
    if not fires(lo):
        return 0.0
    for _ in range(40):  # power falls as the true TNR rises
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fires(mid) else (lo, mid)
    return lo


def drift_lines(check: dict) -> list[str]:
    """What predict prints: a warning when the alarm fires, a note when the scores moved."""
    lines = []
    if check["alarm"]:
        lines.append(f"WARNING drift alarm: {check['flagged']} of {check['n']} crops ({check['exceedance_rate']:.1%}) "
                     f"exceed the threshold, more than the promise allows ({check['exceedance_bound']:.1%}: the "
                     f"TNR target with the stated spill share; binomial p = {check['exceedance_p']:.2g}). The "
                     f"promised TNR probably no longer holds here: recalibrate on a window of crops from these "
                     f"conditions (predict --site DIR) or promote again with a site pool.")
    if check["shifted"]:
        lines.append(f"note: the scores sit above the calibration scores (one-sided KS D = "
                     f"{check['shift_statistic']:.3f}, more than the spill share allows; p = {check['shift_p']:.2g})"
                     + ("" if check["alarm"] else "; the threshold still holds the exceedance within its bound"))
    if not lines:
        lines.append(f"drift check: quiet ({check['exceedance_rate']:.1%} exceed the threshold, bound "
                     f"{check['exceedance_bound']:.1%}, p = {check['exceedance_p']:.2g}; KS p = {check['shift_p']:.2g}). "
                     f"At {check['n']} crops it would fire, 4 times in 5, once TNR fell to "
                     f"{check['detectable_tnr']:.3f}")
    return lines
