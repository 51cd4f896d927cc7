"""A review of a generated site pool, done by the generator's own draw: what a person looking at each crop
would mark. For measuring what one review round buys; the harness never reads it."""
from __future__ import annotations

from pathlib import Path

from anomaly_ae.data.site import read_review, write_review
from anomaly_ae.data.synthetic import site_truth


def simulate_review(review: Path, out: Path, seed: int = 0, scale: float = 1.0, limit: int = 40) -> dict:
    """Mark the ``limit`` highest-scored crops not yet decided in ``review`` as the generator drew them."""
    truth = site_truth(seed, scale)
    read = read_review(review, list(truth), Path(review).parent)
    marked, spills = 0, 0
    rows = []
    for name, verdict in read.verdicts.items():
        if not verdict and marked < limit:
            verdict = "spill" if truth[name] else "normal"
            marked, spills = marked + 1, spills + truth[name]
        rows.append((name, read.scores[name], verdict))
    write_review(rows, out)
    return {"marked": marked, "spills": spills, "listed": len(rows)}
