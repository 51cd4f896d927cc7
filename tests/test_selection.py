"""Score fan-out, its selection bias, nuisance perturbations, rung fidelity, the references."""
import math

import numpy as np
import pytest
import torch

from analysis.fidelity import asha_rungs, rung_fidelity
from anomaly_ae.detector.nuisance import NUISANCE, perturb_nuisance
from anomaly_ae.stats.selection import choose_score, score_objective, selection_bias


def m(tpr, pauroc=0.5, auroc=0.5, shift=None):
    out = {"tpr_at_tnr": tpr, "pauroc": pauroc, "auroc": auroc}
    if shift is not None:
        out["tpr_at_tnr_shift"] = shift
    return out


def test_fixed_selection_keeps_the_sampled_score():
    assert choose_score({"mse": m(0.2), "topk": m(0.9)}, "mse", "fixed", "clean") == "mse"


def test_best_selection_takes_the_highest_objective_then_pauroc():
    metrics = {"mse": m(0.8, 0.1), "topk": m(0.9, 0.2), "l1": m(0.9, 0.3)}
    assert choose_score(metrics, "mse", "best", "clean") == "l1"


def test_worst_of_shift_judges_by_the_lower_figure():
    metrics = {"mse": m(0.95, shift=0.60), "centred_max": m(0.90, shift=0.85)}
    assert score_objective(metrics["mse"], "worst_of_shift") == 0.60
    assert choose_score(metrics, "mse", "best", "worst_of_shift") == "centred_max"
    assert choose_score(metrics, "mse", "best", "clean") == "mse"


def test_unknown_selection_or_objective_named():
    with pytest.raises(ValueError, match="score selection 'all'"):
        choose_score({"mse": m(0.1)}, "mse", "all", "clean")
    with pytest.raises(ValueError, match="objective 'shifted'"):
        score_objective(m(0.1, shift=0.1), "shifted")


def test_selection_bias_is_zero_for_one_score_and_positive_for_many_noise_scores():
    rng = np.random.default_rng(0)
    one = selection_bias({"a": rng.normal(size=400)}, {"a": rng.normal(size=60)}, 0.9)
    assert one == 0.0
    # 30 scores that are pure noise: the in-fold winner looks good, and is no better out of fold.
    normal = {f"s{i}": rng.normal(size=400) for i in range(30)}
    spill = {f"s{i}": rng.normal(size=60) for i in range(30)}
    assert selection_bias(normal, spill, 0.9) > 0.05


def test_selection_bias_by_hand():
    # Fold split is seeded; with a single perfect score and a useless one, the winner is the
    # perfect one in both folds, and it is perfect out of fold too: no optimism.
    normal = {"good": np.zeros(40), "bad": np.arange(40.0)}
    spill = {"good": np.ones(10), "bad": np.arange(10.0)}
    assert selection_bias(normal, spill, 0.95) == 0.0


def test_nuisance_is_seeded_bounded_and_changes_crops():
    rng = np.random.default_rng(0)
    crops = torch.from_numpy(rng.integers(40, 200, size=(16, 32, 48, 3), dtype=np.uint8))
    a, b = perturb_nuisance(crops, seed=3), perturb_nuisance(crops, seed=3)
    assert a.dtype == torch.uint8 and a.shape == crops.shape and torch.equal(a, b)
    assert not torch.equal(a, perturb_nuisance(crops, seed=4))
    diff = (a.float() - crops.float()).abs().mean((1, 2, 3))
    assert (diff > 0).all()
    still = perturb_nuisance(crops, strength={k: 0.0 for k in NUISANCE})
    assert (still.int() - crops.int()).abs().max() <= 1  # zero strength: rounding only


def test_asha_rungs():
    assert asha_rungs(4, 1) == [1, 2]
    assert asha_rungs(30, 1) == [1, 2, 4, 8, 16]
    assert asha_rungs(4, 4) == []


