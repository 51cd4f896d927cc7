"""Seed 004: U-Net autoencoder with switchable skip connections."""
from __future__ import annotations

import torch
import torch.nn as nn

from anomaly_ae.models.blocks import PadCrop, output_activation, widths
from anomaly_ae.models.registry import Reconstruction, register_model


def double_conv(cin: int, cout: int, dropout: float) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
              nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    def __init__(self, in_channels: int, base_width: int, depth: int, skips: bool, dropout: float, out_activation: str,
                 out_channels: int | None = None):
        super().__init__()
        ws = widths(base_width, depth + 1)
        self.skips = skips
        self.inc = double_conv(in_channels, ws[0], 0.0)
        self.down = nn.ModuleList(double_conv(ws[i], ws[i + 1], dropout) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(ws[i + 1], ws[i], 2, stride=2) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(
            double_conv(ws[i] * (2 if skips else 1), ws[i], 0.0) for i in reversed(range(depth))
        )
        self.head = nn.Sequential(nn.Conv2d(ws[0], out_channels or in_channels, 1), output_activation(out_activation))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        feats = [self.inc(x)]
        for down in self.down:
            feats.append(down(self.pool(feats[-1])))
        h = feats.pop()
        latent = h.flatten(1)
        for up, dec in zip(self.up, self.dec):
            h = up(h)
            skip = feats.pop()
            h = dec(torch.cat([h, skip], 1) if self.skips else h)
        return Reconstruction(self.head(h), latent=latent)


# What a sweep searches of unet_ae (search_spaces.spaces.suggest's kinds).
UNET_AE_SPACE = {"base_width": ("cat", [16, 32]), "depth": ("int", 2, 3), "skips": ("bool",),
                 "dropout": ("float", 0.0, 0.5)}


@register_model("unet_ae", space=UNET_AE_SPACE, seed="004")
def unet_ae(in_channels, height, width, base_width=32, depth=3, skips=True, dropout=0.0, out_activation="identity"):
    return PadCrop(UNet(in_channels, base_width, depth, skips, dropout, out_activation), 2**depth)
