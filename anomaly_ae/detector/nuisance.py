"""Nuisance perturbations of validation crops: the selection check against a test shift.

Real test crops differ from train crops in lighting, colour, blur and position.
These perturbations are generic and symmetric, not fitted to any dataset:

- gain 1 ± 0.10 and contrast 1 ± 0.10 per crop;
- a colour offset of ± 0.03 per channel;
- a Gaussian blur with sigma drawn from [0, 1] (below 0.3: none);
- a translation of ± 2 px in each direction (border pixels repeated).

They are drawn from a fixed seed, so every trial of a sweep sees the same perturbed crops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from anomaly_ae.detector.scores import gaussian_blur

NUISANCE = {"gain": 0.10, "contrast": 0.10, "colour": 0.03, "blur_sigma_max": 1.0, "shift_px": 2.0}


def perturb_nuisance(images_u8: torch.Tensor, seed: int = 0, strength: dict = NUISANCE) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> the same crops under one random nuisance each, uint8."""
    gen = torch.Generator().manual_seed(seed)
    n, h, w, c = images_u8.shape

    def uniform(*shape, scale):
        return (torch.rand(*shape, generator=gen) * 2 - 1) * scale

    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    x = x * (1 + uniform(n, 1, 1, 1, scale=strength["gain"]))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + uniform(n, 1, 1, 1, scale=strength["contrast"])) + mean
    x = x + uniform(n, c, 1, 1, scale=strength["colour"])
    sigmas = torch.rand(n, generator=gen) * strength["blur_sigma_max"]
    for i in torch.nonzero(sigmas >= 0.3).flatten().tolist():
        x[i:i + 1] = gaussian_blur(x[i:i + 1], float(sigmas[i]))
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = uniform(n, scale=2 * strength["shift_px"] / w)
    theta[:, 1, 2] = uniform(n, scale=2 * strength["shift_px"] / h)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
