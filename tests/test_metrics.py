import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from anomaly_ae.stats.metrics import (
    auroc, average_precision, clopper_pearson, confusion_at, evaluation_report, partial_auroc, tpr_at_tnr,
)
from anomaly_ae.stats.thresholds import (
    best_f1, midpoint, min_anomaly, neyman_pearson_rank, normal_quantile, select_threshold, tnr_target, tpr_target,
)


def test_tpr_at_tnr_hand_computed():
    normals = np.arange(1, 21, dtype=float)  # 1..20; TNR 0.95 keeps 19 at or below the threshold
    spills = np.array([19.5, 20.0, 25.0, 30.0, 5.0])
    tpr, thr = tpr_at_tnr(normals, spills, 0.95)
    assert thr == 19.0
    assert tpr == pytest.approx(4 / 5)  # 19.5, 20, 25 and 30 are above 19; 5.0 is not


def test_tpr_at_tnr_ties_never_break_the_constraint():
    normals = np.array([0.0] * 10 + [1.0] * 10)  # half the normals tie at the top
    spills = np.array([1.0, 2.0])
    tpr, thr = tpr_at_tnr(normals, spills, 0.95)
    # No threshold below 1.0 keeps TNR >= 0.95; at 1.0 the tied spill is not flagged.
    assert thr == 1.0 and tpr == 0.5
    c = confusion_at(normals, spills, thr)
    assert c.tnr >= 0.95


def test_tpr_at_tnr_edge_targets():
    normals, spills = np.array([1.0, 2.0, 3.0]), np.array([0.5, 2.5])
    assert tpr_at_tnr(normals, spills, 1.0) == (0.0, 3.0)
    assert tpr_at_tnr(normals, spills, 0.0) == (1.0, -math.inf)


def test_tpr_at_tnr_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        tpr_at_tnr([1.0, float("nan")], [2.0])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tnr", [0.9, 0.95, 0.99])
def test_tpr_at_tnr_matches_sklearn_roc(seed, tnr):
    rng = np.random.default_rng(seed)
    # Rounded scores make many ties, the hard case.
    normals = np.round(rng.normal(0, 1, 300), 1)
    spills = np.round(rng.normal(1.5, 1, 40), 1)
    y = np.r_[np.zeros(normals.size), np.ones(spills.size)]
    fpr, tpr, _ = roc_curve(y, np.r_[normals, spills])
    expected = tpr[fpr <= 1 - tnr + 1e-12].max()
    assert tpr_at_tnr(normals, spills, tnr)[0] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(4))
def test_auroc_aupr_partial_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    normals = np.round(rng.normal(0, 1, 200), 2)
    spills = np.round(rng.normal(1.0, 1, 30), 2)
    y = np.r_[np.zeros(normals.size), np.ones(spills.size)]
    s = np.r_[normals, spills]
    assert auroc(normals, spills) == pytest.approx(roc_auc_score(y, s))
    assert average_precision(normals, spills) == pytest.approx(average_precision_score(y, s))
    # sklearn standardises (McClish); undo it to compare the raw normalised area.
    max_fpr = 0.05
    mcclish = roc_auc_score(y, s, max_fpr=max_fpr)
    min_area, max_area = 0.5 * max_fpr**2, max_fpr
    raw = ((2 * mcclish - 1) * (max_area - min_area) + min_area) / max_fpr
    assert partial_auroc(normals, spills, max_fpr) == pytest.approx(raw)


def test_perfect_and_reversed_separation():
    assert auroc([0, 1, 2], [3, 4]) == 1.0
    assert partial_auroc([0, 1, 2], [3, 4]) == 1.0
    assert auroc([3, 4], [0, 1, 2]) == 0.0


def test_clopper_pearson_known_values():
    # Reference values from the exact binomial (R's binom.test(7, 10)).
    lo, hi = clopper_pearson(7, 10)
    assert lo == pytest.approx(0.3475, abs=1e-4) and hi == pytest.approx(0.9333, abs=1e-4)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0


def test_evaluation_report_counts():
    r = evaluation_report([0.1, 0.2, 0.9], [0.5, 0.95, 0.05], threshold=0.3)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 2, 1)
    assert r["tpr"] == pytest.approx(2 / 3) and r["tnr"] == pytest.approx(2 / 3)
    assert r["tpr_ci"][0] < 2 / 3 < r["tpr_ci"][1]


def test_threshold_policies_hand_computed():
    normals = np.array([1.0, 2.0, 3.0, 4.0])
    spills = np.array([3.5, 5.0, 6.0])
    assert midpoint(normals, spills) == pytest.approx((2.5 + 14.5 / 3) / 2)
    assert min_anomaly(normals, spills) < 3.5 and confusion_at(normals, spills, min_anomaly(normals, spills)).tp == 3
    assert tnr_target(normals, spills, 0.75) == 3.0
    # best F1: t in [3, 3.5) flags 3.5, 4, 5, 6 -> 2*3/(2*3+1+0) = 6/7; t in [4, 5) -> 0.8;
    # t in [3.5, 4) -> 4/6. The best is the first.
    c = confusion_at(normals, spills, best_f1(normals, spills))
    assert (c.tp, c.fp) == (3, 1)
    # tpr_target 0.6: at least 2 of 3 spills flagged, threshold as high as possible.
    t = tpr_target(normals, spills, 0.6)
    assert confusion_at(normals, spills, t).tp == 2 and 4.0 < t < 5.0


def test_neyman_pearson_rank_bounds_violation():
    from scipy.stats import binom
    n, alpha, delta = 200, 0.05, 0.05
    k = neyman_pearson_rank(n, alpha, delta)
    assert binom.sf(k - 1, n, 1 - alpha) <= delta < binom.sf(k - 2, n, 1 - alpha)
    # Stricter than the plain 95% quantile (rank 190): it pays for confidence.
    assert k > 190
    with pytest.raises(ValueError, match="too few"):
        neyman_pearson_rank(20, alpha, delta)


def test_neyman_pearson_rule_holds_empirically():
    rng = np.random.default_rng(0)
    violations = 0
    for _ in range(400):
        t = normal_quantile(rng.normal(size=300), alpha=0.05, delta=0.05)
        violations += (1 - 0.5 * math.erfc(-t / math.sqrt(2))) > 0.05  # true FPR of N(0,1) above t
    assert violations / 400 <= 0.08


def test_select_threshold_names_policy():
    with pytest.raises(ValueError, match="unknown threshold policy 'nope'"):
        select_threshold("nope", [1.0], [2.0])
    assert select_threshold("tnr_target", [1, 2, 3, 4], [5], 0.75) == 3.0
