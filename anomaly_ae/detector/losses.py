"""Training losses: pixel losses, SSIM, their mixes, the VAE ELBO and a perceptual loss."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_ae.detector.scores import kl_divergence, ssim

LOSS_TYPES = ("mse", "l1", "ssim", "l1_ssim", "mse_ssim", "mse_perceptual")

# torchvision's own checkpoint file names, as they sit in $TORCH_HOME/hub/checkpoints.
PERCEPTUAL_WEIGHT_FILES = {
    "alexnet": "alexnet-owt-7be5be79.pth",
    "vgg16": "vgg16-397923af.pth",
}


class PerceptualWeightsMissing(FileNotFoundError):
    pass


def find_perceptual_weights(backbone: str, weights_path: str | None = None) -> Path:
    """Locate pretrained weights on disk; nothing here downloads."""
    if backbone not in PERCEPTUAL_WEIGHT_FILES:
        raise ValueError(f"unknown perceptual backbone {backbone!r}; valid: {sorted(PERCEPTUAL_WEIGHT_FILES)}")
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise PerceptualWeightsMissing(f"perceptual weights file not found: {path}")
        return path
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = torch_home / "hub" / "checkpoints" / PERCEPTUAL_WEIGHT_FILES[backbone]
    if not path.is_file():
        raise PerceptualWeightsMissing(
            f"the perceptual loss/score needs pretrained {backbone} weights, and none are on disk: "
            f"looked for {path}. Copy torchvision's {PERCEPTUAL_WEIGHT_FILES[backbone]} there "
            f"(or set TORCH_HOME), or set the config key perceptual_weights: /path/to/file.pth. Nothing is downloaded."
        )
    return path


class PerceptualDistance(nn.Module):
    """Per-sample MSE between frozen ImageNet features of x and its reconstruction (seed 004)."""

    def __init__(self, backbone: str = "alexnet", weights_path: str | None = None, layers: int | None = None):
        super().__init__()
        import torchvision

        path = find_perceptual_weights(backbone, weights_path)
        net = getattr(torchvision.models, backbone)(weights=None)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        # Early layers only: the crops are ~32 px, deeper features collapse to 1x1.
        depth = layers or (5 if backbone == "alexnet" else 9)
        self.features = net.features[:depth].eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.features((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return (self._embed(x) - self._embed(recon)).pow(2).flatten(1).mean(1)


def reconstruction_loss(
    x: torch.Tensor,
    recon: torch.Tensor,
    loss: str = "mse",
    ssim_weight: float = 0.5,
    perceptual_weight: float = 0.5,
    perceptual: PerceptualDistance | None = None,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Batch-mean reconstruction loss; mixes are (1 - w) * pixel + w * other."""
    if loss == "mse":
        return F.mse_loss(recon, x)
    if loss == "l1":
        return F.l1_loss(recon, x)
    if loss == "ssim":
        return (1 - ssim(x, recon, data_range)).mean()
    if loss == "l1_ssim":
        return (1 - ssim_weight) * F.l1_loss(recon, x) + ssim_weight * (1 - ssim(x, recon, data_range)).mean()
    if loss == "mse_ssim":
        return (1 - ssim_weight) * F.mse_loss(recon, x) + ssim_weight * (1 - ssim(x, recon, data_range)).mean()
    if loss == "mse_perceptual":
        if perceptual is None:
            raise ValueError("loss 'mse_perceptual' needs a PerceptualDistance")
        return (1 - perceptual_weight) * F.mse_loss(recon, x) + perceptual_weight * perceptual(x, recon).mean()
    raise ValueError(f"unknown loss {loss!r}; valid: {list(LOSS_TYPES)}")


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean binary focal loss (Lin et al. 2017): most pixels are easy normals, so they are down-weighted."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_true) ** gamma).mean()


def kl_loss(mu: torch.Tensor, logvar: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Batch-mean KL, divided by the pixel count so beta is comparable to a per-pixel loss."""
    return kl_divergence(mu, logvar).mean() / n_pixels
