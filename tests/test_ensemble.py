"""Ensemble normalisation and threshold on hand-computed cases."""
import numpy as np
import pytest

from anomaly_ae.ensemble import combine, rank_normalise, val_scores_of
from anomaly_ae.thresholds import select_threshold


def test_rank_normalise_by_hand():
    # Below every normal, tied with one (counts half), between two, above every one.
    np.testing.assert_allclose(rank_normalise([0, 2, 2.5, 5], [4, 1, 3, 2]), [0, 0.375, 0.5, 1.0])


def test_combined_scores_and_threshold_by_hand():
    a_normals, b_normals = np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 40, 30])
    # Normal crop i scores (a_i, b_i): ranks (.125, .125), (.375, .375), (.625, .875), (.875, .625).
    normals = combine([a_normals, b_normals], [a_normals, b_normals])
    np.testing.assert_allclose(normals, [0.125, 0.375, 0.75, 0.75])
    # A spill far out for member a, middling for b: (1.0 + 0.5) / 2.
    spill = combine([np.array([5.0]), np.array([25.0])], [a_normals, b_normals])
    np.testing.assert_allclose(spill, [0.75])
    # TNR >= 0.5 on the combined normals: the 2nd smallest; the spill stands above it.
    threshold = select_threshold("tnr_target", normals, spill, 0.5)
    assert threshold == pytest.approx(0.375) and spill[0] > threshold
    # One member on a scale 1000 times larger changes nothing: ranks are scale-free.
    np.testing.assert_allclose(combine([a_normals, 1000 * b_normals], [a_normals, 1000 * b_normals]), normals)


def test_ensemble_val_scores_come_from_each_members_own_score():
    payloads = [{"config": {"score": "mse"}, "val_scores": {"normal": {"mse": [1.0, 2, 3, 4], "l1": [9.0] * 4},
                                                            "spill": {"mse": [5.0], "l1": [0.0]}}},
                {"config": {"score": "knn_mean"}, "val_scores": {"normal": {"knn_mean": [10.0, 20, 40, 30]},
                                                                 "spill": {"knn_mean": [25.0]}}}]
    val = val_scores_of(payloads)
    np.testing.assert_allclose(val["normal"], [0.125, 0.375, 0.75, 0.75])
    np.testing.assert_allclose(val["spill"], [0.75])


def test_combine_refuses_mismatched_members():
    with pytest.raises(ValueError, match="one array of validation normals per member"):
        combine([np.zeros(2)], [])
