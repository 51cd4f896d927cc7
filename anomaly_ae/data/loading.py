"""Load the proliv folder layout into uint8 arrays, once, behind a content-keyed cache.

Layout::

    ROOT/train/*.jpg                 normal crops
    ROOT/proliv/*.jpg                spill crops
    ROOT/test/imgs/*                 mixed crops
    ROOT/test/test_annotation.txt    one "NAME LABEL" a line, LABEL 1 = spill
    ROOT/site/*                      optional: unlabelled crops from where the detector will run
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_ae.data.errors import DatasetError
from anomaly_ae.data.site import (
    DEFAULT_CALIBRATION_SHARE, Review, SitePool, carry_to_site, matching_lut, read_review,
)
from anomaly_ae.stats.thresholds import SITE_RISK, SITE_SPILL_BOUND

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_SIZE = (32, 48)  # (H, W): keeps the crops' wide ~30x48 aspect
CACHE_VERSION = 1
SITE_DIR = "site"


def site_files_of(folder: Path, review) -> tuple[list[Path], Review | None]:
    """(the pool's image files less those a review found to be spills, the review read)."""
    files = list_images(folder)
    if review is None:
        return files, None
    read = read_review(review, [p.name for p in files], folder)
    spills = read.spills
    return [p for p in files if p.name not in spills], read


@dataclass
class ProlivData:
    """Decoded crops as (N, H, W, 3) uint8 arrays, with file names."""

    train: np.ndarray
    train_names: list[str]
    proliv: np.ndarray
    proliv_names: list[str]
    test: np.ndarray
    test_names: list[str]
    test_labels: np.ndarray
    content_hash: str  # of everything, the site pool included
    root: str
    site: SitePool | None = None
    labelled_hash: str = ""  # of train/, proliv/ and test/ only

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.train.shape[1:3])


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"missing folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"empty folder: {folder} has no {'/'.join(IMAGE_SUFFIXES)} images")
    return files


def parse_annotation(path: Path, image_dir: Path) -> tuple[list[str], np.ndarray]:
    """Parse "NAME LABEL" lines; every error names the file and the line number."""
    if not path.is_file():
        raise DatasetError(f"missing annotation file: {path}")
    names, labels, seen = [], [], set()
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{path}:{lineno}: expected 'NAME LABEL', got {raw!r}")
        name, label = parts
        if label not in ("0", "1"):
            raise DatasetError(f"{path}:{lineno}: label must be 0 or 1, got {label!r}")
        if name in seen:
            raise DatasetError(f"{path}:{lineno}: {name!r} is annotated twice")
        if not (image_dir / name).is_file():
            raise DatasetError(f"{path}:{lineno}: annotated image {name!r} not found in {image_dir}")
        seen.add(name)
        names.append(name)
        labels.append(int(label))
    if not names:
        raise DatasetError(f"{path}: no annotations")
    return names, np.asarray(labels, dtype=np.int64)


def decode_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"corrupt or unreadable image: {path} ({exc})") from exc


