"""Exact k-nearest-neighbour distances in torch, chunked so memory stays bounded.

Used by the ``knn`` variant (a bank of train crops), by the latent-distance score of every
autoencoder (a bank of train latents) and nowhere else. Exact search is a matmul per chunk;
``run_search.py benchmark-knn`` measures it at 10k and 100k crops (docs/results.md, "Distance detectors: the kNN bank").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("l2", "cosine")


def pairwise_distances(queries: torch.Tensor, bank: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """(Q, D) x (N, D) -> (Q, N) distances: Euclidean, or cosine distance 1 - cos."""
    if metric == "l2":
        # ||q||^2 - 2 q.b + ||b||^2 as one matmul; clamped because rounding can make it slightly negative.
        sq = queries.pow(2).sum(1, keepdim=True) - 2 * queries @ bank.T + bank.pow(2).sum(1)
        return sq.clamp_min_(0).sqrt_()
    if metric == "cosine":
        return 1 - F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    raise ValueError(f"unknown distance {metric!r}; valid: {list(METRICS)}")


@torch.no_grad()
def knn_distances(queries: torch.Tensor, bank: torch.Tensor, k: int, metric: str = "l2",
                  chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest distances from each query to the bank, ascending, and their bank indices."""
    if len(bank) == 0:
        raise ValueError("the neighbour bank is empty: fit the detector on training crops first")
    k = min(k, len(bank))
    bank = bank.to(queries.device, torch.float32)
    values, indices = [], []
    for start in range(0, len(queries), chunk):
        d = pairwise_distances(queries[start:start + chunk].float(), bank, metric)
        top = d.topk(k, dim=1, largest=False, sorted=True)
        values.append(top.values)
        indices.append(top.indices)
    if not values:
        return queries.new_zeros(0, k), torch.zeros(0, k, dtype=torch.long, device=queries.device)
    return torch.cat(values), torch.cat(indices)
