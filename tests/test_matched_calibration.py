"""The matched site calibration: what it gains when its assumptions hold, and what breaks when they do not.

Scores are drawn, not learned: site normals N(mu, sd), spills N(4, 1), 3.4% of a 500-crop pool; the
carried validation crops (anomaly_ae.data.site.carry_to_site) N(0, 1) and N(4, 1). TNR(t) and TPR(t)
are then exact: Phi((t - mu) / sd) and 1 - Phi(t - 4).
"""
import numpy as np
import pytest
from scipy.stats import norm

from anomaly_ae.stats.thresholds import (
    matched_site_rank, matched_site_threshold, neyman_pearson_rank, site_threshold, spill_share_estimate,
)

TNR, BOUND, DELTA, N, SHARE = 0.95, 0.05, 0.05, 500, 0.034


def test_the_spill_share_estimate_by_construction():
    rng = np.random.default_rng(0)
    carried = rng.normal(size=4000)
    assert spill_share_estimate(rng.normal(size=4000), carried) == pytest.approx(0.0, abs=0.01)
    pool = np.r_[rng.normal(size=3800), rng.normal(6, 1, 200)]
    assert spill_share_estimate(pool, carried) == pytest.approx(0.05, abs=0.01)


def test_matched_rank_by_hand():
    # No spills: the Neyman-Pearson rank at half the risk. Spills that never score below: the same rank
    # among the normals alone. Spills that may: plus the (1 - delta/2) quantile of how many do.
    assert matched_site_rank(500, 0, 0.3, TNR, DELTA) == neyman_pearson_rank(500, 1 - TNR, DELTA / 2)
    assert matched_site_rank(500, 20, 0.0, TNR, DELTA) == neyman_pearson_rank(480, 1 - TNR, DELTA / 2)
    from scipy.stats import binom

    assert matched_site_rank(500, 20, 0.1, TNR, DELTA) == (neyman_pearson_rank(480, 1 - TNR, DELTA / 2)
                                                          + int(binom.ppf(1 - DELTA / 2, 20, 0.1)))
    with pytest.raises(ValueError, match="spills must be in \\[0, 500\\)"):
        matched_site_rank(500, 500, 0.1)


def simulate(mu: float, sd: float, share: float = SHARE, reps: int = 300, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {"free": [], "matched": []}
    for _ in range(reps):
        spills = rng.binomial(N, share)
        pool = np.r_[rng.normal(mu, sd, N - spills), rng.normal(4, 1, spills)]
        carried_normals, carried_spills = rng.normal(size=1000), rng.normal(4, 1, 150)
        out["free"].append(site_threshold(pool, TNR, BOUND, DELTA))
        out["matched"].append(matched_site_threshold(pool, carried_normals, carried_spills, TNR, BOUND, DELTA)[0])
    return {mode: {"fail": float(np.mean(norm.cdf((np.array(t) - mu) / sd) < TNR)),
                   "tpr": float(np.mean(1 - norm.cdf(np.array(t) - 4)))} for mode, t in out.items()}


def test_where_its_assumptions_hold_the_matched_rule_keeps_delta_and_finds_more_spills():
    result = simulate(mu=0.0, sd=1.0)
    print("assumptions hold:", result)
    assert result["free"]["fail"] <= DELTA + 0.03
    assert result["matched"]["fail"] <= DELTA + 0.03
    assert result["matched"]["tpr"] > result["free"]["tpr"] + 0.05


def test_where_the_site_normals_score_higher_than_the_carried_ones_the_matched_rule_breaks():
    """A shift the carrying misses (the site's normals score 0.3 sd higher with a heavier tail) at a site
    whose pool holds no spills: the estimate counts normals as spills (up to the stated bound), the rank
    drops, and TNR falls below the target far more often than delta. The distribution-free rule does not
    care. (With the pool's 3.4% of real spills the cap at the stated bound limits the damage: measured
    beside, not asserted.)"""
    print("assumption fails, 3.4% spills:", simulate(mu=0.3, sd=1.15))
    result = simulate(mu=0.3, sd=1.15, share=0.0)
    print("assumption fails:", result)
    assert result["free"]["fail"] <= DELTA + 0.03
    assert result["matched"]["fail"] > 4 * DELTA
