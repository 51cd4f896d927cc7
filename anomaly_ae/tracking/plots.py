"""PNG figures a trial logs (reconstructions, score histogram, ROC). Matplotlib, Agg backend only."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from anomaly_ae.stats.metrics import roc_curve_points  # noqa: E402


def save(fig, path) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def reconstruction_grid(normal_pairs, spill_pairs, path, n: int = 8) -> str:
    """Rows: normal inputs, their reconstructions, spill inputs, their reconstructions."""
    rows = []
    for x, recon in (normal_pairs, spill_pairs):
        rows += [x[:n], recon[:n]]
    fig, axes = plt.subplots(4, n, figsize=(n * 1.2, 4 * 0.9))
    for r, images in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                img = images[c].permute(1, 2, 0).numpy().clip(0, 1)
                ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        axes[r, 0].set_title(["normal", "recon", "spill", "recon"][r], fontsize=7, loc="left")
    return save(fig, path)


def score_histogram(normal, spill, threshold: float, path, title: str = "") -> str:
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.histogram_bin_edges(np.r_[normal, spill], bins=40)
    ax.hist(normal, bins=bins, alpha=0.6, density=True, label=f"normal (n={len(normal)})")
    ax.hist(spill, bins=bins, alpha=0.6, density=True, label=f"spill (n={len(spill)})")
    if np.isfinite(threshold):
        ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel("score")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, path)


def roc_plot(normal, spill, path, max_fpr: float = 0.05) -> str:
    fpr, tpr, _ = roc_curve_points(normal, spill)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, drawstyle="steps-post")
    ax.axvline(max_fpr, color="grey", ls=":", label=f"FPR {max_fpr}")
    ax.set_xlabel("FPR (1 - TNR)")
    ax.set_ylabel("TPR")
    ax.legend(fontsize=7)
    return save(fig, path)
