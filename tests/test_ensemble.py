"""Ensemble normalisation and threshold on hand-computed cases, and under a site shift."""
import math

import numpy as np
import pytest

from anomaly_ae.detector.ensemble import val_scores_of
from anomaly_ae.stats.combination import combine, tail_surprise
from anomaly_ae.stats.selection import site_summary
from anomaly_ae.stats.thresholds import select_threshold

NORMALS = np.arange(1.0, 21.0)  # 1..20: the top tenth is (19, 20), its mean excess 0.5


def test_tail_surprise_by_hand():
    # Below every normal: tail 21/21. At 10: 11 normals at or above, (11 + 1) / 21. At the largest: 2/21.
    # One past it: two tail scales beyond, exp(-2) / 21.
    np.testing.assert_allclose(tail_surprise([0.5, 10, 20, 21], NORMALS),
                               [0.0, math.log(21 / 12), math.log(21 / 2), 2 + math.log(21)])


def test_combined_scores_and_threshold_by_hand():
    a, b = NORMALS, 10 * NORMALS[::-1]
    normals = combine([a, b], [a, b])
    # Normal crop i scores (i, 10 * (21 - i)): its two surprises, averaged.
    expected = [(math.log(21 / (22 - i)) + math.log(21 / (i + 1))) / 2 for i in range(1, 21)]
    np.testing.assert_allclose(normals, expected)
    spill = combine([np.array([21.0]), np.array([100.0])], [a, b])
    np.testing.assert_allclose(spill, [(2 + math.log(21) + math.log(21 / 12)) / 2])
    threshold = select_threshold("tnr_target", normals, spill, 0.9)
    assert spill[0] > threshold
    # One member on a scale 1000 times larger changes nothing: each member counts in its own units.
    np.testing.assert_allclose(combine([a, 1000 * b], [a, 1000 * b]), normals)


def test_the_combined_score_does_not_saturate_under_a_site_shift():
    """Every pool crop above all of a member's validation normals once tied at rank 1, so the site
    threshold landed on the tie and flagged nothing (site TPR 0). The surprise keeps ordering them: the
    ensemble of two good members keeps at least its best member's site TPR."""
    rng = np.random.default_rng(0)
    val = [rng.normal(size=500), rng.normal(size=500)]
    pool = [rng.normal(4.0, 1.0, 800), rng.normal(4.0, 1.0, 800)]  # the site's light moves every score up
    spills = [rng.normal(9.0, 1.5, 60), rng.normal(9.0, 1.5, 60)]  # and the spills' with them
    members = [site_summary(p, s, 0.95, 0.05, 0.05)["tpr_at_site"] for p, s in zip(pool, spills)]
    ensemble = site_summary(combine(pool, val), combine(spills, val), 0.95, 0.05, 0.05)["tpr_at_site"]
    ranks = [np.searchsorted(np.sort(v), p, side="right") / v.size for v, p in zip(val, pool)]
    assert np.mean(np.mean(ranks, axis=0) == 1.0) > 0.05  # ranks would tie at the top past the rule's rank
    assert min(members) > 0.5
    assert ensemble >= max(members), (ensemble, members)


def test_ensemble_val_scores_come_from_each_members_own_score():
    payloads = [{"config": {"score": "mse"}, "val_scores": {"normal": {"mse": NORMALS, "l1": [9.0] * 20},
                                                            "spill": {"mse": [21.0], "l1": [0.0]}}},
                {"config": {"score": "knn_mean"}, "val_scores": {"normal": {"knn_mean": 2 * NORMALS},
                                                                 "spill": {"knn_mean": [42.0]}}}]
    val = val_scores_of(payloads)
    np.testing.assert_allclose(val["normal"], tail_surprise(NORMALS, NORMALS))
    np.testing.assert_allclose(val["spill"], [2 + math.log(21)])


def test_combine_refuses_mismatched_members():
    with pytest.raises(ValueError, match="one array of validation normals per member"):
        combine([np.zeros(2)], [])


def test_on_the_default_dataset_the_ensemble_keeps_its_members_site_tpr(tmp_path):
    """Two PCA members fitted on a fifth of the default dataset, judged by the site objective on the pool's
    selection part: ranks tied at the top and gave the ensemble a site TPR of 0; tail surprises keep it
    within its members' (between them, as a mean does: promote ships an ensemble only when its objective
    is above the single champion's)."""
    import torch

    from anomaly_ae.data import load_proliv, make_dataset, make_splits
    from sweeps.references import variant_scorer

    make_dataset(tmp_path / "d", scale=0.2, seed=3)
    splits = make_splits(load_proliv(tmp_path / "d", cache_dir=tmp_path / "c"), 0.2)
    train = torch.from_numpy(np.ascontiguousarray(splits.train))
    common = {"variant": "pca_ae", "image_height": 32, "image_width": 48, "normalisation": "none"}
    scorers = [variant_scorer({**common, "pca_ae.n_components": 16, "score": "topk"}, train, 0.95),
               variant_scorer({**common, "pca_ae.n_components": 32, "score": "mse"}, train, 0.95)]
    pool = splits.site_selection

    def scores(images):
        return [s(torch.from_numpy(np.ascontiguousarray(images))) for s in scorers]

    val, spill, site = scores(splits.val_normal), scores(splits.val_spill), scores(pool.images)
    rule = (0.95, pool.spill_bound, pool.delta)
    members = [site_summary(p, s, *rule)["tpr_at_site"] for p, s in zip(site, spill)]
    ensemble = site_summary(combine(site, val), combine(spill, val), *rule)["tpr_at_site"]

    def ranks(xs):
        return np.mean([np.searchsorted(np.sort(n), x, side="right") / n.size for x, n in zip(xs, val)], axis=0)

    assert site_summary(ranks(site), ranks(spill), *rule)["tpr_at_site"] == 0.0
    assert min(members) > 0.3
    assert min(members) <= ensemble <= max(members)
