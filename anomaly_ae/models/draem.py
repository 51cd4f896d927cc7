"""Reconstructive + discriminative detector in the manner of DRAEM (Zavrtanik et al., ICCV 2021).

A reconstruction network (one of the harness's autoencoder backbones, without skip connections so that
it cannot copy an anomaly through) learns to restore normal crops into which synthetic anomalies are
pasted; a small U-Net takes the crop beside its reconstruction and outputs per-pixel anomaly logits,
trained to segment what was pasted (``anomaly_ae.detector.synthetic_anomalies``). It learns what "not normal"
looks like, so a defect smoother than its texture, which reconstructs well, is still seen.

Scores: ``map_max`` and ``map_topk`` of the smoothed anomaly map (``anomaly_ae.detector.scores``); the residual
scores of the reconstruction apply too.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from anomaly_ae.models.blocks import PadCrop
from anomaly_ae.models.conv_ae import conv_ae
from anomaly_ae.models.registry import Reconstruction, register_model
from anomaly_ae.models.unet import UNet

BACKBONES = ("conv_ae", "unet_ae")


class ReconstructDiscriminate(nn.Module):
    def __init__(self, reconstructive: nn.Module, discriminative: nn.Module):
        super().__init__()
        self.reconstructive, self.discriminative = reconstructive, discriminative

    def forward(self, x: torch.Tensor) -> Reconstruction:
        out = self.reconstructive(x)
        logits = self.discriminative(torch.cat([x, out.recon], 1)).recon
        return out._replace(anomaly_logits=logits)


# What a sweep searches of draem (search_spaces.spaces.suggest's kinds).
DRAEM_SPACE = {"backbone": ("cat", ["conv_ae", "unet_ae"]), "base_width": ("cat", [16, 32]), "depth": ("int", 2, 3),
               "latent_channels": ("cat", [8, 16, 32, 64]), "disc_width": ("cat", [8, 16, 32]), "disc_depth": ("int", 1, 3)}


@register_model("draem", space=DRAEM_SPACE, extra_scores=("map_max", "map_topk"), training="synthetic_map",
                choices={"backbone": BACKBONES})
def draem(in_channels, height, width, backbone="unet_ae", base_width=32, depth=3, latent_channels=32,
          disc_width=16, disc_depth=2, out_activation="sigmoid"):
    """``latent_channels`` sizes the conv_ae bottleneck; the unet_ae backbone runs without skips."""
    if backbone == "conv_ae":
        reconstructive = conv_ae(in_channels, height, width, base_width=base_width, depth=depth,
                                 latent_channels=latent_channels, batch_norm=True, out_activation=out_activation)
    elif backbone == "unet_ae":
        reconstructive = PadCrop(UNet(in_channels, base_width, depth, False, 0.0, out_activation), 2**depth)
    else:
        raise ValueError(f"draem.backbone: {backbone!r} is not one of {list(BACKBONES)}")
    discriminative = PadCrop(UNet(2 * in_channels, disc_width, disc_depth, True, 0.0, "identity", out_channels=1),
                             2**disc_depth)
    return ReconstructDiscriminate(reconstructive, discriminative)
