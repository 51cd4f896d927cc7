import numpy as np
import pytest
import torch

from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.training import build_trial, step_loss, synthetic_step_loss, train_one_epoch
from anomaly_ae.models import build_model, list_models, model_spec, register_model


def test_registry_lists_every_seed_family():
    names = set(list_models())
    assert {"conv_ae", "upsample_ae", "upsample_sigmoid_ae", "maxpool_ae", "bn_linear_ae", "linear_vae",
            "small_conv_vae", "big_conv_vae", "unet_ae", "memae"} <= names
    assert {model_spec(n).seed for n in names} >= {"000", "001", "002", "003", "004", "beyond"}


def test_unknown_variant_lists_valid_names():
    with pytest.raises(KeyError, match="registered variants: .*conv_ae"):
        build_model("resnet_ae")


def test_unknown_builder_parameter_is_named():
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['widht'\].*accepts: .*base_width"):
        build_model("conv_ae", widht=3)


def test_register_rejects_builder_without_shape_args():
    with pytest.raises(TypeError, match="must take"):
        @register_model("broken_test_variant")
        def broken(channels, out_activation="sigmoid"):
            return None


@pytest.mark.parametrize("variant", list_models())
@pytest.mark.parametrize("size,channels", [((32, 48), 3), ((30, 44), 1)])
def test_variant_output_shape(variant, size, channels):
    torch.manual_seed(0)
    model = build_model(variant, channels, *size).eval()
    if model_spec(variant).closed_form:
        model.fit(torch.rand(16, channels, *size))
    out = model(torch.rand(2, channels, *size))
    assert out.recon.shape == (2, channels, *size)
    assert (out.mu is not None) == model_spec(variant).variational
    # Every variant that offers the latent-distance scores gives a latent per crop.
    if "latent_knn" in model_spec(variant).extra_scores:
        assert out.latent is not None and out.latent.shape[0] == 2
    # What each training kind reads from the forward pass.
    training = model_spec(variant).training
    assert (out.anomaly_logits is not None) == (training == "synthetic_map")
    if training == "synthetic_map":
        assert out.anomaly_logits.shape == (2, 1, *size)
    assert (out.class_logits is not None) == (training == "synthetic_class")
    if training == "synthetic_class":
        assert out.class_logits.shape[0] == 2 and out.mahalanobis.shape == (2,)


@pytest.mark.parametrize("variant", list_models())
def test_variant_trains_loss_finite_and_decreasing(variant, tiny_splits):
    """A few steps on generated crops: shape, finite loss, and the loss goes down."""
    raw = {"variant": variant, "seed": 0, "lr": 2e-3, "image_height": 32, "image_width": 48,
           "normalisation": "none" if model_spec(variant).fixed_output == "sigmoid" else "minus_one_one"}
    if model_spec(variant).variational:
        raw[f"{variant}.kl_beta"] = 0.01
    if not model_spec(variant).residual_scores:
        raw["score"] = model_spec(variant).extra_scores[0]
    # Narrow nets keep this fast; capacity is not what is under test.
    for param, small in (("base_width", 8), ("hidden_dim", 64)):
        if param in model_spec(variant).params:
            raw[f"{variant}.{param}"] = small
    cfg = validate_config(raw)
    train = torch.from_numpy(np.ascontiguousarray(tiny_splits.train[:16]))
    state = build_trial(cfg, train, torch.device("cpu"))
    x = state.preprocess.to_unit(train)
    if model_spec(variant).closed_form:
        # No gradient steps: one fit must beat a flat grey reconstruction by far (an unfitted kNN
        # detector has no bank to reconstruct from).
        before = (x - 0.5).pow(2).mean().item()
        after = train_one_epoch(state, cfg, train)
        assert state.optimizer is None and np.isfinite(after) and after < 0.5 * before, (before, after)
        return
    losses = []
    state.model.train()
    synthetic = model_spec(variant).synthetic
    # A fresh synthetic anomaly every step makes the loss noisier: those variants get twice the steps.
    for _ in range(40 if synthetic else 20):
        loss = synthetic_step_loss(state, cfg, x) if synthetic else step_loss(state, cfg, x, x)
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("n,dim,k", [(200, 60, 16), (3000, 2400, 8)])
def test_pca_ae_matches_sklearn_reconstruction_error(n, dim, k):
    """The closed-form fit (exact SVD, and the randomized one above EXACT_SVD_LIMIT) is scikit-learn's PCA."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    # Low-rank signal plus noise, like crops of one scene: a decaying spectrum.
    x = rng.normal(size=(n, 12)) @ rng.normal(size=(12, dim)) + 0.1 * rng.normal(size=(n, dim))
    x = x.astype(np.float32)
    model = build_model("pca_ae", 1, 1, dim, n_components=k)
    model.fit(torch.from_numpy(x).view(n, 1, 1, dim))
    ours = model(torch.from_numpy(x).view(n, 1, 1, dim)).recon.view(n, dim).numpy()
    pca = PCA(n_components=k, svd_solver="full").fit(x)
    theirs = pca.inverse_transform(pca.transform(x))
    err_ours, err_theirs = ((x - ours) ** 2).mean(1), ((x - theirs) ** 2).mean(1)
    assert np.abs(err_ours - err_theirs).max() < 1e-4
    assert abs(err_ours.mean() - err_theirs.mean()) < 1e-4 * err_theirs.mean() + 1e-7
