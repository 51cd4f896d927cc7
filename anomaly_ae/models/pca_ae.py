"""The classical reference as a variant: a PCA autoencoder, fitted in closed form.

PCA is the optimal linear autoencoder (Baldi & Hornik 1989): the top-k principal
directions minimise the squared reconstruction error among all rank-k linear maps.
So a sweep that can pick this variant is never worse than PCA on its own data.
It is fitted once from the training crops, without gradient steps.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from anomaly_ae.models.registry import Reconstruction, register_model

# Above this many rows and columns an exact SVD costs tens of seconds on a CPU; a randomized one
# with a few power iterations is exact to float precision for the leading components here.
EXACT_SVD_LIMIT = 2048


def principal_directions(centred: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k right singular vectors of centred rows (N, D), as rows (<= k, D)."""
    k = min(k, *centred.shape)
    if min(centred.shape) <= EXACT_SVD_LIMIT:
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        return vh[:k]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)  # svd_lowrank draws a random test matrix: keep fits reproducible
    _, _, v = torch.svd_lowrank(centred, q=min(k + 20, *centred.shape), niter=6)
    torch.random.set_rng_state(generator_state)
    return v.T[:k]


class PCAAutoencoder(nn.Module):
    closed_form = True

    def __init__(self, in_channels: int, height: int, width: int, n_components: int):
        super().__init__()
        dim = in_channels * height * width
        self.n_components = min(n_components, dim)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("components", torch.zeros(self.n_components, dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "PCAAutoencoder":
        """Principal directions of ``x`` (N, C, H, W), in the model's input space."""
        flat = x.flatten(1).double()
        self.mean.copy_(flat.mean(0).to(self.mean.dtype))
        directions = principal_directions(flat - flat.mean(0), self.n_components)
        self.components.zero_()
        self.components[:len(directions)] = directions.to(self.components.dtype)
        return self

    def forward(self, x: torch.Tensor) -> Reconstruction:
        code = (x.flatten(1) - self.mean) @ self.components.T
        return Reconstruction((code @ self.components + self.mean).view_as(x), latent=code)


# What a sweep searches of pca_ae (search_spaces.spaces.suggest's kinds).
PCA_AE_SPACE = {"n_components": ("cat", [4, 8, 16, 32, 64, 128])}


@register_model("pca_ae", space=PCA_AE_SPACE, seed="classical", fixed_output="identity", closed_form=True)
def pca_ae(in_channels, height, width, n_components=16):
    return PCAAutoencoder(in_channels, height, width, n_components)
