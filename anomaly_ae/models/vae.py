"""Seed 003: variational autoencoders (linear, small conv, big conv)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from anomaly_ae.models.blocks import PadCrop, conv_block, deconv_block, bottleneck_grid, output_activation, widths
from anomaly_ae.models.registry import Reconstruction, register_model


class VAE(nn.Module):
    """Encoder -> (mu, logvar) -> z -> decoder. Samples z in training, uses mu in eval."""

    def __init__(self, encoder: nn.Module, enc_dim: int, latent_dim: int, decoder: nn.Module, kl_beta: float):
        super().__init__()
        self.encoder = encoder
        self.to_stats = nn.Linear(enc_dim, 2 * latent_dim)
        self.decoder = decoder
        self.kl_beta = kl_beta

    def forward(self, x):
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return Reconstruction(self.decoder(z), mu=mu, logvar=logvar, latent=mu)


# What a sweep searches of linear_vae (search_spaces.spaces.suggest's kinds).
LINEAR_VAE_SPACE = {"hidden_dim": ("cat", [256, 512, 1024]), "latent_dim": ("cat", [8, 16, 32, 64]),
                    "kl_beta": ("logfloat", 1e-3, 4.0)}


@register_model("linear_vae", space=LINEAR_VAE_SPACE, seed="003", variational=True)
def linear_vae(in_channels, height, width, hidden_dim=512, latent_dim=32, kl_beta=1.0, dropout=0.0,
               out_activation="sigmoid"):
    n = in_channels * height * width
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(n, hidden_dim), nn.ReLU(inplace=True),
                            *([nn.Dropout(dropout)] if dropout > 0 else []))
    decoder = nn.Sequential(
        nn.Linear(latent_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, n),
        nn.Unflatten(1, (in_channels, height, width)), output_activation(out_activation),
    )
    return VAE(encoder, hidden_dim, latent_dim, decoder, kl_beta)


def _conv_vae(in_channels, height, width, base_width, depth, latent_dim, kl_beta, dropout, out_activation):
    ws = widths(base_width, depth)
    fh, fw = bottleneck_grid(height, width, depth)
    flat = ws[-1] * fh * fw
    encoder = nn.Sequential(
        *[conv_block(cin, cout, 2, batch_norm=True, dropout=dropout) for cin, cout in zip([in_channels] + ws[:-1], ws)],
        nn.Flatten(),
    )
    decoder = nn.Sequential(
        nn.Linear(latent_dim, flat), nn.Unflatten(1, (ws[-1], fh, fw)),
        *[deconv_block(cin, cout, batch_norm=True) for cin, cout in zip(ws[::-1], ws[::-1][1:] + [ws[0]])],
        nn.Conv2d(ws[0], in_channels, 3, padding=1),
        output_activation(out_activation),
    )
    return PadCrop(VAE(encoder, flat, latent_dim, decoder, kl_beta), 2**depth)


# What a sweep searches of small_conv_vae (search_spaces.spaces.suggest's kinds).
SMALL_CONV_VAE_SPACE = {"base_width": ("cat", [16, 32, 64]), "latent_dim": ("cat", [16, 32, 64, 128]),
                        "kl_beta": ("logfloat", 1e-3, 4.0)}


@register_model("small_conv_vae", space=SMALL_CONV_VAE_SPACE, seed="003", variational=True)
def small_conv_vae(in_channels, height, width, base_width=32, depth=3, latent_dim=64, kl_beta=1.0, dropout=0.0,
                   out_activation="sigmoid"):
    return _conv_vae(in_channels, height, width, base_width, depth, latent_dim, kl_beta, dropout, out_activation)


# What a sweep searches of big_conv_vae (search_spaces.spaces.suggest's kinds).
BIG_CONV_VAE_SPACE = {"base_width": ("cat", [32, 64]), "latent_dim": ("cat", [64, 128, 256]),
                      "kl_beta": ("logfloat", 1e-3, 4.0)}


@register_model("big_conv_vae", space=BIG_CONV_VAE_SPACE, seed="003", variational=True)
def big_conv_vae(in_channels, height, width, base_width=64, depth=4, latent_dim=128, kl_beta=1.0, dropout=0.0,
                 out_activation="sigmoid"):
    return _conv_vae(in_channels, height, width, base_width, depth, latent_dim, kl_beta, dropout, out_activation)


def kl_beta_of(model: nn.Module) -> float:
    """The KL weight of a (possibly wrapped) VAE, or nan for other models."""
    for module in model.modules():
        if isinstance(module, VAE):
            return module.kl_beta
    return math.nan
