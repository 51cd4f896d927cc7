"""Real image sets with a shift between train and where the detector runs, in the proliv layout with a
site pool: the data the site defaults are decided on besides the generator's own.

- ``digits-shifted``: scikit-learn's handwritten digit scans (0-7 normal, 8-9 spills), as in
  ``anomaly_ae.data.digits``; test/ and site/ are brighter, warmer, gamma-bent and moved by up to 3 px.
- ``photos-shifted``: crops of the photograph ``china.jpg`` that ships with scikit-learn; a spill is a
  crop with a piece of the other shipped photograph (``flower.jpg``) pasted in; test/ and site/ under the
  same shift as the digits'.

The shift is fixed (``SHIFT``), not searched: it stands for "other light, other framing". Nothing in the
pixels comes from this project's generator; the spill share of each site pool is 3-4%, under the default
bound of 5%.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from anomaly_ae.data.synthetic import dataset_folder

SIZE = (48, 32)  # PIL's (W, H)
SHIFT = {"gain": 1.15, "gamma": 0.8, "tint": (14.0, 4.0, -10.0), "max_px": 1}
KINDS = ("digits-shifted", "photos-shifted")


def shift_crop(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other light (gamma, gain, a warm tint) and other framing (a translation of up to ``max_px``)."""
    x = (image.astype(np.float64) / 255.0) ** SHIFT["gamma"] * SHIFT["gain"] * 255.0 + np.asarray(SHIFT["tint"])
    dy, dx = rng.integers(-SHIFT["max_px"], SHIFT["max_px"] + 1, size=2)
    x = np.roll(np.pad(x, ((3, 3), (3, 3), (0, 0)), mode="edge"), (dy, dx), axis=(0, 1))[3:-3, 3:-3]
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _sklearn():
    try:
        import sklearn.datasets as datasets
    except ImportError as exc:  # scikit-learn is a test dependency, not a runtime one
        raise RuntimeError("make-data --kind digits-shifted/photos-shifted needs scikit-learn: "
                           "pip install scikit-learn") from exc
    return datasets


def write_dataset(out, overwrite, train, proliv, test, test_labels, site, rng) -> dict:
    order = rng.permutation(len(test))
    with dataset_folder(out, overwrite) as tmp:
        for folder, crops in (("train", train), ("proliv", proliv)):
            for i, crop in enumerate(crops):
                Image.fromarray(crop).save(tmp / folder / f"{i:05d}.png")
        lines = []
        for i, j in enumerate(order):
            Image.fromarray(test[j]).save(tmp / "test" / "imgs" / f"{i:05d}.png")
            lines.append(f"{i:05d}.png {int(test_labels[j])}")
        (tmp / "test" / "test_annotation.txt").write_text("\n".join(lines) + "\n")
        for i, crop in enumerate(site):
            Image.fromarray(crop).save(tmp / "site" / f"{i:05d}.png")
    return {"train": len(train), "proliv": len(proliv), "test": len(test), "test_spills": int(np.sum(test_labels)),
            "site": len(site)}


def _resize(scan: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(scan).resize(SIZE, Image.BILINEAR).convert("RGB"))


def make_digits_shifted(out, seed: int = 0, overwrite: bool = False) -> dict:
    """Half the normal scans train; 60 spills validate; a quarter of the normals with 20 spills test; the
    last quarter with 12 spills (unlabelled) is the site pool."""
    digits = _sklearn().load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(digits.target < 8))
    spill = rng.permutation(np.flatnonzero(digits.target >= 8))
    n = len(normal)
    crops = lambda idx, shifted: [shift_crop(_resize(images[i]), rng) if shifted else _resize(images[i]) for i in idx]
    test_idx = np.r_[normal[n // 2: 3 * n // 4], spill[60:80]]
    return write_dataset(out, overwrite, crops(normal[: n // 2], False), crops(spill[:60], False), crops(test_idx, True),
                  np.r_[np.zeros(3 * n // 4 - n // 2, int), np.ones(20, int)],
                  crops(rng.permutation(np.r_[normal[3 * n // 4:], spill[80:92]]), True), rng)


def _photo_crop(photo: np.ndarray, x_range: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = 64, 96
    y = rng.integers(0, photo.shape[0] - h)
    x = rng.integers(x_range[0], x_range[1] - w)
    return np.asarray(Image.fromarray(photo[y:y + h, x:x + w]).resize(SIZE, Image.BILINEAR))


def _pasted(crop: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A piece of the donor photograph, 8-16 px on a side, pasted at a random place."""
    out = crop.copy()
    ph, pw = rng.integers(8, 17, size=2)
    y, x = rng.integers(0, crop.shape[0] - ph), rng.integers(0, crop.shape[1] - pw)
    dy, dx = rng.integers(0, donor.shape[0] - ph), rng.integers(0, donor.shape[1] - pw)
    out[y:y + ph, x:x + pw] = donor[dy:dy + ph, dx:dx + pw]
    return out


def make_photos_shifted(out, seed: int = 0, overwrite: bool = False) -> dict:
    """2,000 train crops and 60 validation spills; 600 test normals with 30 spills and a 600-crop site pool
    with 20 spills, shifted."""
    china, flower = _sklearn().load_sample_images().images
    rng = np.random.default_rng(seed)
    left = right = (0, china.shape[1])  # crops drawn anywhere; only the shift tells test and site apart

    def normals(k, side):
        return [_photo_crop(china, side, rng) for _ in range(k)]

    def spills(k, side):
        return [_pasted(c, flower, rng) for c in normals(k, side)]

    test = [shift_crop(c, rng) for c in normals(600, right) + spills(30, right)]
    site = [shift_crop(c, rng) for c in normals(580, right) + spills(20, right)]
    return write_dataset(out, overwrite, normals(2000, left), spills(60, left), test, np.r_[np.zeros(600, int), np.ones(30, int)],
                  [site[i] for i in rng.permutation(len(site))], rng)


def make_shifted_dataset(kind: str, out, seed: int = 0, overwrite: bool = False) -> dict:
    if kind == "digits-shifted":
        return make_digits_shifted(out, seed, overwrite)
    if kind == "photos-shifted":
        return make_photos_shifted(out, seed, overwrite)
    raise ValueError(f"unknown shifted data set {kind!r}; valid: {list(KINDS)}")
