"""Layers shared by several variants."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

OUTPUT_ACTIVATIONS = ("identity", "sigmoid", "tanh")


def output_activation(name: str) -> nn.Module:
    if name == "identity":
        return nn.Identity()
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown out_activation {name!r}; valid: {list(OUTPUT_ACTIVATIONS)}")


def padded_size(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


class PadCrop(nn.Module):
    """Pads the input to a multiple of the total stride and crops the output back.

    Crops are 30-32 x 44-52 px, rarely a power of two; padding lets every variant
    take any (H, W) without per-size architecture changes.
    """

    def __init__(self, inner: nn.Module, multiple: int):
        super().__init__()
        self.inner = inner
        self.multiple = multiple

    def forward(self, x: torch.Tensor):
        h, w = x.shape[-2:]
        ph, pw = padded_size(h, self.multiple) - h, padded_size(w, self.multiple) - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        out = self.inner(x)
        return out._replace(recon=out.recon[..., :h, :w])


def _with_activation(layer: nn.Module, cout: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    layers = [layer] + ([nn.BatchNorm2d(cout)] if batch_norm else []) + [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, *([nn.Dropout2d(dropout)] if dropout > 0 else []))


def conv_block(cin: int, cout: int, stride: int = 1, batch_norm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)
    return _with_activation(conv, cout, batch_norm, dropout)


def deconv_block(cin: int, cout: int, batch_norm: bool = False, dropout: float = 0.0) -> nn.Sequential:
    deconv = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=not batch_norm)
    return _with_activation(deconv, cout, batch_norm, dropout)


def bottleneck_grid(height: int, width: int, depth: int) -> tuple[int, int]:
    """Feature-map size after ``depth`` stride-2 stages of the padded input."""
    m = 2**depth
    return padded_size(height, m) // m, padded_size(width, m) // m


def widths(base: int, depth: int, cap: int = 512) -> list[int]:
    return [min(base * 2**i, cap) for i in range(depth)]
