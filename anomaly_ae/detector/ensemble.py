"""A hyper-ensemble: the K best trials of a sweep as one detector, their judged scores combined by
``anomaly_ae.stats.combination.combine`` (each member's tail surprise under its own validation normals)."""
from __future__ import annotations

import numpy as np
import torch

from anomaly_ae.stats.combination import combine


class Ensemble:
    """Trained members, rebuilt from their checkpoint payloads, scoring uint8 crops together."""

    def __init__(self, payloads: list[dict], device: torch.device | None = None):
        from anomaly_ae.detector.checkpoints import load_trained

        self.configs = [p["config"] for p in payloads]
        self.states = [load_trained(p, device) for p in payloads]
        self.normals = [judged_val_scores(p, "normal") for p in payloads]

    def member_scores(self, images_u8: torch.Tensor) -> list[np.ndarray]:
        from anomaly_ae.detector.validation import score_images

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
