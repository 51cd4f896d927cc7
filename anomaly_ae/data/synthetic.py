"""Procedural proliv-like crops: the embedded default dataset.

Normals: a greenish-grey elliptical well, a darker rim arc, a lighter granular
bottom, sometimes a shadow at the top, with jitter in position, scale,
brightness, blur and sensor noise.

Spills: a bright, irregular V-shaped streak down the middle of the well, with
whitish, yellow and blue specks and a darker streak beside it. Strength runs
from obvious to faint and small.

Site pool: unlabelled crops under the test conditions (a few percent of them spills), written to
``site/`` without labels: what a user collects where the detector will run.

Test shift (documented in the README): test crops, normal and spill, are drawn
under warmer and brighter light, with more blur and a larger position jitter,
because the real test set was shot under different conditions from train.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

BASE_COLOUR = np.array([0.42, 0.53, 0.46])


@dataclass(frozen=True)
class Conditions:
    """Acquisition conditions of one split."""

    gain: tuple[float, float] = (0.94, 1.06)  # global brightness multiplier range
    colour_shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # additive RGB tint (colour temperature)
    blur: tuple[float, float] = (0.3, 0.8)
    position_jitter: float = 1.5  # px
    noise: tuple[float, float] = (0.006, 0.016)


TRAIN_CONDITIONS = Conditions()
TEST_CONDITIONS = Conditions(
    gain=(0.98, 1.12),
    colour_shift=(0.025, 0.0, -0.02),
    blur=(0.5, 1.1),
    position_jitter=3.0,
    noise=(0.008, 0.02),
)

COUNTS = {"train": 10_000, "proliv": 154, "test_normal": 3_665, "test_spill": 129}
# The site pool: unlabelled crops under the test conditions, drawn apart from test/ with their own
# seed. Its spill share is the test set's (129 / 3,794), below the default bound of 5%.
# At least SITE_MIN crops at any scale: each half of the split pool (anomaly_ae.data.site) needs 62 to
# fix a threshold with the default guarantee.
SITE_COUNT, SITE_MIN, SITE_SPILL_FRACTION = 1_000, 160, 0.034


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    n = gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-8)


def render_normal(rng: np.random.Generator, cond: Conditions = TRAIN_CONDITIONS) -> tuple[np.ndarray, dict]:
    """One normal crop as float (H, W, 3) in [0, 1], plus the geometry a spill needs."""
    h, w = int(rng.integers(28, 33)), int(rng.integers(44, 53))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cx = w / 2 + rng.normal(0, cond.position_jitter)
    cy = h * 0.55 + rng.normal(0, cond.position_jitter * 0.7)
    scale = rng.uniform(0.9, 1.1)
    ax, ay = w * 0.44 * scale, h * 0.48 * scale
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)

    tint = BASE_COLOUR + rng.normal(0, 0.02, 3)
    img = np.broadcast_to(tint, (h, w, 3)).copy()
    img += 0.025 * (yy / h - 0.5)[..., None]  # light falls off towards the top
    # Darker rim arc, heaviest along the upper edge of the ellipse.
    rim_strength = rng.uniform(0.04, 0.08)
    upper = np.clip((cy - yy) / ay + 0.4, 0, 1)
    rim = np.exp(-((r - 1.0) / 0.12) ** 2) * (0.4 + 0.6 * upper)
    img -= (rim_strength * rim)[..., None]
    # Lighter, granular bottom of the well.
    inside = np.clip(1.15 - r, 0, 1) ** 0.7
    lower = np.clip((yy - cy) / ay + 0.6, 0, 1)
    grain = _smooth_noise(rng, (h, w), rng.uniform(0.6, 1.2))
    img += ((0.035 + 0.025 * grain) * inside * lower)[..., None] * np.array([0.9, 1.1, 0.9])
    # Broad low-frequency variation of the metal surface.
    img += (0.02 * _smooth_noise(rng, (h, w), 3.0))[..., None]
    if rng.random() < 0.35:  # shadow at the top, as on several real crops
        sx, sw = cx + rng.normal(0, 4), rng.uniform(4, 9)
        shadow = np.exp(-((xx - sx) / sw) ** 2) * np.clip(1 - yy / (h * rng.uniform(0.25, 0.45)), 0, 1)
        img -= (rng.uniform(0.05, 0.1) * shadow)[..., None]
    geometry = {"cx": cx, "cy": cy, "ax": ax, "ay": ay, "h": h, "w": w}
    return img, geometry


def paint_spill(img: np.ndarray, geometry: dict, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Add a V-shaped molten streak; ``strength`` in (0, 1] sets contrast and size together."""
    h, w = geometry["h"], geometry["w"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    size = 0.45 + 0.55 * strength * rng.uniform(0.8, 1.0)
    top = rng.uniform(-0.1, 0.15) * h
    bottom = top + size * h * rng.uniform(0.75, 1.0)
    centre = geometry["cx"] + rng.normal(0, 2.5)
    lean = rng.normal(0, 0.15)
    t = np.clip((yy - top) / max(bottom - top, 1), 0, 1)
    half_width = (rng.uniform(6, 10) * size) * (1 - t) + 0.8 * t  # wide at the top: a V
    x_mid = centre + lean * (yy - top) + 1.2 * _smooth_noise(rng, (h, 1), 2.0)
    dist = np.abs(xx - x_mid) / np.maximum(half_width, 0.5)
    band = (yy >= top) & (yy <= bottom)
    irregular = 0.6 + 0.4 * _smooth_noise(rng, (h, w), 0.8)
    streak = np.clip(1.2 - dist, 0, 1) * band * np.clip(irregular, 0, 1.3)
    contrast = 0.08 + 0.27 * strength
    out = img + (contrast * streak)[..., None] * np.array([1.0, 0.95, 0.85])
    # Darker streak beside it: solidified metal in the shadow of the flow.
    side = 1 if rng.random() < 0.5 else -1
    dark_x = x_mid + side * (half_width + rng.uniform(1, 3))
    dark = np.exp(-((xx - dark_x) / 1.3) ** 2) * band * (t > 0.2)
    out -= (contrast * rng.uniform(0.3, 0.6) * dark)[..., None]
    # Whitish, yellow and blue specks inside the streak.
    colours = np.array([[0.95, 0.95, 0.9], [0.85, 0.8, 0.35], [0.3, 0.45, 0.8]])
    n_specks = int(rng.integers(1, 3 + int(8 * strength)))
    ys, xs = np.nonzero(streak > 0.4)
    if len(ys):
        for idx in rng.choice(len(ys), size=min(n_specks, len(ys)), replace=False):
            c = colours[rng.choice(3, p=[0.5, 0.3, 0.2])]
            mix = rng.uniform(0.4, 0.9) * min(1.0, 0.3 + strength)
            out[ys[idx], xs[idx]] = (1 - mix) * out[ys[idx], xs[idx]] + mix * c
    return out


def spill_strength(rng: np.random.Generator) -> float:
    # Skewed towards obvious spills, with a tail of faint, small ones.
    return float(np.clip(rng.beta(2.2, 1.3), 0.05, 1.0))


def finish(img: np.ndarray, rng: np.random.Generator, cond: Conditions) -> np.ndarray:
    """Lighting, optics and sensor: gain, tint, blur, noise, quantisation."""
    img = img * rng.uniform(*cond.gain) + np.asarray(cond.colour_shift)
    sigma = rng.uniform(*cond.blur)
    img = np.stack([gaussian_filter(img[..., c], sigma) for c in range(3)], axis=-1)
    img = img + rng.normal(0, rng.uniform(*cond.noise), img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_crop(rng: np.random.Generator, spill: bool, cond: Conditions) -> np.ndarray:
    img, geometry = render_normal(rng, cond)
    if spill:
        img = paint_spill(img, geometry, rng, spill_strength(rng))
    return finish(img, rng, cond)


def _save(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, quality=92)


@contextlib.contextmanager
def dataset_folder(out, overwrite: bool = False, subfolders=("train", "proliv", "test/imgs", "site")):
    """A sibling temp folder with the layout's subfolders, renamed to ``out`` when the block ends
    without an error: never a half-written dataset."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for sub in subfolders:
            (tmp / sub).mkdir(parents=True)
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def site_draw(site_seq: np.random.SeedSequence, scale: float) -> tuple[np.ndarray, list]:
    """Which site crops are spills, and each crop's seed."""
    n_site = max(SITE_MIN, int(round(SITE_COUNT * scale)))
    site_order, *site_children = site_seq.spawn(n_site + 1)
    return np.random.default_rng(site_order).random(n_site) < SITE_SPILL_FRACTION, site_children


def site_truth(seed: int = 0, scale: float = 1.0) -> dict[str, bool]:
    """The generator's own draw of which site crops (by file name) are spills: what a person reviewing a
    generated pool would see. For measurements only; no command of the harness reads it."""
    root_seq = np.random.SeedSequence(seed)
    root_seq.spawn(4)
    (site_seq,) = root_seq.spawn(1)
    spills, _ = site_draw(site_seq, scale)
    return {f"{i:05d}.jpg": bool(s) for i, s in enumerate(spills)}


def make_dataset(out, scale: float = 1.0, seed: int = 0, overwrite: bool = False) -> dict:
    """Write the proliv layout under ``out``; counts are the real ones times ``scale``."""
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    counts = {k: max(2, int(round(v * scale))) for k, v in COUNTS.items()}
    with dataset_folder(out, overwrite) as tmp:
        root_seq = np.random.SeedSequence(seed)
        train_seq, proliv_seq, test_seq, order_seq = root_seq.spawn(4)
        # Spawned after the others, so train/proliv/test are the crops they were before site/ existed.
        (site_seq,) = root_seq.spawn(1)
        for i, child in enumerate(train_seq.spawn(counts["train"])):
            _save(render_crop(np.random.default_rng(child), False, TRAIN_CONDITIONS), tmp / "train" / f"{i:05d}.jpg")
        for i, child in enumerate(proliv_seq.spawn(counts["proliv"])):
            _save(render_crop(np.random.default_rng(child), True, TRAIN_CONDITIONS), tmp / "proliv" / f"{i:04d}.jpg")
        labels = np.r_[np.zeros(counts["test_normal"], int), np.ones(counts["test_spill"], int)]
        labels = labels[np.random.default_rng(order_seq).permutation(labels.size)]
        lines = []
        for i, (child, label) in enumerate(zip(test_seq.spawn(labels.size), labels)):
            name = f"{i:05d}.jpg"
            _save(render_crop(np.random.default_rng(child), bool(label), TEST_CONDITIONS), tmp / "test" / "imgs" / name)
            lines.append(f"{name} {label}")
        (tmp / "test" / "test_annotation.txt").write_text("\n".join(lines) + "\n")
        site_spill, site_children = site_draw(site_seq, scale)
        for i, (child, spill) in enumerate(zip(site_children, site_spill)):
            # No label is written: a site pool is unlabelled by definition.
            _save(render_crop(np.random.default_rng(child), bool(spill), TEST_CONDITIONS), tmp / "site" / f"{i:05d}.jpg")
    return {"train": counts["train"], "proliv": counts["proliv"],
            "test": int(labels.size), "test_spills": int(labels.sum()), "site": int(site_spill.size)}
