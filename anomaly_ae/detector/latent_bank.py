"""Latent distance for every autoencoder: how far a crop's code lies from the train crops' codes.

After each epoch a trial encodes a fixed, seeded sample of train crops (the bank) and a second,
disjoint sample (the scale set). A crop then scores by

- ``latent_knn``: the mean distance from its latent to its ``k`` nearest bank latents;
- ``latent_hybrid``: ``latent_knn / median_latent + mse / median_mse``, both medians taken on the
  scale set, so neither term dominates by its units and no validation crop is used to weigh them.

The bank ships in the checkpoint, in half precision (distances are computed in float32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from anomaly_ae.models.neighbours import knn_distances

LATENT_BANK_SIZE = 1024
LATENT_SCALE_SIZE = 256
LATENT_K = 5


@dataclass
class LatentBank:
    bank: torch.Tensor  # (N, D) train latents, float16
    # Medians on the scale set, as 0-d tensors on the bank's device: refreshing the bank after an
    # epoch never makes the host wait for the device.
    latent_scale: torch.Tensor  # median latent_knn
    mse_scale: torch.Tensor  # median mse
    k: int = LATENT_K

    def latent_knn(self, latent: torch.Tensor) -> torch.Tensor:
        return knn_distances(latent.flatten(1), self.bank, self.k)[0].mean(1)

    def scores(self, latent: torch.Tensor, mse: torch.Tensor) -> dict[str, torch.Tensor]:
        d = self.latent_knn(latent)
        return {"latent_knn": d, "latent_hybrid": latent_hybrid(d, mse, self.latent_scale, self.mse_scale)}

    def as_dict(self) -> dict:
        return {"bank": self.bank.cpu(), "latent_scale": self.latent_scale.cpu(), "mse_scale": self.mse_scale.cpu(),
                "k": self.k}

    @classmethod
    def from_dict(cls, d: dict | None, device=None) -> "LatentBank | None":
        if d is None:
            return None
        return cls(*(torch.as_tensor(d[key], device=device) for key in ("bank", "latent_scale", "mse_scale")),
                   int(d["k"]))


def latent_hybrid(latent_knn: torch.Tensor, mse: torch.Tensor, latent_scale, mse_scale) -> torch.Tensor:
    """Both terms in units of their typical value on train crops; a zero scale counts as tiny."""
    def unit(scale):
        return torch.as_tensor(scale, dtype=latent_knn.dtype, device=latent_knn.device).clamp_min(1e-12)
    return latent_knn / unit(latent_scale) + mse / unit(mse_scale)


def bank_indices(n_train: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The bank's and the scale set's train indices: seeded, disjoint, and drawn apart from the
    training generator, so adding the bank leaves a trial's training numbers unchanged."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    scale = min(LATENT_SCALE_SIZE, max(1, n_train // 4))
    return order[scale:scale + LATENT_BANK_SIZE], order[:scale]


def fit_bank(bank_latents: torch.Tensor, scale_latents: torch.Tensor, scale_mse: torch.Tensor,
             k: int = LATENT_K) -> LatentBank:
    bank = bank_latents.flatten(1).to(torch.float16)
    one = torch.ones((), device=bank.device)
    probe = LatentBank(bank, one, one, k)
    return LatentBank(bank, median(probe.latent_knn(scale_latents)), median(scale_mse), k)


def median(values: torch.Tensor) -> torch.Tensor:
    # torch.median returns the lower middle value of an even count; this is the usual median.
    return torch.quantile(values.float(), 0.5)