def decode_images(paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = decode_image(p, size)
    return out


def content_hash(files: list[Path], extra: list[Path] = ()) -> str:
    """SHA-256 over relative names and bytes: the cache key follows content, not mtimes."""
    h = hashlib.sha256()
    for p in list(files) + list(extra):
        h.update(p.parent.name.encode() + b"/" + p.name.encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where decoded crops are cached: ``$ANOMALY_AE_CACHE``, else the user's cache folder (the same
    whichever folder a command runs from)."""
    if os.environ.get("ANOMALY_AE_CACHE"):
        return Path(os.environ["ANOMALY_AE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "anomaly_ae" / "decoded"


def site_folder(root: Path, site) -> Path | None:
    """The site pool's folder: ``site`` when given (it must exist), else ``ROOT/site`` if present."""
    if site is not None:
        site = Path(site)
        if not site.is_dir():
            raise DatasetError(f"missing site pool folder: {site}")
        return site
    default = Path(root) / SITE_DIR
    return default if default.exists() else None


def make_site_pool(images: np.ndarray, folder: Path, files: list[Path], review: Review | None, key: str,
                   max_spill_fraction: float, delta: float) -> SitePool:
    reviewed = {} if review is None else {"removed": tuple(sorted(review.spills)), "review_file": review.path,
                                          "reviewed_normals": len(review.normals)}
    return SitePool(images, [p.name for p in files], key, str(folder), max_spill_fraction, delta, **reviewed)


def load_site_pool(folder, size: tuple[int, int] = DEFAULT_SIZE, max_spill_fraction: float = SITE_SPILL_BOUND,
                   delta: float = SITE_RISK, review=None) -> SitePool:
    """Decode a folder of unlabelled site crops (no cache: a new window is scored once); crops a
    ``review`` file marks as spills are left out."""
    folder = Path(folder)
    files, read = site_files_of(folder, review)
    return make_site_pool(decode_images(files, size), folder, files, read, content_hash(files),
                          max_spill_fraction, delta)


def load_proliv(root, size: tuple[int, int] = DEFAULT_SIZE, cache_dir: Path | None = None, site=None,
                site_max_spill_fraction: float = SITE_SPILL_BOUND, site_delta: float = SITE_RISK,
                site_review=None) -> ProlivData:
    """Decode the folder at ``root`` to ``size`` (H, W), reusing the cache when content is unchanged.

    The site pool (``site``, or ``ROOT/site/`` when it exists) is decoded and cached with the rest,
    and its content is part of the dataset's hash."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"missing dataset folder: {root}")
    size = (int(size[0]), int(size[1]))
    train_files = list_images(root / "train")
    proliv_files = list_images(root / "proliv")
    test_dir = root / "test" / "imgs"
    list_images(test_dir)
    annotation = root / "test" / "test_annotation.txt"
    test_names, test_labels = parse_annotation(annotation, test_dir)
    test_files = [test_dir / n for n in test_names]
    site_dir = site_folder(root, site)
    site_files, review = site_files_of(site_dir, site_review) if site_dir is not None else ([], None)

    labelled = key = content_hash(train_files + proliv_files + test_files, [annotation])
    site_key = content_hash(site_files) if site_files else None
    if site_key:
        key = hashlib.sha256(f"{labelled}+site:{site_key}".encode()).hexdigest()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_file = cache_dir / f"v{CACHE_VERSION}_{key[:20]}_{size[0]}x{size[1]}.npz"

    def site_pool(images):
        if site_key is None:
            return None
        return make_site_pool(images, site_dir, site_files, review, site_key, site_max_spill_fraction, site_delta)

    if cache_file.is_file():
        with np.load(cache_file) as z:
            return ProlivData(
                train=z["train"], train_names=[p.name for p in train_files],
                proliv=z["proliv"], proliv_names=[p.name for p in proliv_files],
                test=z["test"], test_names=test_names, test_labels=test_labels,
                content_hash=key, root=str(root), site=site_pool(z["site"] if site_key else None),
                labelled_hash=labelled,
            )
    data = ProlivData(
        train=decode_images(train_files, size), train_names=[p.name for p in train_files],
        proliv=decode_images(proliv_files, size), proliv_names=[p.name for p in proliv_files],
        test=decode_images(test_files, size), test_names=test_names, test_labels=test_labels,
        content_hash=key, root=str(root), site=site_pool(decode_images(site_files, size) if site_key else None),
        labelled_hash=labelled,
    )
    arrays = {"train": data.train, "proliv": data.proliv, "test": data.test}
    write_cache(cache_file, arrays if data.site is None else {**arrays, "site": data.site.images})
    return data


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write then rename, so an interrupted run never leaves a half-written cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@dataclass
class Splits:
    """Seeded train / validation split; ``test`` is for final evaluation only."""

    train: np.ndarray
    val_normal: np.ndarray
    val_spill: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray
    test_names: list[str]
    content_hash: str
    # The site pool's two parts (anomaly_ae.data.site): one scores trials and promote's choices, the
    # other fixes the shipped threshold and chose nothing.
    site_selection: SitePool | None = None
    site_calibration: SitePool | None = None
    # The validation crops carried to the site's light and colour (anomaly_ae.data.site.carry_to_site):
    # the spills are what the site_matched objective counts against the site threshold; both feed the
    # matched site calibration (anomaly_ae.stats.thresholds.matched_site_threshold).
    val_spill_matched: np.ndarray | None = None
    val_normal_matched: np.ndarray | None = None


def make_splits(data: ProlivData, val_normal_fraction: float = 0.1, val_spill_fraction: float = 1.0,
                seed: int = 0, site_calibration_share: float = DEFAULT_CALIBRATION_SHARE) -> Splits:
    if not 0.0 < val_normal_fraction < 1.0:
        raise ValueError(f"val_normal_fraction must be in (0, 1), got {val_normal_fraction}")
    if not 0.0 < val_spill_fraction <= 1.0:
        raise ValueError(f"val_spill_fraction must be in (0, 1], got {val_spill_fraction}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.train))
    n_val = max(1, int(round(val_normal_fraction * len(order))))
    spill_order = rng.permutation(len(data.proliv))
    n_spill = max(1, int(round(val_spill_fraction * len(spill_order))))
    selection, calibration = data.site.split(site_calibration_share) if data.site is not None else (None, None)
    train = data.train[np.sort(order[n_val:])]
    val_normal = data.train[np.sort(order[:n_val])]
    val_spill = data.proliv[np.sort(spill_order[:n_spill])]
    lut = None if selection is None else matching_lut(train, selection.images)
    return Splits(
        train=train,
        val_normal=val_normal,
        val_spill=val_spill,
        test=data.test,
        test_labels=data.test_labels,
        test_names=data.test_names,
        content_hash=data.content_hash,
        site_selection=selection,
        site_calibration=calibration,
        val_spill_matched=None if lut is None else carry_to_site(val_spill, lut),
        val_normal_matched=None if lut is None else carry_to_site(val_normal, lut),
    )
