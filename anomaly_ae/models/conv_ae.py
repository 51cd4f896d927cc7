"""Plain convolutional autoencoders: seed 000 and the three nets of seed 001."""
from __future__ import annotations

import torch.nn as nn

from anomaly_ae.models.blocks import PadCrop, conv_block, deconv_block, output_activation, widths
from anomaly_ae.models.registry import Reconstruction, register_model


class SequentialAE(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x):
        z = self.encoder(x)
        return Reconstruction(self.decoder(z), latent=z.flatten(1))


# What a sweep searches of conv_ae (search_spaces.spaces.suggest's kinds).
CONV_AE_SPACE = {"base_width": ("cat", [16, 32, 64]), "depth": ("int", 2, 4),
                 "latent_channels": ("cat", [4, 8, 16, 32, 64]), "batch_norm": ("bool",), "dropout": ("float", 0.0, 0.3)}


@register_model("conv_ae", space=CONV_AE_SPACE, seed="000")
def conv_ae(in_channels, height, width, base_width=32, depth=3, latent_channels=16,
            batch_norm=False, dropout=0.0, out_activation="sigmoid"):
    """Stride-2 conv encoder, 1x1 conv bottleneck, transposed-conv decoder."""
    ws = widths(base_width, depth)
    encoder = nn.Sequential(
        *[conv_block(cin, cout, 2, batch_norm, dropout) for cin, cout in zip([in_channels] + ws[:-1], ws)],
        nn.Conv2d(ws[-1], latent_channels, 1),
    )
    decoder = nn.Sequential(
        nn.Conv2d(latent_channels, ws[-1], 1),
        nn.ReLU(inplace=True),
        *[deconv_block(cin, cout, batch_norm, dropout) for cin, cout in zip(ws[::-1], ws[::-1][1:] + [ws[0]])],
        nn.Conv2d(ws[0], in_channels, 3, padding=1),
        output_activation(out_activation),
    )
    return PadCrop(SequentialAE(encoder, decoder), 2**depth)


def _upsample_ae(in_channels, base_width, depth, decoder_relu, dropout, out_activation):
    # Seed 001, net 1 (and its Sequential twin, net 3): pairs of 3x3 convs, the
    # second of each pair with stride 2; nearest upsampling then one conv per level.
    ws = widths(base_width, depth)
    enc: list[nn.Module] = []
    cin = in_channels
    for i, w in enumerate(ws):
        relu = i < depth - 1  # the write-up drops ReLU on the deepest level
        enc += [nn.Conv2d(cin, w, 3, padding=1)] + ([nn.ReLU(inplace=True)] if relu else [])
        enc += [nn.Conv2d(w, w, 3, stride=2, padding=1)] + ([nn.ReLU(inplace=True)] if relu else [])
        cin = w
    enc.append(nn.Conv2d(ws[-1], ws[-1], 3, padding=1))
    if dropout > 0:
        enc.append(nn.Dropout2d(dropout))
    dec: list[nn.Module] = []
    outs = ws[::-1][1:] + [in_channels]
    for i, (cin, cout) in enumerate(zip(ws[::-1], outs)):
        dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1)]
        if decoder_relu and i < depth - 1:
            dec.append(nn.ReLU(inplace=True))
    dec.append(output_activation(out_activation))
    return PadCrop(SequentialAE(nn.Sequential(*enc), nn.Sequential(*dec)), 2**depth)


# What a sweep searches of upsample_ae (search_spaces.spaces.suggest's kinds).
UPSAMPLE_AE_SPACE = {"base_width": ("cat", [16, 32, 64]), "depth": ("int", 2, 4), "decoder_relu": ("bool",),
                     "dropout": ("float", 0.0, 0.3)}


@register_model("upsample_ae", space=UPSAMPLE_AE_SPACE, seed="001")
def upsample_ae(in_channels, height, width, base_width=32, depth=3, decoder_relu=True, dropout=0.0,
                out_activation="identity"):
    """Stride-2 convs with nearest upsampling, ReLU decoder (seed 001, net 1 generalised)."""
    return _upsample_ae(in_channels, base_width, depth, decoder_relu, dropout, out_activation)


# What a sweep searches of upsample_sigmoid_ae (search_spaces.spaces.suggest's kinds).
UPSAMPLE_SIGMOID_AE_SPACE = {"base_width": ("cat", [16, 32, 64]), "depth": ("int", 2, 4)}


@register_model("upsample_sigmoid_ae", space=UPSAMPLE_SIGMOID_AE_SPACE, seed="001", fixed_output="sigmoid")
def upsample_sigmoid_ae(in_channels, height, width, base_width=32, depth=3, dropout=0.0):
    """Seed 001's sigmoid net as written: linear decoder convs, sigmoid output."""
    return _upsample_ae(in_channels, base_width, depth, False, dropout, "sigmoid")


# What a sweep searches of maxpool_ae (search_spaces.spaces.suggest's kinds).
MAXPOOL_AE_SPACE = {"base_width": ("cat", [8, 16, 32]), "depth": ("int", 2, 4),
                    "bottleneck_channels": ("cat", [4, 8, 16, 32])}


@register_model("maxpool_ae", space=MAXPOOL_AE_SPACE, seed="001")
def maxpool_ae(in_channels, height, width, base_width=16, depth=3, bottleneck_channels=16, dropout=0.0,
               out_activation="sigmoid"):
    """Seed 001, net 2: conv + maxpool encoder, 1x1 bottleneck, transposed-conv decoder."""
    ws = widths(base_width, depth)
    enc: list[nn.Module] = []
    for cin, cout in zip([in_channels] + ws[:-1], ws):
        enc += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    enc += [nn.Conv2d(ws[-1], bottleneck_channels, 1), nn.ReLU(inplace=True)]
    if dropout > 0:
        enc.append(nn.Dropout2d(dropout))
    dec: list[nn.Module] = []
    outs = ws[::-1]
    ins = [bottleneck_channels] + outs[:-1]
    for i, (cin, cout) in enumerate(zip(ins, outs)):
        last = i == depth - 1
        dec.append(nn.ConvTranspose2d(cin, in_channels if last else cout, 3, stride=2, padding=1, output_padding=1))
        if not last:
            dec.append(nn.ReLU(inplace=True))
    dec.append(output_activation(out_activation))
    return PadCrop(SequentialAE(nn.Sequential(*enc), nn.Sequential(*dec)), 2**depth)
