"""kNN distances, the knn variant and the latent-distance score, against scikit-learn and by hand."""
import numpy as np
import pytest
import torch

from anomaly_ae.detector.checkpoints import load_checkpoint, save_checkpoint
from anomaly_ae.detector.checkpoints import checkpoint_payload, load_trained
from anomaly_ae.detector.config import ConfigError, validate_config
from anomaly_ae.detector.latent_bank import bank_indices, fit_bank, latent_hybrid
from anomaly_ae.detector.training import build_trial, train_one_epoch
from anomaly_ae.detector.validation import score_images
from anomaly_ae.models import build_model
from anomaly_ae.models.neighbours import knn_distances


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_knn_distances_match_sklearn(metric, rng):
    from sklearn.neighbors import NearestNeighbors

    bank, queries = rng.random((300, 20)), rng.random((40, 20))
    ours, index = knn_distances(torch.from_numpy(queries), torch.from_numpy(bank), 4, metric, chunk=16)
    theirs, their_index = NearestNeighbors(n_neighbors=4, metric="euclidean" if metric == "l2" else "cosine",
                                           algorithm="brute").fit(bank).kneighbors(queries)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(index.numpy(), their_index)


def test_knn_variant_scores_match_sklearn_on_its_bank(tiny_splits):
    """knn_mean / knn_kth of the trained variant are sklearn's neighbour distances in its feature space."""
    from sklearn.neighbors import NearestNeighbors

    cfg = validate_config({"variant": "knn", "knn.k": 3, "knn.pool": 2, "knn.pca_dim": 8, "score": "knn_mean",
                           "image_height": 32, "image_width": 48})
    train = torch.from_numpy(np.ascontiguousarray(tiny_splits.train))
    state = build_trial(cfg, train, torch.device("cpu"))
    train_one_epoch(state, cfg, train)
    queries = torch.from_numpy(np.ascontiguousarray(tiny_splits.val_spill))
    scores, _ = score_images(state, cfg, queries)
    model = state.model
    assert model.bank.shape == (len(train), 8) and model.bank.dtype == torch.float16
    feats = model.features(state.preprocess.normalise(state.preprocess.to_unit(queries))).numpy()
    dist, _ = NearestNeighbors(n_neighbors=3).fit(model.bank.float().numpy()).kneighbors(feats)
    np.testing.assert_allclose(scores["knn_mean"], dist.mean(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores["knn_kth"], dist[:, -1], rtol=1e-4, atol=1e-5)


def test_knn_bank_ships_in_the_checkpoint(tiny_splits, tmp_path):
    cfg = validate_config({"variant": "knn", "knn.k": 2, "score": "knn_kth", "knn.metric": "cosine"})
    train = torch.from_numpy(np.ascontiguousarray(tiny_splits.train))
    state = build_trial(cfg, train, torch.device("cpu"))
    train_one_epoch(state, cfg, train)
    queries = torch.from_numpy(np.ascontiguousarray(tiny_splits.val_normal[:16]))
    before, _ = score_images(state, cfg, queries)
    save_checkpoint(tmp_path / "model.pt", checkpoint_payload(state, cfg, {"normal": {}, "spill": {}}, {}))
    after, _ = score_images(load_trained(load_checkpoint(tmp_path / "model.pt")), cfg, queries)
    np.testing.assert_allclose(after["knn_kth"], before["knn_kth"])


def test_latent_scores_by_hand():
    # Bank latents on a line; scale set at 1 and 3 from its nearest points.
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    lb = fit_bank(bank, torch.tensor([[0.0, 1.0], [6.0, 0.0]]), torch.tensor([0.1, 0.3]), k=2)
    # scale crops: (0,1) -> distances 1, sqrt(2) -> mean 1.2071; (6,0) -> 3, 5 -> mean 4; median 2.6036
    assert float(lb.latent_scale) == pytest.approx((1 + 2**0.5) / 4 + 2, rel=1e-3)
    assert float(lb.mse_scale) == pytest.approx(0.2)
    out = lb.scores(torch.tensor([[2.0, 0.0]]), torch.tensor([0.4]))
    assert out["latent_knn"].item() == pytest.approx(1.0, rel=1e-3)  # neighbours at 1 and 1
    assert out["latent_hybrid"].item() == pytest.approx(1.0 / float(lb.latent_scale) + 0.4 / 0.2, rel=1e-3)
    assert latent_hybrid(torch.tensor([2.0]), torch.tensor([1.0]), 0.0, 1.0).item() > 1e9  # zero scale: tiny


def test_bank_indices_are_disjoint_and_seeded():
    bank, scale = bank_indices(5000, seed=3)
    assert len(set(bank.tolist()) & set(scale.tolist())) == 0
    assert torch.equal(bank, bank_indices(5000, seed=3)[0]) and not torch.equal(bank, bank_indices(5000, 4)[0])


def test_every_autoencoder_trial_gets_latent_scores_that_survive_a_reload(tiny_splits, tmp_path):
    cfg = validate_config({"variant": "conv_ae", "conv_ae.depth": 2, "samples_per_epoch": 64, "batch_size": 32,
                           "score": "latent_hybrid"})
    train = torch.from_numpy(np.ascontiguousarray(tiny_splits.train))
    state = build_trial(cfg, train, torch.device("cpu"))
    train_one_epoch(state, cfg, train)
    queries = torch.from_numpy(np.ascontiguousarray(tiny_splits.val_spill))
    scores, _ = score_images(state, cfg, queries)
    assert {"latent_knn", "latent_hybrid"} <= set(scores)
    assert np.all(np.isfinite(scores["latent_hybrid"]))
    np.testing.assert_allclose(scores["latent_hybrid"],
                               scores["latent_knn"] / float(state.latent_bank.latent_scale)
                               + scores["mse"] / float(state.latent_bank.mse_scale), rtol=1e-5)
    save_checkpoint(tmp_path / "model.pt", checkpoint_payload(state, cfg, {"normal": {}, "spill": {}}, {}))
    again, _ = score_images(load_trained(load_checkpoint(tmp_path / "model.pt")), cfg, queries)
    np.testing.assert_allclose(again["latent_knn"], scores["latent_knn"], rtol=1e-5)


def test_knn_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"knn.metric: 'manhattan' is not one of \['l2', 'cosine'\]"):
        validate_config({"variant": "knn", "knn.metric": "manhattan"})
    with pytest.raises(ConfigError, match="score: 'knn_mean' comes from knn, and 'conv_ae' does not give it"):
        validate_config({"variant": "conv_ae", "score": "knn_mean"})
    with pytest.raises(ConfigError, match="score: 'latent_knn' comes from .*'knn' does not give it"):
        validate_config({"variant": "knn", "score": "latent_knn"})
    with pytest.raises(ValueError, match="knn.metric"):
        build_model("knn", metric="l3")
