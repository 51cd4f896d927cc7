"""Synthetic anomalies pasted into normal crops on the fly: what the DRAEM- and CutPaste-style families
learn "not normal" from.

A recipe is a mask shape, a fill and their ranges. Masks: ``perlin`` (thresholded Perlin gradient
noise at two lattice sizes, the irregular regions of DRAEM), ``blob`` (a rotated ellipse) or ``scar``
(a thin stroke, CutPaste's scar). Fills, each from the batch itself (no external data, no pretrained
weights): ``crop`` (another crop of the batch, flipped and re-lit), ``colour`` (a plain colour),
``brightness`` (the crop darker or brighter: a stain), ``blur`` (the crop blurred), ``shift`` (the crop
displaced: a cut-paste), or ``mixed`` (one of them per crop). A masked pixel becomes
``(1 - opacity) * x + opacity * fill``.

Every number is drawn from the caller's ``torch.Generator`` on the crops' device: no host sync, and
the same seed gives the same anomalies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from anomaly_ae.detector.scores import gaussian_blur

SYNTHETIC_MASKS = ("perlin", "blob", "scar")
SYNTHETIC_FILLS = ("crop", "colour", "brightness", "blur", "shift", "mixed")
_SINGLE_FILLS = SYNTHETIC_FILLS[:-1]


@dataclass(frozen=True)
class AnomalyRecipe:
    """What a trial's synthetic anomalies look like; the config keys are ``synthetic_<field>``."""

    mask: str = "perlin"
    fill: str = "mixed"
    area_min: float = 0.02  # share of the crop's pixels a mask covers, drawn per crop in [min, max]
    area_max: float = 0.15
    opacity_min: float = 0.5  # opacity drawn per crop in [opacity_min, 1]
    # Gaussian blur of the mask's edge in px (0: a hard edge). Real defects rarely have razor edges, and a
    # hard one is a cue a discriminator can learn instead of the content.
    edge_sigma: float = 1.0
    share: float = 0.5  # share of a batch's crops that get an anomaly (the segmentation family)

    def __post_init__(self):
        if self.mask not in SYNTHETIC_MASKS:
            raise ValueError(f"synthetic_mask: {self.mask!r} is not one of {list(SYNTHETIC_MASKS)}")
        if self.fill not in SYNTHETIC_FILLS:
            raise ValueError(f"synthetic_fill: {self.fill!r} is not one of {list(SYNTHETIC_FILLS)}")
        if not 0 < self.area_min <= self.area_max <= 1:
            raise ValueError(f"synthetic_area_min {self.area_min} and synthetic_area_max {self.area_max}: "
                             "need 0 < min <= max <= 1")
        if self.edge_sigma < 0:
            raise ValueError(f"synthetic_edge_sigma: {self.edge_sigma} must be >= 0")
        if not 0 <= self.opacity_min <= 1 or not 0 <= self.share <= 1:
            raise ValueError(f"synthetic_opacity_min {self.opacity_min} and synthetic_share {self.share} "
                             "must lie in [0, 1]")

    @classmethod
    def of(cls, cfg: dict) -> "AnomalyRecipe":
        return cls(**{f.name: cfg[f"synthetic_{f.name}"] for f in fields(cls) if f"synthetic_{f.name}" in cfg})


def _uniform(n: int, lo, hi, generator: torch.Generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def perlin_noise(n: int, height: int, width: int, cell: int, generator: torch.Generator, device) -> torch.Tensor:
    """Perlin gradient noise (n, height, width) on a lattice of ``cell`` px, with a random offset per crop."""
    gy, gx = height // cell + 3, width // cell + 3
    angles = 2 * math.pi * torch.rand(n, gy, gx, generator=generator, device=device)
    gradients = torch.stack([angles.cos(), angles.sin()], -1)  # (n, gy, gx, 2)
    offset = torch.rand(n, 2, generator=generator, device=device)  # a crop never sees the lattice's phase
    ys = (torch.arange(height, device=device) + 0.5) / cell + offset[:, :1]  # (n, H)
    xs = (torch.arange(width, device=device) + 0.5) / cell + offset[:, 1:]  # (n, W)
    y0, x0 = ys.floor().long(), xs.floor().long()
    fy, fx = (ys - y0)[:, :, None], (xs - x0)[:, None, :]
    batch = torch.arange(n, device=device)[:, None, None]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[batch, (y0 + dy)[:, :, None], (x0 + dx)[:, None, :]]  # (n, H, W, 2)
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(fx), fade(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), u)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), u)
    return torch.lerp(top, bottom, v)


def _top_share(values: torch.Tensor, area: torch.Tensor) -> torch.Tensor:
    """1 where a pixel is among the ``area`` share of its crop's largest values (n, 1, H, W)."""
    flat = values.flatten(1)
    k = (area * flat.shape[1]).round().long().clamp(1, flat.shape[1])
    cut = flat.sort(1, descending=True).values.gather(1, (k - 1)[:, None])
    return (flat >= cut).float().view(values.shape[0], 1, *values.shape[-2:])


