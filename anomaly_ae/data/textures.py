"""A real-texture data set in the proliv layout: crops of a texture photograph that ships with
scikit-image (``gravel`` by default; ``brick``, ``grass``), with defects made of other real content.

- train/: 2,000 crops of the upper 60% of the photograph.
- proliv/: 60 validation spills, two defect kinds: a piece of another real photograph (scikit-learn's
  and scikit-image's shipped photos) pasted with a soft edge, and a scratch (a thin bright or dark line),
  both in the surface's tint, so that colour alone gives nothing away.
- test/ and site/: crops of the lower 40% of the photograph (another part of the surface), under the
  shift of ``anomaly_ae.data.shifted`` (other light, 1 px framing). Test: 600 normals and 45 spills, 15
  of each kind, the third kind a **stain** (the texture blurred and darkened under a soft blob: smoother
  than the texture around it), which validation never shows. Site pool: 600 crops, 20 of them spills
  of all three kinds, unlabelled.

None of the defects is made by ``anomaly_ae.detector.synthetic_anomalies``: they are other photographs, soft
stains and lines, where the synthesis pastes batch content, plain colours and gains under hard masks.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from anomaly_ae.data.shifted import SIZE, shift_crop, write_dataset

TEXTURES = ("gravel", "brick", "grass")
TINT = np.array([1.0, 0.9, 0.75])  # the grey photographs as a warm surface
TRAIN_SHARE = 0.6  # of the photograph's rows


def _skimage_data():
    try:
        import skimage.data as data
    except ImportError as exc:
        raise RuntimeError("make-data --kind textures needs scikit-image: pip install scikit-image") from exc
    return data


def _donors() -> list[np.ndarray]:
    """Real RGB photographs the pasted pieces are cut from."""
    data = _skimage_data()
    donors = [data.astronaut(), data.coffee(), data.chelsea()]
    try:
        import sklearn.datasets as datasets

        donors += list(datasets.load_sample_images().images)
    except ImportError:
        pass
    return donors


def _crop(photo: np.ndarray, rows: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A 64x96 window of the photograph in ``rows``, halved to the crop size, tinted to RGB."""
    h, w = 2 * SIZE[1], 2 * SIZE[0]
    y = rng.integers(rows[0], rows[1] - h)
    x = rng.integers(0, photo.shape[1] - w)
    grey = np.asarray(Image.fromarray(photo[y:y + h, x:x + w]).resize(SIZE, Image.BILINEAR), dtype=np.float64)
    return np.clip(grey[..., None] * TINT, 0, 255).astype(np.uint8)


def _soft_blob(shape: tuple[int, int], rng: np.random.Generator, radius: tuple[float, float]) -> np.ndarray:
    """A soft-edged ellipse (H, W) in [0, 1], at a random place, of a random size and angle."""
    h, w = shape
    cy, cx = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
    ry, rx = rng.uniform(*radius, size=2)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[:h, :w] + 0.5
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    r = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return np.clip((1.3 - r) / 0.6, 0, 1)


def photo_piece(crop: np.ndarray, donors: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    donor = donors[rng.integers(len(donors))]
    h, w = crop.shape[:2]
    y, x = rng.integers(0, donor.shape[0] - 2 * h), rng.integers(0, donor.shape[1] - 2 * w)
    # In the surface's own tint: a defect a colour check alone would find is no test of texture.
    piece = Image.fromarray(donor[y:y + 2 * h, x:x + 2 * w]).convert("L").resize((w, h), Image.BILINEAR)
    piece = np.asarray(piece, dtype=np.float64)[..., None] * TINT
    alpha = _soft_blob((h, w), rng, (4.0, 9.0))[..., None]
    return np.clip(crop * (1 - alpha) + piece * alpha, 0, 255).astype(np.uint8)


def scratch(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = crop.shape[:2]
    y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
    angle, length = rng.uniform(0, np.pi), rng.uniform(15, 35)
    y, x = np.mgrid[:h, :w] + 0.5
    t = np.clip((x - x0) * np.cos(angle) + (y - y0) * np.sin(angle), -length / 2, length / 2)
    dist = np.hypot(x - (x0 + t * np.cos(angle)), y - (y0 + t * np.sin(angle)))
    alpha = np.clip(1.5 - dist, 0, 1)[..., None] * rng.uniform(0.6, 0.9)
    colour = (235.0 if rng.random() < 0.5 else 25.0) * TINT
    return np.clip(crop * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def stain(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The texture under a soft blob, blurred flat and darkened: a wet patch."""
    from PIL import ImageFilter

    blurred = np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(3)), dtype=np.float64)
    tone = blurred * rng.uniform(0.55, 0.8)
    alpha = _soft_blob(crop.shape[:2], rng, (6.0, 12.0))[..., None]
    return np.clip(crop * (1 - alpha) + tone * alpha, 0, 255).astype(np.uint8)


def make_textures(out, seed: int = 0, overwrite: bool = False, texture: str = "gravel") -> dict:
    if texture not in TEXTURES:
        raise ValueError(f"unknown texture {texture!r}; valid: {list(TEXTURES)}")
    photo = getattr(_skimage_data(), texture)()
    donors = _donors()
    rng = np.random.default_rng(seed)
    cut = int(photo.shape[0] * TRAIN_SHARE)
    upper, lower = (0, cut), (cut, photo.shape[0])
    defects = (lambda c: photo_piece(c, donors, rng), lambda c: scratch(c, rng), lambda c: stain(c, rng))

    def normals(k, rows):
        return [_crop(photo, rows, rng) for _ in range(k)]

    def spills(k, rows, kinds):
        return [defects[kinds[i % len(kinds)]](c) for i, c in enumerate(normals(k, rows))]

    test = [shift_crop(c, rng) for c in normals(600, lower) + spills(45, lower, (0, 1, 2))]
    site = [shift_crop(c, rng) for c in normals(580, lower) + spills(20, lower, (0, 1, 2))]
    return write_dataset(out, overwrite, normals(2000, upper), spills(60, upper, (0, 1)), test,
                         np.r_[np.zeros(600, int), np.ones(45, int)], [site[i] for i in rng.permutation(len(site))], rng)
