"""Anomaly scores derived from one forward pass's residual map.

Each score maps (inputs, reconstructions) of shape (B, C, H, W) to one value per
crop, higher meaning more anomalous. A distance detector's scores read its neighbour
distances instead; the latent-distance scores live in ``anomaly_ae.detector.latent_bank``. All of them are computed from the same
forward pass, so a trial can report every score's metrics at no extra training.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

SCORE_TYPES = ("mse", "l1", "ssim", "hybrid", "topk", "smooth_max", "centred_max", "elbo", "perceptual",
               "knn_mean", "knn_kth", "latent_knn", "latent_hybrid", "map_max", "map_topk", "mahalanobis")
# Scores that need nothing beyond x and its reconstruction.
RESIDUAL_SCORES = ("mse", "l1", "ssim", "hybrid", "topk", "smooth_max", "centred_max")

DEFAULT_SCORE_PARAMS = {
    "hybrid": {"alpha": 1.0, "beta": 1.0},
    "topk": {"fraction": 0.05},
    "smooth_max": {"sigma": 1.0},
    "centred_max": {"sigma": 1.0},
    "map_max": {"sigma": 1.0},
    "map_topk": {"fraction": 0.05, "sigma": 1.0},
}


def gaussian_kernel(sigma: float, channels: int, device=None, dtype=torch.float32) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    coords = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = torch.outer(g, g)
    return kernel.expand(channels, 1, *kernel.shape).contiguous()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    kernel = gaussian_kernel(sigma, x.shape[1], x.device, x.dtype)
    pad = kernel.shape[-1] // 2
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel, groups=x.shape[1])


def ssim_map(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Per-pixel SSIM with a Gaussian window (Wang et al. 2004 constants)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = gaussian_blur(x, sigma), gaussian_blur(y, sigma)
    var_x = gaussian_blur(x * x, sigma) - mu_x**2
    var_y = gaussian_blur(y * y, sigma) - mu_y**2
    cov = gaussian_blur(x * y, sigma) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM per sample, shape (B,)."""
    return ssim_map(x, y, data_range=data_range).flatten(1).mean(1)


def pixel_error_map(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Squared error averaged over channels, shape (B, 1, H, W)."""
    return (x - recon).pow(2).mean(1, keepdim=True)


def mse_score(x, recon, **_):
    return (x - recon).pow(2).flatten(1).mean(1)


def l1_score(x, recon, **_):
    return (x - recon).abs().flatten(1).mean(1)


def ssim_score(x, recon, data_range: float = 1.0, **_):
    return 1.0 - ssim(x, recon, data_range)


def hybrid_score(x, recon, alpha: float = 1.0, beta: float = 1.0, data_range: float = 1.0, **_):
    """Seed 002's alpha * L1 + beta * (1 - SSIM)."""
    return alpha * l1_score(x, recon) + beta * ssim_score(x, recon, data_range)


def topk_score(x, recon, fraction: float = 0.05, **_):
    """Mean of the largest `fraction` of pixel errors: small spills drown in a global mean."""
    errors = pixel_error_map(x, recon).flatten(1)
    k = max(1, int(round(fraction * errors.shape[1])))
    return errors.topk(k, dim=1).values.mean(1)


def smooth_max_score(x, recon, sigma: float = 1.0, **_):
    """Max of the Gaussian-smoothed error map: spills are local, sensor noise is not."""
    return gaussian_blur(pixel_error_map(x, recon), sigma).flatten(1).amax(1)


def centred_max_score(x, recon, sigma: float = 1.0, **_):
    """smooth_max after removing each crop's per-channel median residual.

    A global lighting or colour shift moves the whole residual map; a spill moves only part of it,
    so the median keeps the first out of the score and leaves the second in.
    """
    r = x - recon
    r = r - r.flatten(2).median(2).values[..., None, None]
    return gaussian_blur(r.pow(2).mean(1, keepdim=True), sigma).flatten(1).amax(1)


def elbo_score(x, recon, mu=None, logvar=None, **_):
    """Negative ELBO per sample: summed squared error plus KL to the unit Gaussian."""
    if mu is None or logvar is None:
        raise ValueError("the 'elbo' score needs a variational model (mu and logvar)")
    recon_term = (x - recon).pow(2).flatten(1).sum(1)
    return recon_term + kl_divergence(mu, logvar)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) per sample."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(1)


