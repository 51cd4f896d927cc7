"""Self-supervised classifier in the manner of CutPaste (Li et al., CVPR 2021), 3-way, from scratch.

A small CNN learns to tell normal crops from two kinds of synthetic anomaly made of the crops
themselves (``anomaly_ae.detector.synthetic_anomalies``: the trial's recipe, by default a displaced copy of the
crop under a Perlin mask, and a thin coloured scar). The classifier is only the means: after each epoch
a Gaussian is fitted in closed form to the features of train crops (Ledoit-Wolf shrinkage), and a crop
scores by the Mahalanobis distance of its features to it (``mahalanobis``). Mean and precision are
buffers, so they ship in the checkpoint. It reconstructs nothing: the residual scores do not apply.

The features are each encoder stage's channels pooled over positions, side by side (as PaDiM combines
layers): a small defect changes the early, fine stages more than the last, coarse one the classifier
reads. ``density_features="moments"`` (the default) pools by mean and standard deviation, since a
defect that leaves a channel's mean alone can still change how much it varies across the crop;
"stages" pools by the mean alone and "last" keeps the final stage's mean, as weights saved before
each choice do. Each was chosen on validation of five data sets (docs/results.md §15, §16).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from anomaly_ae.models.blocks import conv_block, widths
from anomaly_ae.models.registry import Reconstruction, register_model

CLASSES = 3  # normal, the recipe's anomaly, a scar
DENSITY_FEATURES = ("moments", "stages", "last")


def ledoit_wolf(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Ledoit-Wolf shrunk covariance of rows (n, d), as scikit-learn's LedoitWolf; no host sync."""
    n, d = features.shape
    mean = features.mean(0)
    x = features - mean
    cov = x.T @ x / n
    mu = cov.diagonal().sum() / d
    x2 = x * x
    beta_ = (x2.T @ x2).sum() / n
    delta_ = (cov * cov).sum()
    beta = (beta_ - delta_) / (d * n)
    delta = (delta_ - 2 * mu * cov.diagonal().sum() + d * mu * mu) / d
    beta = torch.minimum(beta, delta)
    shrinkage = torch.where(delta > 0, beta / delta.clamp_min(1e-30), torch.zeros_like(delta))
    return mean, (1 - shrinkage) * cov + shrinkage * mu * torch.eye(d, device=features.device, dtype=features.dtype)


class CutPasteClassifier(nn.Module):
    def __init__(self, in_channels: int, base_width: int, depth: int, head_width: int,
                 density_features: str = "moments"):
        super().__init__()
        ws = widths(base_width, depth)
        self.encoder = nn.Sequential(
            *[nn.Sequential(conv_block(cin, cout, 1, batch_norm=True), conv_block(cout, cout, 2, batch_norm=True))
              for cin, cout in zip([in_channels] + ws[:-1], ws)])
        self.head = nn.Sequential(nn.Linear(ws[-1], head_width), nn.BatchNorm1d(head_width), nn.ReLU(inplace=True),
                                  nn.Linear(head_width, CLASSES))
        self.density_features = density_features
        self.stage_widths = ws
        dim = self.density_width(density_features)
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("precision", torch.zeros(dim, dim))

    def density_width(self, density_features: str) -> int:
        return {"moments": 2 * sum(self.stage_widths), "stages": sum(self.stage_widths),
                "last": self.stage_widths[-1]}[density_features]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Weights saved with an earlier density (its width tells which) score as they did.
        mean = state_dict.get(prefix + "feature_mean")
        if mean is not None and mean.numel() != self.feature_mean.numel():
            saved = [name for name in DENSITY_FEATURES if self.density_width(name) == mean.numel()]
            if saved:
                self.density_features, dim = saved[0], mean.numel()
                self.feature_mean = torch.zeros(dim, dtype=self.feature_mean.dtype, device=self.feature_mean.device)
                self.precision = torch.zeros(dim, dim, dtype=self.precision.dtype, device=self.precision.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def fit_density(self, features: torch.Tensor) -> None:
        mean, cov = ledoit_wolf(features.double())
        self.feature_mean.copy_(mean.to(self.feature_mean.dtype))
        self.precision.copy_(torch.linalg.pinv(cov, hermitian=True).to(self.precision.dtype))

    def forward(self, x: torch.Tensor) -> Reconstruction:
        pooled, spread, h = [], [], x
        for stage in self.encoder:
            h = stage(h)
            pooled.append(h.mean((2, 3)))
            if self.density_features == "moments":
                spread.append(h.std((2, 3), correction=0))
        features = pooled[-1] if self.density_features == "last" else torch.cat(pooled + spread, 1)
        centred = features.float() - self.feature_mean
        distance = ((centred @ self.precision) * centred).sum(1).clamp_min(0).sqrt()
        return Reconstruction(x, latent=features, class_logits=self.head(pooled[-1]), mahalanobis=distance)


# What a sweep searches of cutpaste (search_spaces.spaces.suggest's kinds).
CUTPASTE_SPACE = {"base_width": ("cat", [16, 32, 64]), "depth": ("int", 2, 4), "head_width": ("cat", [64, 128, 256]),
                  "density_features": ("cat", list(DENSITY_FEATURES))}


@register_model("cutpaste", space=CUTPASTE_SPACE, fixed_output="identity", extra_scores=("mahalanobis",), training="synthetic_class",
                residual_scores=False, choices={"density_features": DENSITY_FEATURES})
def cutpaste(in_channels, height, width, base_width=32, depth=3, head_width=128, density_features="moments"):
    return CutPasteClassifier(in_channels, base_width, depth, head_width, density_features)
