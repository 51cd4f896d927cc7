"""uint8 crops -> model input (``Preprocess``, saved with every checkpoint), and the train-time
augmentation and spill corruption, all drawn on the device from the trial's generator."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


# Per-crop standardisation never divides by less than this spread (in [0, 1] pixel units).
PER_CROP_STD_FLOOR = 0.01



@dataclass
class Preprocess:
    """uint8 crops -> model input. Saved with every checkpoint."""

    height: int
    width: int
    grayscale: bool
    normalisation: str
    mean: list[float]
    std: list[float]

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @classmethod
    def fit(cls, cfg: dict, train_u8: torch.Tensor) -> "Preprocess":
        pre = cls(cfg["image_height"], cfg["image_width"], cfg["grayscale"], cfg["normalisation"],
                  [0.0] * 3, [1.0] * 3)
        if cfg["normalisation"] == "dataset":
            sample = train_u8[torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(0))[:2048]]
            x = pre.to_unit(sample.to(train_u8.device))
            pre.mean = x.mean((0, 2, 3)).tolist()
            pre.std = x.std((0, 2, 3)).clamp_min(1e-3).tolist()
        return pre

    def to_unit(self, u8: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, C, height, width) float in [0, 1]."""
        x = u8.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
        if self.grayscale:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        return x

    def _stats(self, x):
        c = x.shape[1]
        mean = torch.tensor(self.mean[:c], device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std[:c], device=x.device).view(1, c, 1, 1)
        return mean, std

    @staticmethod
    def _crop_stats(x):
        # Each crop's own per-channel mean and spread: a global gain or colour cast moves both, and
        # dividing them out leaves what the light falls on. The floor keeps a flat crop's noise small.
        return x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True).clamp_min(PER_CROP_STD_FLOOR)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalisation == "minus_one_one":
            return x * 2 - 1
        if self.normalisation == "dataset":
            mean, std = self._stats(x)
            return (x - mean) / std
        if self.normalisation == "per_crop":
            mean, std = self._crop_stats(x)
            return (x - mean) / std
        return x

    def denormalise(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Model space back to [0, 1] pixels; ``like`` is the [0, 1] input the model was given (per-crop
        standardisation restores that crop's own lighting, so a residual is blind to it)."""
        if self.normalisation == "minus_one_one":
            return (x + 1) / 2
        if self.normalisation == "dataset":
            mean, std = self._stats(x)
            return x * std + mean
        if self.normalisation == "per_crop":
            mean, std = self._crop_stats(like)
            return x * std + mean
        return x

    def as_dict(self) -> dict:
        return asdict(self)



def device_rand(gen: torch.Generator, dev: torch.device, *shape) -> torch.Tensor:
    """Uniform numbers drawn where the generator lives, moved to ``dev`` (a no-op when they match)."""
    return torch.rand(*shape, generator=gen, device=gen.device).to(dev)



def random_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Gaussian blur with its own sigma per crop (sigma ~ 0 leaves a crop as it is), separable.

    Optics differ between sites (focus, dirt on the lens); training on blurred normals keeps a softer
    crop from scoring as an anomaly. The kernel's radius comes from ``max_sigma``, a host number, so
    the step never waits on the device to size it."""
    radius = max(1, int(math.ceil(3 * max_sigma)))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-taps.pow(2) / (2 * sigma.clamp_min(1e-3).to(x.dtype).pow(2)[:, None]))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (n, 2r + 1)
    for dim in (-1, -2):
        pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        windows = F.pad(x, pad, mode="replicate").unfold(dim, 2 * radius + 1, 1)  # (..., h, w, 2r + 1)
        x = (windows * kernel[:, None, None, None, :]).sum(-1)
    return x



def augment(x: torch.Tensor, cfg: dict, gen: torch.Generator) -> torch.Tensor:
    """Batch-level augmentation of [0, 1] images, on whatever device x is on."""
    n, dev = x.shape[0], x.device

    def rand(*shape):
        return device_rand(gen, dev, *shape)

    def uniform(*shape, scale=1.0):
        return (rand(*shape) * 2 - 1).mul_(scale)

    if cfg["hflip"]:
        x = torch.where((rand(n) < 0.5).view(n, 1, 1, 1), x.flip(-1), x)
    if cfg["vflip"]:
        x = torch.where((rand(n) < 0.5).view(n, 1, 1, 1), x.flip(-2), x)
    if cfg["rotation_deg"] > 0 or cfg["shift_px"] > 0:
        angle = uniform(n, scale=math.radians(cfg["rotation_deg"]))
        h, w = x.shape[-2:]
        tx, ty = uniform(n, scale=2 * cfg["shift_px"] / w), uniform(n, scale=2 * cfg["shift_px"] / h)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg["blur_sigma"] > 0:
        x = random_blur(x, rand(n) * cfg["blur_sigma"], cfg["blur_sigma"])
    if cfg["brightness_jitter"] > 0:
        x = x * (1 + uniform(n, 1, 1, 1, scale=cfg["brightness_jitter"]))
    if cfg["contrast_jitter"] > 0:
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + uniform(n, 1, 1, 1, scale=cfg["contrast_jitter"])) + mean
    if cfg["colour_jitter"] > 0:
        x = x + uniform(n, x.shape[1], 1, 1, scale=cfg["colour_jitter"])
    return x.clamp(0, 1)



def corrupt_with_spills(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Paint spill-like bright streaks and specks on a random subset (denoising input).

    Seed 004 painted white circles; this draws a bright vertical wedge with a
    random centre, length, width and brightness, plus a few bright specks.
    """
    n, c, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return device_rand(gen, dev, *shape)

    # No early return when no crop is chosen: that test would sync the host every step.
    chosen = (rand(n) < prob).view(n, 1, 1, 1)

    def r(lo, hi):
        return (rand(n) * (hi - lo) + lo).view(n, 1, 1)

    yy = torch.arange(h, device=dev).view(1, h, 1).float()
    xx = torch.arange(w, device=dev).view(1, 1, w).float()
    top, length = r(-0.1, 0.3) * h, r(0.3, 0.9) * h
    t = ((yy - top) / length).clamp(0, 1)
    half = r(0.06, 0.2) * w * (1 - t) + 0.5
    centre = r(0.3, 0.7) * w
    inside = ((xx - centre).abs() < half) & (yy >= top) & (yy <= top + length)
    streak = inside.float() * r(0.15, 0.45)
    specks = (rand(n, h, w) < 0.04) & inside
    painted = (x + streak.unsqueeze(1)).masked_fill(specks.unsqueeze(1), 0.95)
    return torch.where(chosen, painted.clamp(0, 1), x)