def knn_mean_score(x, recon, distances=None, **_):
    """Mean distance to the k nearest bank crops."""
    return _distances(distances, "knn_mean").mean(1)


def knn_kth_score(x, recon, distances=None, **_):
    """Distance to the k-th nearest bank crop: blind to a few near-duplicates of a spill in the bank."""
    return _distances(distances, "knn_kth")[:, -1]


def _distances(distances, name):
    if distances is None:
        raise ValueError(f"the {name!r} score needs a distance detector (the knn variant)")
    return distances


def anomaly_map(anomaly_logits, name: str) -> torch.Tensor:
    if anomaly_logits is None:
        raise ValueError(f"the {name!r} score needs a discriminative head's anomaly map (the draem variant)")
    return torch.sigmoid(anomaly_logits.float())


def map_max_score(x, recon, anomaly_logits=None, sigma: float = 1.0, **_):
    """Max of the Gaussian-smoothed anomaly map: one confident pixel is not a defect, a patch is."""
    return gaussian_blur(anomaly_map(anomaly_logits, "map_max"), sigma).flatten(1).amax(1)


def map_topk_score(x, recon, anomaly_logits=None, fraction: float = 0.05, sigma: float = 1.0, **_):
    """Mean of the largest ``fraction`` of the smoothed anomaly map's pixels."""
    values = gaussian_blur(anomaly_map(anomaly_logits, "map_topk"), sigma).flatten(1)
    k = max(1, int(round(fraction * values.shape[1])))
    return values.topk(k, dim=1).values.mean(1)


def mahalanobis_score(x, recon, mahalanobis=None, **_):
    """Mahalanobis distance of the crop's features to the train crops' Gaussian."""
    if mahalanobis is None:
        raise ValueError("the 'mahalanobis' score needs a fitted feature density (the cutpaste variant)")
    return mahalanobis


SCORE_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse_score,
    "l1": l1_score,
    "ssim": ssim_score,
    "hybrid": hybrid_score,
    "topk": topk_score,
    "smooth_max": smooth_max_score,
    "centred_max": centred_max_score,
    "elbo": elbo_score,
    "knn_mean": knn_mean_score,
    "knn_kth": knn_kth_score,
    "map_max": map_max_score,
    "map_topk": map_topk_score,
    "mahalanobis": mahalanobis_score,
}


def compute_scores(
    x: torch.Tensor,
    recon: torch.Tensor,
    score_types,
    score_params: dict | None = None,
    mu: torch.Tensor | None = None,
    logvar: torch.Tensor | None = None,
    perceptual=None,
    data_range: float = 1.0,
    distances: torch.Tensor | None = None,
    anomaly_logits: torch.Tensor | None = None,
    mahalanobis: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Every requested score for one batch. ``score_params`` overrides the defaults by score name."""
    score_params = score_params or {}
    out = {}
    for name in score_types:
        if name == "perceptual":
            if perceptual is None:
                raise ValueError("the 'perceptual' score needs a PerceptualDistance (pretrained weights)")
            out[name] = perceptual(x, recon)
            continue
        if name not in SCORE_FUNCTIONS:
            raise ValueError(f"unknown score {name!r}; valid: {list(SCORE_TYPES)}")
        params = {**DEFAULT_SCORE_PARAMS.get(name, {}), **score_params.get(name, {})}
        out[name] = SCORE_FUNCTIONS[name](x, recon, mu=mu, logvar=logvar, data_range=data_range,
                                          distances=distances, anomaly_logits=anomaly_logits,
                                          mahalanobis=mahalanobis, **params)
    return out
