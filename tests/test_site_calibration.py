"""The site rule's guarantee by simulation, its cost against the oracle, the site objective by hand,
and the drift alarm."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from anomaly_ae.stats.drift import drift_check
from anomaly_ae.stats.metrics import operating_margin
from anomaly_ae.stats.selection import choose_score, score_objective, site_summary, tie_break
from anomaly_ae.stats.thresholds import min_site_pool_size, neyman_pearson_rank, site_rank, site_threshold

TNR, DELTA, BOUND = 0.95, 0.05, 0.05


def simulate(n: int, spills: int, rank: int, draws: int, seed: int, spill_mean: float) -> np.ndarray:
    """True TNR (normals ~ N(0, 1)) of the rank-th pool score, over many pools with ``spills`` spills."""
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal((draws, n - spills))
    spill = rng.normal(spill_mean, 1.0, (draws, spills))
    pool = np.sort(np.concatenate([normal, spill], axis=1), axis=1)
    return norm.cdf(pool[:, rank - 1])


@pytest.mark.parametrize("n", [250, 1000])
@pytest.mark.parametrize("share", [0.0, BOUND / 2, BOUND])
@pytest.mark.parametrize("spill_mean", [-4.0, 4.0])  # spills below every normal (the worst case) or above
def test_the_site_rule_keeps_its_promise_in_simulation(n, share, spill_mean):
    spills = int(math.floor(share * n))
    tnr = simulate(n, spills, site_rank(n, TNR, BOUND, DELTA), draws=2000, seed=n + spills, spill_mean=spill_mean)
    assert np.mean(tnr < TNR) <= DELTA


def test_the_simulation_can_fail_a_rule_that_ignores_the_spills():
    # The plain Neyman-Pearson rank is right for a clean pool, but spills below the threshold break it.
    n = 1000
    naive = neyman_pearson_rank(n, 1 - TNR, DELTA)
    tnr = simulate(n, int(BOUND * n), naive, draws=2000, seed=7, spill_mean=-4.0)
    assert np.mean(tnr < TNR) > 1.5 * DELTA


def mean_tpr_loss(n: int, spill_share: float, separation: float, seed: int = 3, draws: int = 200) -> float:
    """Mean TPR lost against the oracle threshold (the normals' true tnr-quantile, unknowable without
    labels), for spills ~ N(separation, 1) against normals ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    spills, losses = int(round(spill_share * n)), []
    for _ in range(draws):
        pool = np.r_[rng.standard_normal(n - spills), rng.normal(separation, 1.0, spills)]
        t = site_threshold(pool, TNR, BOUND, DELTA)
        losses.append(norm.sf(norm.ppf(TNR) - separation) - norm.sf(t - separation))
    return float(np.mean(losses))


def test_the_site_rule_costs_little_tpr_at_realistic_sizes():
    # A clean pool of 1,000 crops costs only the delta margin; every spill left in a pool takes a
    # false-alarm slot that the rule must assume is a normal's, so a 3.4% share costs more, and less
    # as the pool grows (docs/results.md, "How large a pool, and what it costs").
    assert 0 < mean_tpr_loss(1000, 0.0, 3.0) < 0.03
    contaminated = [mean_tpr_loss(n, 0.034, 4.0) for n in (1000, 5000)]
    assert 0 < contaminated[1] < contaminated[0] < 0.08


def test_site_rank_reduces_to_neyman_pearson_without_spills_and_names_the_size_it_needs():
    for n in (100, 1000, 5000):
        assert site_rank(n, TNR, 0.0, DELTA) == neyman_pearson_rank(n, 1 - TNR, DELTA)
    need = min_site_pool_size(TNR, BOUND, DELTA)
    assert site_rank(need, TNR, BOUND, DELTA) <= need
    with pytest.raises(ValueError, match=f"needs at least {need} crops"):
        site_rank(need - 5, TNR, BOUND, DELTA)
    # A rank can only rise with the spill bound or a smaller risk.
    assert site_rank(1000, TNR, 0.1, DELTA) >= site_rank(1000, TNR, BOUND, DELTA) >= site_rank(1000, TNR, BOUND, 0.2)


