import pytest
import torch

from anomaly_ae.detector.losses import PerceptualDistance, PerceptualWeightsMissing, reconstruction_loss
from anomaly_ae.detector.scores import centred_max_score, compute_scores, smooth_max_score, ssim, topk_score


def test_ssim_identity_and_drop():
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert (ssim(x, x.flip(-1)) < 0.5).all()


def test_topk_is_mean_of_largest_errors():
    x = torch.zeros(1, 1, 10, 10)
    recon = torch.zeros(1, 1, 10, 10)
    recon[0, 0, 0, :5] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # squared errors 1, 4, 9, 16, 25
    assert topk_score(x, recon, fraction=0.02).item() == pytest.approx((25 + 16) / 2)


def test_local_scores_rank_a_small_spot_above_spread_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 3, 32, 48), 0.5)
    noisy = x + 0.05 * torch.randn(1, 3, 32, 48, generator=g)  # diffuse error everywhere
    spot = x.clone()
    spot[..., 14:18, 22:26] += 0.35  # small, strong, local error
    recon = torch.cat([noisy[:1], spot[:1]])
    scores = compute_scores(x, recon, ["mse", "smooth_max", "topk"])
    assert scores["mse"][0] > scores["mse"][1]  # a global mean prefers the noise
    assert scores["smooth_max"][1] > scores["smooth_max"][0]
    assert scores["topk"][1] > scores["topk"][0]
    assert smooth_max_score(x, recon, sigma=2.0).shape == (2,)


def test_centred_max_ignores_a_global_colour_shift_but_not_a_spot():
    g = torch.Generator().manual_seed(0)
    recon = 0.5 + 0.02 * torch.randn(1, 3, 32, 48, generator=g)
    x = recon + 0.01 * torch.randn(1, 3, 32, 48, generator=g)
    tint = torch.tensor([0.06, 0.0, -0.05]).view(1, 3, 1, 1)  # a lighting / colour-temperature shift
    spot = x.clone()
    spot[..., 14:18, 22:26] += 0.2
    plain, tinted, spotted = (centred_max_score(v, recon).item() for v in (x, x + tint, spot))
    assert tinted == pytest.approx(plain, rel=1e-4)  # the shift is removed ...
    assert smooth_max_score(x + tint, recon).item() > 10 * smooth_max_score(x, recon).item()  # ... not here
    assert spotted > 10 * plain


def test_elbo_needs_a_vae():
    with pytest.raises(ValueError, match="variational"):
        compute_scores(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), ["elbo"])


def test_unknown_score_and_loss_named():
    with pytest.raises(ValueError, match="unknown score 'psnr'"):
        compute_scores(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), ["psnr"])
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        reconstruction_loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), "huber")


def test_perceptual_without_weights_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PerceptualWeightsMissing, match="Nothing is downloaded"):
        PerceptualDistance("alexnet")


def test_perceptual_loads_local_weights_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    dist = PerceptualDistance("alexnet", str(path))
    x = torch.rand(2, 3, 32, 48)
    assert torch.allclose(dist(x, x), torch.zeros(2))
    assert (dist(x, x.flip(-1)) > 0).all()
    loss = reconstruction_loss(x, x.flip(-1), "mse_perceptual", perceptual=dist)
    assert loss.item() > 0
