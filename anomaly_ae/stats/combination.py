"""A hyper-ensemble: the K best trials of a sweep as one detector.

Each member's judged score is turned into a *surprise*, -log of its tail probability under the member's
own validation normals, and the members' surprises are averaged (Fisher's way of combining p-values).
Within the normals' range the tail probability is the conformal one, (normals >= s, plus one) / (n + 1);
beyond the largest normal it falls on as an exponential tail whose scale is the mean excess of the top
tenth of the normals. Why not ranks (the share of normals below): a rank saturates at 1 for every crop
above all the normals, so under a site shift many pool crops tie at the top and the site rule's
threshold lands on the tie, which flags nothing. The surprise keeps growing with the member's own
excess, in units of that member's tail, so scores on unrelated scales (an MSE, a kNN distance, an
ELBO) still get one equal vote each. The combined score is thresholded like any single score: on
validation normals, or on the site pool by the site rule.
"""
from __future__ import annotations

import numpy as np

TAIL_SHARE = 0.1  # the top tenth of the normals sets a member's tail scale


def tail_surprise(scores: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """-log of each score's tail probability under ``normals`` (conformal inside, exponential beyond)."""
    ref = np.sort(np.asarray(normals, dtype=float))
    scores = np.asarray(scores, dtype=float)
    n = ref.size
    at_or_above = n - np.searchsorted(ref, scores, side="left")
    tail = (at_or_above + 1.0) / (n + 1.0)
    top = ref[min(n - 1, int(np.floor((1 - TAIL_SHARE) * n))):]
    scale = max(float(np.mean(top - top[0])), float(np.std(ref)) * 1e-3, 1e-12)
    beyond = scores > ref[-1]
    tail[beyond] = np.exp(-(scores[beyond] - ref[-1]) / scale) / (n + 1.0)
    return -np.log(tail)


def combine(member_scores: list[np.ndarray], member_normals: list[np.ndarray]) -> np.ndarray:
    """The mean of each member's tail surprise."""
    if not member_scores or len(member_scores) != len(member_normals):
        raise ValueError("an ensemble needs one array of validation normals per member, and at least one member")
    return np.mean([tail_surprise(s, n) for s, n in zip(member_scores, member_normals)], axis=0)