def test_rung_fidelity_by_hand():
    histories = {
        "a": {1: 0.1, 2: 0.5, 3: 0.9},
        "b": {1: 0.2, 2: 0.4, 3: 0.8},
        "c": {1: 0.3, 2: 0.3, 3: 0.7},
        "d": {1: 0.9},  # stopped at rung 1: not counted
    }
    table = rung_fidelity(histories, 3).set_index("epoch")
    assert table.loc[1, "trials"] == 3 and table.loc[1, "spearman_rho"] == pytest.approx(-1.0)
    assert table.loc[2, "spearman_rho"] == pytest.approx(1.0)
    assert math.isnan(rung_fidelity({"a": {1: 0.1, 2: 0.2}}, 2).iloc[0]["spearman_rho"])


def test_references_score_on_the_sweep_splits(tiny_splits):
    from sweeps.references import fit_references

    refs = {r.name: r for r in fit_references(tiny_splits, 0.95, "worst_of_shift")}
    assert set(refs) == {"pca16", "knn5"}
    for ref in refs.values():
        assert len(ref.val_scores["normal"]) == len(tiny_splits.val_normal)
        assert ref.objective == min(ref.metrics["tpr_at_tnr"], ref.metrics["tpr_at_tnr_shift"])


def test_benchmark_holds_every_sweep_to_the_best_baseline_of_any_sweep():
    import pandas as pd

    from benchmarks.search import add_verdicts, anytime_curve

    # Sweep 0's budget ended before its slowest baseline finished (0.448); sweep 1's did not (0.870).
    table = pd.DataFrame({"best_searched": [0.90, 0.99, math.nan], "best_baseline": [0.448, 0.870, 0.2],
                          "pca16": [0.974, 0.974, 0.974], "knn5": [0.84, 0.84, 0.84]})
    out = add_verdicts(table)
    assert list(out["baseline_bar"]) == [0.870] * 3
    assert list(out["beat_all"]) == [False, True, False]

    frame = pd.DataFrame({"baseline": ["seed000", "", "", "start:pca16", ""],
                          "best_objective": [0.5, 0.7, 0.6, 0.97, 0.9],
                          "start_time": [1000, 1000, 3000, 1000, 5000], "wall_s": [1.0, 4.0, 1.0, 1.0, 1.0]})
    t, best = anytime_curve(frame, start_ms=1000)
    assert t == [3.0, 4.0, 5.0]
    assert best == [0.6, 0.7, 0.9]  # searched trials only, cumulative best in order of their end


def test_the_site_objectives_by_hand():
    from anomaly_ae.stats.selection import score_objective, tie_break

    metrics = {"tpr_at_tnr": 0.9, "tpr_at_site": 0.2, "tpr_at_site_matched": 0.6, "val_margin": 1.0,
               "site_margin": 2.0, "site_matched_margin": 3.0}
    assert score_objective(metrics, "site") == 0.2 and score_objective(metrics, "site_matched") == 0.6
    assert score_objective(metrics, "site_blend") == pytest.approx(0.75)
    assert tie_break(metrics, "site_matched") == tie_break(metrics, "site_blend") == 3.0
    with pytest.raises(ValueError, match="unknown objective 'sight'"):
        score_objective(metrics, "sight")


def test_detection_gain_counts_discordant_spills_and_their_sign_test():
    from anomaly_ae.stats.selection import detection_gain

    normals = np.arange(100.0)
    single = np.where(np.arange(20) < 10, 200.0, 0.0)  # flags spills 0-9
    combined = np.where((np.arange(20) >= 3) & (np.arange(20) < 15), 200.0, 0.0)  # flags 3-14
    gain = detection_gain(normals, single, normals, combined, 0.95)
    # 5 gained (10-14), 3 lost (0-2): P(X >= 5), X ~ Binomial(8, 1/2) = (56 + 28 + 8 + 1) / 256
    assert (gain["gained"], gain["lost"]) == (5, 3) and gain["p"] == pytest.approx(93 / 256)
    assert detection_gain(normals, single, normals, single, 0.95) == {"gained": 0, "lost": 0, "p": 1.0}
    with pytest.raises(ValueError, match="different spills"):
        detection_gain(normals, single, normals, combined[:5], 0.95)
