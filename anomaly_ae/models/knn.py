"""kNN on pixels: the distance detector, fitted in closed form like ``pca_ae``.

The bank is every training crop in the model's input space (after the trial's size, colour
and normalisation), average-pooled by ``pool`` and, with ``pca_dim`` > 0, projected on that
many principal directions of the bank. A crop scores by its distances to its ``k`` nearest
bank crops (``knn_mean``, ``knn_kth``); its "reconstruction" is the mean of those neighbours,
so the residual scores apply too. The bank is a buffer: it ships inside the checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_ae.models.neighbours import METRICS, knn_distances
from anomaly_ae.models.registry import Reconstruction, register_model

# Half precision halves the bank in memory and in every checkpoint; distances are computed in
# float32 from it, and pixel features need no more than ~3 significant digits.
BANK_DTYPE = torch.float16


class KNNDetector(nn.Module):
    closed_form = True

    def __init__(self, in_channels: int, height: int, width: int, k: int, pool: int, pca_dim: int, metric: str):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"knn.metric: {metric!r} is not one of {list(METRICS)}")
        self.k, self.pool, self.metric = k, pool, metric
        self.shape = (in_channels, height, width)
        pooled = in_channels * -(-height // pool) * -(-width // pool)
        self.pca_dim = min(pca_dim, pooled)
        self.register_buffer("bank", torch.zeros(0, self.pca_dim or pooled, dtype=BANK_DTYPE))
        self.register_buffer("mean", torch.zeros(pooled))
        self.register_buffer("components", torch.zeros(self.pca_dim, pooled))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The bank's length is the train split's, known only after fit: take the saved one's shape.
        saved = state_dict.get(prefix + "bank")
        if saved is not None:
            self.bank = torch.empty_like(saved, dtype=BANK_DTYPE, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return (F.avg_pool2d(x, self.pool, ceil_mode=True) if self.pool > 1 else x).flatten(1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pooled(x)
        return (f - self.mean) @ self.components.T if self.pca_dim else f

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> "KNNDetector":
        flat = self.pooled(x).double()
        self.mean.copy_(flat.mean(0).to(self.mean.dtype))
        if self.pca_dim:
            from anomaly_ae.models.pca_ae import principal_directions

            directions = principal_directions(flat - flat.mean(0), self.pca_dim)
            self.components.zero_()
            self.components[:len(directions)] = directions.to(self.components.dtype)
        self.bank = self.features(x.float()).to(BANK_DTYPE)
        return self

    def forward(self, x: torch.Tensor) -> Reconstruction:
        distances, index = knn_distances(self.features(x), self.bank, self.k, self.metric)
        neighbours = self.bank[index].float().mean(1)  # (B, D) mean of the k nearest bank rows
        if self.pca_dim:
            neighbours = neighbours @ self.components + self.mean
        c, h, w = self.shape
        hp, wp = -(-h // self.pool), -(-w // self.pool)
        recon = neighbours.view(len(x), c, hp, wp)
        if self.pool > 1:
            recon = F.interpolate(recon, size=(h, w), mode="bilinear", align_corners=False)
        return Reconstruction(recon.to(x.dtype), distances=distances)


# Pixels average-pooled by 2 or 4 from the searched image size (a bank of 10k crops at pool 1 and
# 64x64 would be 245 MB in every checkpoint), optionally projected on pca_dim principal directions.
# What a sweep searches of knn (search_spaces.spaces.suggest's kinds).
KNN_SPACE = {"k": ("cat", [1, 3, 5, 10, 20]), "pool": ("cat", [2, 4]), "pca_dim": ("cat", [0, 16, 32, 64, 128]),
             "metric": ("cat", ["l2", "cosine"])}


@register_model("knn", space=KNN_SPACE, seed="classical", fixed_output="identity", closed_form=True,
                extra_scores=("knn_mean", "knn_kth"), choices={"metric": METRICS})
def knn(in_channels, height, width, k=5, pool=2, pca_dim=0, metric="l2"):
    return KNNDetector(in_channels, height, width, k, pool, pca_dim, metric)
