"""Memory-augmented autoencoder (Gong et al., ICCV 2019): beyond the seeds.

The decoder only sees convex combinations of learned normal prototypes, so a
spill cannot be copied through the bottleneck and reconstructs as a normal well.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_ae.models.blocks import PadCrop, conv_block, deconv_block, output_activation, widths
from anomaly_ae.models.registry import Reconstruction, register_model


class Memory(nn.Module):
    def __init__(self, mem_size: int, dim: int, shrink_threshold: float):
        super().__init__()
        self.items = nn.Parameter(torch.randn(mem_size, dim) / dim**0.5)
        self.shrink_threshold = shrink_threshold

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = z.shape
        q = z.permute(0, 2, 3, 1).reshape(-1, c)
        att = F.softmax(q @ self.items.t(), dim=1)
        if self.shrink_threshold > 0:
            # Hard shrinkage, made differentiable as in the paper.
            shifted = att - self.shrink_threshold
            att = F.relu(shifted) * att / (shifted.abs() + 1e-12)
            att = att / att.sum(1, keepdim=True).clamp_min(1e-12)
        out = (att @ self.items).reshape(b, h, w, c).permute(0, 3, 1, 2)
        entropy = -(att * (att + 1e-12).log()).sum(1).mean()
        return out, entropy


class MemAE(nn.Module):
    def __init__(self, encoder, memory, decoder, entropy_weight):
        super().__init__()
        self.encoder, self.memory, self.decoder = encoder, memory, decoder
        self.entropy_weight = entropy_weight

    def forward(self, x):
        # The latent is the encoder's code before memory addressing: the memory output is a blend of
        # normal prototypes by construction, so its distances would hide what is new in a crop.
        code = self.encoder(x)
        z, entropy = self.memory(code)
        return Reconstruction(self.decoder(z), aux_loss=self.entropy_weight * entropy, latent=code.flatten(1))


# What a sweep searches of memae (search_spaces.spaces.suggest's kinds).
MEMAE_SPACE = {"base_width": ("cat", [16, 32, 64]), "depth": ("int", 2, 4), "latent_channels": ("cat", [16, 32, 64]),
               "mem_size": ("cat", [25, 50, 100, 200]), "shrink_threshold": ("float", 0.0, 0.02),
               "entropy_weight": ("logfloat", 1e-5, 1e-2)}


@register_model("memae", space=MEMAE_SPACE)
def memae(in_channels, height, width, base_width=32, depth=3, latent_channels=64, mem_size=100,
          shrink_threshold=0.0025, entropy_weight=0.0002, out_activation="sigmoid"):
    ws = widths(base_width, depth)
    encoder = nn.Sequential(
        *[conv_block(cin, cout, 2, batch_norm=True) for cin, cout in zip([in_channels] + ws[:-1], ws)],
        nn.Conv2d(ws[-1], latent_channels, 1),
    )
    decoder = nn.Sequential(
        nn.Conv2d(latent_channels, ws[-1], 1), nn.ReLU(inplace=True),
        *[deconv_block(cin, cout, batch_norm=True) for cin, cout in zip(ws[::-1], ws[::-1][1:] + [ws[0]])],
        nn.Conv2d(ws[0], in_channels, 3, padding=1),
        output_activation(out_activation),
    )
    return PadCrop(MemAE(encoder, Memory(mem_size, latent_channels, shrink_threshold), decoder, entropy_weight), 2**depth)
