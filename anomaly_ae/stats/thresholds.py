"""Threshold policies from the seed write-ups, one pure function each.

Every policy takes validation normal and spill scores and returns a threshold;
a crop is flagged when ``score > threshold``.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import beta, binom

from anomaly_ae.stats.metrics import TNR_TARGET, as_scores, tnr_threshold

# The site rule's stated defaults: at most this share of the pool are spills, and the promise breaks
# with probability at most SITE_RISK.
SITE_SPILL_BOUND = 0.05
SITE_RISK = 0.05

ThresholdPolicy = Callable[..., float]


class SitePoolTooSmall(ValueError):
    """The site pool has too few crops for the site rule at the stated target, bound and risk."""


def tnr_target(normal_scores, anomaly_scores, tnr: float = TNR_TARGET) -> float:
    """Seed 002: the threshold of max TPR subject to TNR >= tnr."""
    return tnr_threshold(normal_scores, tnr)


def midpoint(normal_scores, anomaly_scores) -> float:
    """Seed 003: halfway between the class means."""
    return float((np.mean(as_scores(normal_scores, "normal_scores"))
                  + np.mean(as_scores(anomaly_scores, "anomaly_scores"))) / 2)


def _candidate_thresholds(normals: np.ndarray, anomalies: np.ndarray) -> np.ndarray:
    # Just below each distinct score and above the largest one: every distinct split.
    values = np.unique(np.concatenate([normals, anomalies]))
    below = np.nextafter(values, -np.inf)
    return np.r_[below, values[-1]]


def best_f1(normal_scores, anomaly_scores) -> float:
    """Seed 004: the threshold with the best F1 on the spills (ties: the lowest)."""
    normals = as_scores(normal_scores, "normal_scores")
    anomalies = as_scores(anomaly_scores, "anomaly_scores")
    candidates = _candidate_thresholds(normals, anomalies)
    tp = (anomalies[None, :] > candidates[:, None]).sum(1)
    fp = (normals[None, :] > candidates[:, None]).sum(1)
    fn = anomalies.size - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return float(candidates[int(np.argmax(f1))])


def tpr_target(normal_scores, anomaly_scores, tpr: float = 0.95) -> float:
    """Seed 004: the highest threshold that still keeps TPR >= tpr (best TNR at that TPR)."""
    anomalies = np.sort(as_scores(anomaly_scores, "anomaly_scores"))
    need = int(math.ceil(tpr * anomalies.size - 1e-9))
    if need == 0:
        return float(anomalies[-1])
    # Flag at least `need` spills: the threshold sits just below the need-th largest.
    return float(np.nextafter(anomalies[anomalies.size - need], -np.inf))


def min_anomaly(normal_scores, anomaly_scores) -> float:
    """Seed 001: just below the lowest spill score, so every validation spill is flagged."""
    return float(np.nextafter(np.min(as_scores(anomaly_scores, "anomaly_scores")), -np.inf))


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
    normals = np.sort(as_scores(normal_scores, "normal_scores"))
    return float(normals[neyman_pearson_rank(normals.size, alpha, delta) - 1])


def site_rank(n_pool: int, tnr: float = TNR_TARGET, max_spill_fraction: float = SITE_SPILL_BOUND, delta: float = SITE_RISK) -> int:
    """Smallest rank k whose order statistic of an unlabelled pool keeps P(TNR < tnr) <= delta.

    The pool holds n crops, of which s <= m = floor(max_spill_fraction * n) are spills with any
    scores at all, and n - s are i.i.d. normals with score CDF F (exchangeable with the crops the
    detector will judge). Let t be the k-th smallest pool score. At most s of the k lowest scores are
    spills, so at least k - s normals lie at or below t, and t >= N_(k-s), the (k-s)-th smallest of
    the n - s normal scores. TNR(t) = F(t) >= F(N_(k-s)), and F(N_(j)) < tnr happens exactly when at
    least j of the n - s normals fall below the tnr-quantile of F:

        P(TNR(t) < tnr) <= P(Binomial(n - s, tnr) >= k - s).

    The spill count is unknown, so k must satisfy this for every s in 0..m. With m = 0 it is the
    Neyman-Pearson rank of ``neyman_pearson_rank``. The bound holds whatever the spills score
    (even just below the threshold), so it asks nothing of the detector's quality.
    """
    if n_pool < 1:
        raise ValueError("the site pool is empty")
    k = _site_rank_or_none(n_pool, tnr, max_spill_fraction, delta)
    if k is None:
        raise SitePoolTooSmall(
            f"a site pool of {n_pool} crops is too small to promise TNR >= {tnr} with probability "
            f"{1 - delta:g} when up to {max_spill_fraction:.1%} of it may be spills; it needs at least "
            f"{min_site_pool_size(tnr, max_spill_fraction, delta)} crops")
    return k


def _site_rank_or_none(n_pool: int, tnr: float, max_spill_fraction: float, delta: float) -> int | None:
    if not 0.0 <= max_spill_fraction < 1.0:
        raise ValueError(f"max_spill_fraction must be in [0, 1), got {max_spill_fraction}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if not 0.0 < tnr < 1.0:
        raise ValueError(f"tnr must be in (0, 1), got {tnr}")
    m = int(math.floor(max_spill_fraction * n_pool + 1e-9))
    spills = np.arange(m + 1)

    def risk(k):  # the bound on P(TNR < tnr) over every spill count s <= m; falls as k grows
        return float(np.max(binom.sf(k - spills - 1, n_pool - spills, tnr)))

    lo, hi = m + 1, n_pool
    if hi < lo or risk(hi) > delta:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if risk(mid) <= delta:
            hi = mid
        else:
            lo = mid + 1
    return lo


def min_site_pool_size(tnr: float = TNR_TARGET, max_spill_fraction: float = SITE_SPILL_BOUND, delta: float = SITE_RISK,
                       limit: int = 10_000_000) -> int:
    """The fewest pool crops for which ``site_rank`` exists (the first of a run of feasible sizes)."""
    def feasible(n):
        return _site_rank_or_none(n, tnr, max_spill_fraction, delta) is not None

    hi = 16
    while not feasible(hi):
        hi *= 2
        if hi > limit:
            raise ValueError(f"no pool of up to {limit} crops can promise TNR >= {tnr} at this bound")
    lo = hi // 2
    while lo < hi:
        mid = (lo + hi) // 2
        if feasible(mid):
            hi = mid
        else:
            lo = mid + 1
    # Feasibility is not strictly monotone (floor(eps * n) steps), so step on to the first size whose
    # neighbours are feasible too.
    while not all(feasible(n) for n in range(hi, hi + 8)):
        hi += 1
    return hi


def site_threshold(site_scores, tnr: float = TNR_TARGET, max_spill_fraction: float = SITE_SPILL_BOUND, delta: float = SITE_RISK) -> float:
    """The threshold fixed on an unlabelled site pool: TNR >= tnr on site normals w.p. >= 1 - delta."""
    scores = np.sort(as_scores(site_scores, "site_scores"))
    return float(scores[site_rank(scores.size, tnr, max_spill_fraction, delta) - 1])


SITE_CALIBRATIONS = ("distribution_free", "matched")
# Decided by measurement: docs/results.md §10.
DEFAULT_SITE_CALIBRATION = "distribution_free"
# The carried validation normals' quantile at which the pool's spill share is estimated: high enough that
# few spills score below it, low enough that the pool's CDF there is measured to about +-1%.
SPILL_ESTIMATE_QUANTILE = 0.99


def spill_share_estimate(site_scores, matched_normal_scores) -> float:
    """The pool's spill share, by mixture-proportion estimation against the carried validation normals.

    At t, the carried normals' 99% quantile, the pool's CDF is (1 - a) F_N(t) + a F_S(t) >= (1 - a) F_N(t),
    so a >= 1 - F_U(t) / F_N(t); with few spills below t the bound is nearly tight, and it is the estimate.
    It assumes the site's normals score like the carried ones at t: where they score higher (a shift the
    carrying missed), the estimate counts normals as spills and comes out too high."""
    pool = np.asarray(site_scores, dtype=float)
    normals = np.asarray(matched_normal_scores, dtype=float)
    t = np.quantile(normals, SPILL_ESTIMATE_QUANTILE)
    return float(max(0.0, 1.0 - np.mean(pool <= t) / np.mean(normals <= t)))


def matched_site_rank(n_pool: int, spills: int, spill_below: float, tnr: float = TNR_TARGET,
                      delta: float = SITE_RISK) -> int:
    """The site rule's rank when the pool holds ``spills`` spills of which each scores below the threshold
    with probability at most ``spill_below``.

    With s spills, j of them below t = U_(k) and j ~ Binomial(s, spill_below) at most, the k - j normals
    below t make it the (k - j)-th of n - s normal scores, and P(TNR(t) < tnr) <= P(Binomial(n - s, tnr) >=
    k - j). Half the risk bounds j by its (1 - delta/2) quantile, half the order statistic."""
    if not 0 <= spills < n_pool:
        raise ValueError(f"spills must be in [0, {n_pool}), got {spills}")
    below = int(binom.ppf(1.0 - delta / 2, spills, spill_below)) if spills else 0
    return neyman_pearson_rank(n_pool - spills, 1.0 - tnr, delta / 2) + below


def matched_site_threshold(site_scores, matched_normal_scores, matched_spill_scores, tnr: float = TNR_TARGET,
                           max_spill_fraction: float = SITE_SPILL_BOUND, delta: float = SITE_RISK) -> tuple[float, dict]:
    """The site threshold that also uses where spills score and how many the pool holds.

    Assumptions (the distribution-free ``site_threshold`` makes neither): the site's spills score no lower
    than the validation spills carried to the site (``anomaly_ae.data.site.carry_to_site``), and the pool
    holds at least the estimated number of spills (``spill_share_estimate``, which assumes the site's normals
    score like the carried normals at the estimate's quantile). The estimate is capped by the stated bound,
    the share of spills below is the Clopper-Pearson upper bound (at delta/2) of the carried spills at or below
    the distribution-free threshold, and the rank never exceeds the distribution-free one. Returns the
    threshold and what it was built from."""
    pool = np.sort(as_scores(site_scores, "site_scores"))
    spills_carried = as_scores(matched_spill_scores, "matched_spill_scores")
    n = pool.size
    free_rank = site_rank(n, tnr, max_spill_fraction, delta)
    share = min(spill_share_estimate(pool, matched_normal_scores), max_spill_fraction)
    spills = int(math.floor(share * n + 1e-9))
    below = int(np.sum(spills_carried <= pool[free_rank - 1]))
    spill_below = float(beta.ppf(1.0 - delta / 2, below + 1, spills_carried.size - below)) if below < spills_carried.size else 1.0
    rank = min(free_rank, matched_site_rank(n, spills, spill_below, tnr, delta))
    return float(pool[rank - 1]), {"site_calibration_mode": "matched", "site_spill_estimate": f"{share:.4f}",
                                   "site_rank": str(rank), "site_free_rank": str(free_rank)}


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
