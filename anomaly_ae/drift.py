"""The drift alarm: does a batch of scores still look like the normals the threshold was fixed on?

Two tests, both against what the detector was calibrated with. Pure functions.

- **Exceedance.** The detector promises TNR >= target on normals, and a batch may hold up to a stated
  share of spills (each flagged, at worst). So at most ``p0 = eps + (1 - eps) * (1 - target)`` of the
  batch should exceed the threshold. A one-sided binomial test of the batch's exceedance count against
  ``p0``: a small p-value means the promised TNR probably no longer holds. This is the alarm.
- **Shift.** A one-sided two-sample Kolmogorov-Smirnov test: are the batch's scores stochastically
  larger than the calibration scores? It sees a shift before the exceedance does, and says where the
  scores moved, but a shift alone does not break the promise (the threshold may have room).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest, ks_2samp

from anomaly_ae.metrics import _as_scores

ALARM_LEVEL = 0.01


def drift_check(batch_scores, calibration_scores, threshold: float, tnr_target: float,
                max_spill_fraction: float = 0.05, level: float = ALARM_LEVEL) -> dict:
    """Exceedance and shift tests of a batch against the calibration scores; ``alarm`` is the first."""
    batch = _as_scores(batch_scores, "batch_scores")
    calibration = _as_scores(calibration_scores, "calibration_scores")
    if not 0.0 <= max_spill_fraction < 1.0:
        raise ValueError(f"max_spill_fraction must be in [0, 1), got {max_spill_fraction}")
    flagged = int(np.sum(batch > threshold))
    bound = max_spill_fraction + (1.0 - max_spill_fraction) * (1.0 - tnr_target)
    exceedance_p = float(binomtest(flagged, batch.size, bound, alternative="greater").pvalue)
    # alternative="less": the batch's CDF lies below the calibration's somewhere (its scores are larger).
    ks = ks_2samp(batch, calibration, alternative="less")
    return {
        "n": int(batch.size), "flagged": flagged, "exceedance_rate": flagged / batch.size,
        "calibration_exceedance_rate": float(np.mean(calibration > threshold)),
        "exceedance_bound": bound, "exceedance_p": exceedance_p,
        "shift_statistic": float(ks.statistic), "shift_p": float(ks.pvalue),
        "alarm": exceedance_p < level, "shifted": float(ks.pvalue) < level, "level": level,
    }


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
                     f"{check['shift_statistic']:.3f}, p = {check['shift_p']:.2g})"
                     + ("" if check["alarm"] else "; the threshold still holds the exceedance within its bound"))
    if not lines:
        lines.append(f"drift check: quiet ({check['exceedance_rate']:.1%} exceed the threshold, bound "
                     f"{check['exceedance_bound']:.1%}, p = {check['exceedance_p']:.2g}; KS p = {check['shift_p']:.2g})")
    return lines
