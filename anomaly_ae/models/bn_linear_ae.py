"""Seed 002: BatchNorm conv autoencoder with a linear bottleneck and tanh output."""
from __future__ import annotations

import torch.nn as nn

from anomaly_ae.models.blocks import PadCrop, conv_block, bottleneck_grid, output_activation, widths
from anomaly_ae.models.conv_ae import SequentialAE
from anomaly_ae.models.registry import register_model


# What a sweep searches of bn_linear_ae (search_spaces.spaces.suggest's kinds).
BN_LINEAR_AE_SPACE = {"base_width": ("cat", [16, 32, 64]), "depth": ("int", 2, 4),
                      "latent_dim": ("cat", [32, 64, 128, 256, 512]), "dropout": ("float", 0.0, 0.3)}


@register_model("bn_linear_ae", space=BN_LINEAR_AE_SPACE, seed="002")
def bn_linear_ae(in_channels, height, width, base_width=32, depth=3, latent_dim=512, dropout=0.0,
                 out_activation="tanh"):
    ws = widths(base_width, depth)
    fh, fw = bottleneck_grid(height, width, depth)
    flat = ws[-1] * fh * fw
    encoder = nn.Sequential(
        *[conv_block(cin, cout, 2, batch_norm=True) for cin, cout in zip([in_channels] + ws[:-1], ws)],
        nn.Flatten(),
        *([nn.Dropout(dropout)] if dropout > 0 else []),
        nn.Linear(flat, latent_dim),
    )
    dec: list[nn.Module] = [nn.Linear(latent_dim, flat), nn.Unflatten(1, (ws[-1], fh, fw))]
    outs = ws[::-1][1:] + [in_channels]
    for i, (cin, cout) in enumerate(zip(ws[::-1], outs)):
        dec.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1))
        if i < depth - 1:
            dec += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    dec.append(output_activation(out_activation))
    return PadCrop(SequentialAE(encoder, nn.Sequential(*dec)), 2**depth)
