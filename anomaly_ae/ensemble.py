"""A hyper-ensemble: the K best trials of a sweep as one detector.

Each member scores a crop by its own judged score; that score is rank-normalised on the
member's own validation normals (the share of them it exceeds, ties counting half), and the
members' ranks are averaged. Ranks, not z-scores, because the members' scores live on
unrelated scales with heavy, unequal right tails (an MSE, a kNN distance, a negative ELBO):
a z-score lets the heaviest-tailed member decide alone, while a rank gives each member one
equal vote. What a rank loses, the size of an excess beyond every normal, does not move a
threshold that keeps 95% of normals below it. The combined score is then thresholded like
any single score: on validation normals, or on the site pool by the site rule.
"""
from __future__ import annotations

import numpy as np
import torch


def rank_normalise(scores: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """The share of ``normals`` below each score, ties counting half (a mid-rank ECDF in [0, 1])."""
    ref = np.sort(np.asarray(normals, dtype=float))
    scores = np.asarray(scores, dtype=float)
    below = np.searchsorted(ref, scores, side="left")
    at_or_below = np.searchsorted(ref, scores, side="right")
    return (below + 0.5 * (at_or_below - below)) / len(ref)


def combine(member_scores: list[np.ndarray], member_normals: list[np.ndarray]) -> np.ndarray:
    """The mean of each member's rank-normalised scores."""
    if not member_scores or len(member_scores) != len(member_normals):
        raise ValueError("an ensemble needs one array of validation normals per member, and at least one member")
    return np.mean([rank_normalise(s, n) for s, n in zip(member_scores, member_normals)], axis=0)


class Ensemble:
    """Trained members, rebuilt from their checkpoint payloads, scoring uint8 crops together."""

    def __init__(self, payloads: list[dict], device: torch.device | None = None):
        from anomaly_ae.checkpoints import load_trained

        self.configs = [p["config"] for p in payloads]
        self.states = [load_trained(p, device) for p in payloads]
        self.normals = [judged_val_scores(p, "normal") for p in payloads]

    def member_scores(self, images_u8: torch.Tensor) -> list[np.ndarray]:
        from anomaly_ae.validation import score_images

        return [score_images(state, cfg, images_u8)[0][cfg["score"]] for state, cfg in zip(self.states, self.configs)]

    def score(self, images_u8: torch.Tensor) -> np.ndarray:
        return combine(self.member_scores(images_u8), self.normals)


def judged_val_scores(payload: dict, split: str) -> np.ndarray:
    """A member's stored validation scores of one split, by the score it was judged by."""
    return np.asarray(payload["val_scores"][split][payload["config"]["score"]], dtype=float)


def val_scores_of(payloads: list[dict]) -> dict:
    """The ensemble's validation scores from its members' stored ones: no crop is scored again."""
    normals = [judged_val_scores(p, "normal") for p in payloads]
    return {split: combine([judged_val_scores(p, split) for p in payloads], normals) for split in ("normal", "spill")}