def test_site_objective_on_a_hand_computed_case():
    # 100 site scores 0..99; the rank for n=100 is 99, so the threshold is the 99th smallest: 98.
    site = np.arange(100, dtype=float)
    assert site_rank(100, TNR, BOUND, DELTA) == 99
    spills = np.array([50.0, 98.0, 98.5, 120.0])  # flagged: score > 98
    summary = site_summary(site, spills, TNR, BOUND, DELTA)
    assert summary["site_threshold"] == 98.0 and summary["tpr_at_site"] == 0.5
    # Margin: (5% quantile of the spills - threshold) / (threshold - median of the pool).
    q05 = np.quantile(spills, 0.05)
    assert summary["site_margin"] == pytest.approx((q05 - 98.0) / (98.0 - 49.5))
    assert operating_margin(site, spills, 98.0) == summary["site_margin"]
    metrics = {"tpr_at_tnr": 1.0, "tpr_at_site": 0.5, "site_margin": -1.0, "val_margin": 2.0}
    assert score_objective(metrics, "site") == 0.5 and score_objective(metrics, "clean") == 1.0
    assert tie_break(metrics, "site") == -1.0 and tie_break(metrics, "clean") == 2.0


def test_a_tie_at_the_top_is_broken_by_the_margin_at_the_operating_point():
    common = {"tpr_at_tnr": 1.0, "tpr_at_site": 1.0, "pauroc": 1.0, "auroc": 1.0}
    metrics = {"mse": {**common, "site_margin": 0.2, "val_margin": 3.0},
               "topk": {**common, "site_margin": 0.9, "val_margin": 1.0}}
    assert choose_score(metrics, "mse", "best", "site") == "topk"
    assert choose_score(metrics, "mse", "best", "clean") == "mse"


def test_drift_alarm_fires_on_a_shift_and_stays_quiet_on_exchangeable_batches():
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal(1000)
    threshold = site_threshold(calibration, TNR, BOUND, DELTA)
    quiet = drift_check(rng.standard_normal(3000), calibration, threshold, TNR, BOUND)
    assert not quiet["alarm"] and not quiet["shifted"]
    # A batch with 3% spills is still within the promise.
    mixed = drift_check(np.r_[rng.standard_normal(2910), rng.normal(5, 1, 90)], calibration, threshold, TNR, BOUND)
    assert not mixed["alarm"]
    shifted = drift_check(rng.normal(0.8, 1.0, 3000), calibration, threshold, TNR, BOUND)
    assert shifted["alarm"] and shifted["shifted"] and shifted["exceedance_rate"] > shifted["exceedance_bound"]
    # The bound is the TNR promise plus the stated spill share: 5% + 95% * 5%.
    assert shifted["exceedance_bound"] == pytest.approx(0.05 + 0.95 * 0.05)


def test_the_shift_note_does_not_fire_on_spills_alone():
    """4,000 crops with 4.5% spills (within the 5% bound) against 4,000 calibration normals: a plain one-sided
    KS test calls that a shift (p ~ 3e-4); the note allows for the spill share and stays quiet. A shift of
    the normals themselves still fires it."""
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(1)
    calibration = rng.standard_normal(4000)
    threshold = site_threshold(calibration, TNR, BOUND, DELTA)
    spilled = np.r_[rng.standard_normal(3820), rng.normal(6, 1, 180)]
    assert ks_2samp(spilled, calibration, alternative="less").pvalue < 0.01
    check = drift_check(spilled, calibration, threshold, TNR, BOUND)
    assert not check["shifted"] and not check["alarm"]
    assert check["shift_statistic"] == pytest.approx(ks_2samp(spilled, calibration, alternative="less").statistic)
    moved = drift_check(rng.normal(0.4, 1.0, 4000), calibration, threshold, TNR, BOUND)
    assert moved["shifted"]


def test_alarm_power_matches_the_binomial_test_it_models():
    """The alarm's power at a true TNR, against scipy's binomtest on simulated batches' flagged counts."""
    from scipy.stats import binomtest

    from anomaly_ae.stats.drift import alarm_power, detectable_tnr, exceedance_bound

    rng = np.random.default_rng(2)
    n, share = 1000, 0.034
    tnr = detectable_tnr(n, share, TNR, BOUND)
    assert 0.85 < tnr < TNR
    p_flag = share + (1 - share) * (1 - tnr)
    counts = rng.binomial(n, p_flag, size=4000)
    pvalue = {c: binomtest(int(c), n, exceedance_bound(TNR, BOUND), alternative="greater").pvalue
              for c in np.unique(counts)}
    fired = np.mean([pvalue[c] < 0.01 for c in counts])
    assert alarm_power(n, tnr, share, TNR, BOUND) == pytest.approx(0.8, abs=0.02)
    assert fired == pytest.approx(0.8, abs=0.03)
    # Bigger batches see smaller drops; a tighter stated bound sees more.
    sizes = [detectable_tnr(m, share, TNR, BOUND) for m in (250, 1000, 4000)]
    assert sizes == sorted(sizes) and detectable_tnr(1000, share, TNR, share) > tnr