def _coordinates(n: int, height: int, width: int, generator, device):
    """Pixel coordinates relative to a random centre per crop, rotated by a random angle."""
    cy = _uniform(n, 0, height, generator, device)[:, None, None]
    cx = _uniform(n, 0, width, generator, device)[:, None, None]
    angle = _uniform(n, 0, math.pi, generator, device)[:, None, None]
    y = torch.arange(height, device=device).view(1, -1, 1) + 0.5 - cy
    x = torch.arange(width, device=device).view(1, 1, -1) + 0.5 - cx
    return x * angle.cos() + y * angle.sin(), -x * angle.sin() + y * angle.cos()


def masks(recipe: AnomalyRecipe, n: int, height: int, width: int, generator: torch.Generator, device,
          shape: str | None = None) -> torch.Tensor:
    """Binary masks (n, 1, H, W) of the recipe's shape (or ``shape``), each covering a drawn share of its crop."""
    shape = shape or recipe.mask
    area = _uniform(n, recipe.area_min, recipe.area_max, generator, device)
    if shape == "perlin":
        coarse = perlin_noise(n, height, width, max(4, min(height, width) // 3), generator, device)
        fine = perlin_noise(n, height, width, max(2, min(height, width) // 8), generator, device)
        return _top_share(coarse + 0.5 * fine, area)
    u, v = _coordinates(n, height, width, generator, device)
    if shape == "blob":
        aspect = torch.exp(_uniform(n, -0.7, 0.7, generator, device))[:, None, None]
        radius = (area[:, None, None] * height * width / math.pi).sqrt()
        inside = (u / (radius * aspect)) ** 2 + (v * aspect / radius) ** 2 <= 1
        return inside.float()[:, None]
    if shape == "scar":
        thickness = _uniform(n, 1.0, 3.0, generator, device)[:, None, None]
        length = (area[:, None, None] * height * width / thickness).clamp(max=1.5 * max(height, width))
        inside = (u.abs() <= length / 2) & (v.abs() <= thickness / 2)
        return inside.float()[:, None]
    raise ValueError(f"unknown synthetic mask {shape!r}; valid: {list(SYNTHETIC_MASKS)}")


def fills(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """What a masked pixel is blended towards, per crop of ``x`` (n, C, H, W) in [0, 1]."""
    n, c, device = x.shape[0], x.shape[1], x.device
    if kind == "crop":
        gain = torch.exp(_uniform(n, -0.5, 0.5, generator, device)).view(n, 1, 1, 1)
        return (x.roll(1, 0).flip(-1, -2) * gain).clamp(0, 1)
    if kind == "colour":
        return torch.rand(n, c, 1, 1, generator=generator, device=device).expand_as(x)
    if kind == "brightness":
        up = torch.rand(n, generator=generator, device=device) < 0.5
        gain = torch.where(up, _uniform(n, 1.3, 2.0, generator, device), _uniform(n, 0.2, 0.7, generator, device))
        return (x * gain.view(n, 1, 1, 1)).clamp(0, 1)
    if kind == "blur":
        return gaussian_blur(x, 2.0)
    if kind == "shift":
        # A displaced copy of the crop: at least a quarter of its size away, wrapped by reflection.
        sign = torch.where(torch.rand(n, 2, generator=generator, device=device) < 0.5, -1.0, 1.0)
        move = sign * _uniform(2 * n, 0.5, 1.0, generator, device).view(n, 2)  # in [-1, 1] units: 1 = half a side
        theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, :, 2] = move
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if kind == "mixed":
        options = torch.stack([fills(x, k, generator) for k in _SINGLE_FILLS])  # (K, n, C, H, W)
        pick = torch.randint(len(_SINGLE_FILLS), (n,), generator=generator, device=device)
        return options[pick, torch.arange(n, device=device)]
    raise ValueError(f"unknown synthetic fill {kind!r}; valid: {list(SYNTHETIC_FILLS)}")


def paste(x: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    weight = mask * opacity.view(-1, 1, 1, 1)
    return x * (1 - weight) + fill * weight


def synthesize(x: torch.Tensor, recipe: AnomalyRecipe, generator: torch.Generator, share: float | None = None,
               shape: str | None = None, fill: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops with anomalies pasted into a ``share`` of them, and the masks of what was pasted (n, 1, H, W),
    in [0, 1] (soft at the edge with ``edge_sigma``).

    A crop left normal has an all-zero mask. ``shape`` and ``fill`` override the recipe's."""
    n, _, h, w = x.shape
    share = recipe.share if share is None else share
    chosen = (torch.rand(n, generator=generator, device=x.device) < share).float().view(n, 1, 1, 1)
    mask = masks(recipe, n, h, w, generator, x.device, shape) * chosen
    if recipe.edge_sigma > 0:
        mask = gaussian_blur(mask, recipe.edge_sigma)
    opacity = _uniform(n, recipe.opacity_min, 1.0, generator, x.device)
    return paste(x, mask, fills(x, fill or recipe.fill, generator), opacity).clamp(0, 1), mask
