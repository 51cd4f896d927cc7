"""The site pool: unlabelled crops from where the detector runs, its split into a part that chooses and a
part that calibrates, and the review file a person fills to take confirmed spills out of it.

Why two parts: the site rule (``anomaly_ae.stats.thresholds.site_rank``) promises TNR >= target with risk
delta for a detector fixed *before* the pool is looked at. A sweep that keeps the detector whose pool
threshold happens to sit lowest (the site objective rewards exactly that) has looked: with N candidates
the promise holds only at about N * delta. So the pool is split by a hash of each crop's name, which
depends on neither its content nor the detector: the *selection* part scores trials and promote's
choices, the *calibration* part fixes the shipped threshold and chose nothing. Each part is a random
sample of the pool, so the stated spill share applies to each as a share of it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from anomaly_ae.data.errors import DatasetError
from anomaly_ae.stats.thresholds import SITE_RISK, SITE_SPILL_BOUND

DEFAULT_CALIBRATION_SHARE = 0.5
SPLIT_SEED = 0
REVIEW_HEADER = ("name", "score", "verdict")
VERDICTS = ("spill", "normal", "")


@dataclass
class SitePool:
    """Unlabelled crops from the conditions where the detector runs (a few may be spills).

    ``stated_bound`` is the user's upper bound on the share of spills among the folder's crops, and
    ``delta`` the risk the site threshold may break its TNR promise. Crops a review found to be spills
    (``removed``) are left out; ``spill_bound`` is then the bound on what is left (``reviewed_bound``), while
    ``stated_bound`` keeps what was stated (what ``describe`` records).
    ``part`` says which part of a split pool this is: "whole", "selection" or "calibration".
    """

    images: np.ndarray
    names: list[str]
    content_hash: str
    root: str
    stated_bound: float = SITE_SPILL_BOUND
    delta: float = SITE_RISK
    removed: tuple[str, ...] = ()
    review_file: str = ""
    reviewed_normals: int = 0
    part: str = "whole"
    spill_bound: float = field(init=False)  # the bound the site rule uses: the stated one, less reviewed spills

    def __post_init__(self):
        n_folder = len(self.names) + len(self.removed)
        self.spill_bound = (reviewed_bound(n_folder, self.stated_bound, len(self.removed))
                            if self.removed else self.stated_bound)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict[str, str]:
        """What records the pool a threshold was fixed on (sweep tags, registry version tags)."""
        out = {"site_hash": self.content_hash, "site_size": str(len(self)), "site_path": self.root,
               "site_max_spill_fraction": f"{self.stated_bound:g}", "site_delta": f"{self.delta:g}"}
        if self.part != "whole":
            out["site_part"] = self.part
        if self.review_file:
            out.update(site_review_spills=str(len(self.removed)), site_review_normals=str(self.reviewed_normals),
                       site_review_file=self.review_file)
        return out

    def split(self, calibration_share: float = DEFAULT_CALIBRATION_SHARE,
              seed: int = SPLIT_SEED) -> tuple["SitePool", "SitePool"]:
        """(selection part, calibration part), by ``calibration_mask`` over the names; reviewed spills
        are counted in the part their name falls in."""
        if self.part != "whole":
            raise ValueError(f"the {self.part} part of a site pool is split already")
        mask = calibration_mask(self.names, calibration_share, seed)
        removed_mask = calibration_mask(list(self.removed), calibration_share, seed)
        parts = []
        for part, keep, gone in (("selection", ~mask, ~removed_mask), ("calibration", mask, removed_mask)):
            idx = np.flatnonzero(keep)
            images = self.images[idx]
            names = [self.names[i] for i in idx]
            parts.append(replace(self, images=images, names=names, content_hash=part_hash(names, images),
                                 removed=tuple(n for n, g in zip(self.removed, gone) if g), part=part))
        return parts[0], parts[1]


def calibration_mask(names: list[str], share: float, seed: int = SPLIT_SEED) -> np.ndarray:
    """Which crops calibrate: a SHA-256 of (seed, name) read as a uniform number below ``share``.

    A crop's part depends on its name alone, so adding crops to the folder moves none of the others."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"site_calibration_share must be in (0, 1), got {share}")
    draws = [int.from_bytes(hashlib.sha256(f"{seed}:{n}".encode()).digest()[:8], "big") / 2.0 ** 64 for n in names]
    return np.asarray(draws, dtype=float) < share


def part_hash(names: list[str], images: np.ndarray) -> str:
    """SHA-256 of a part's names and decoded pixels, in order."""
    h = hashlib.sha256()
    for name, image in zip(names, images):
        h.update(name.encode() + b"\0")
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def reviewed_bound(n_folder: int, stated: float, known: int) -> float:
    """The spill bound of a pool whose ``known`` reviewed spills were taken out, as a share of what is left.

    The stated bound allows floor(stated * n) spills among the n crops; the review took ``known`` of
    them out, so at most floor(stated * n) - known remain among the n - known crops kept. The normals
    are all still there, and still i.i.d., so the site rule's guarantee carries over."""
    allowed = int(math.floor(stated * n_folder + 1e-9))
    if known > allowed:
        raise DatasetError(f"the review found {known} spills among {n_folder} site crops, more than the "
                           f"stated bound of {stated:g} allows ({allowed}); raise --site-max-spill-fraction")
    return (allowed - known) / (n_folder - known)


@dataclass
class Review:
    """A review file read: each reviewed crop's verdict ("spill", "normal", or "" for not looked at) and
    the score it was listed with (nan where the file had none)."""

    path: str
    verdicts: dict[str, str]
    scores: dict[str, float]

    @property
    def spills(self) -> set[str]:
        return {n for n, v in self.verdicts.items() if v == "spill"}

    @property
    def normals(self) -> set[str]:
        return {n for n, v in self.verdicts.items() if v == "normal"}


def read_review(path, pool_names: list[str], folder) -> Review:
    """Read a review file; every named crop must be in the pool's folder.

    Accepted as written by promote (a ``name score verdict`` header, tab-separated rows, the verdict
    blank, ``spill`` or ``normal``), and in the older forms: ``name score`` rows (nothing decided) and
    bare names (each a confirmed spill)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing site review file: {path}")
    present = set(pool_names)
    verdicts, scores = {}, {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in (raw.split("\t") if "\t" in raw else raw.split())]
        if [f.lower() for f in fields] == list(REVIEW_HEADER[:len(fields)]):  # the header row
            continue
        if len(fields) > 3:
            raise DatasetError(f"{path}:{lineno}: expected 'NAME [SCORE [VERDICT]]', got {raw!r}")
        name = fields[0]
        verdict = "spill" if len(fields) == 1 else (fields[2].lower() if len(fields) == 3 else "")
        if verdict not in VERDICTS:
            raise DatasetError(f"{path}:{lineno}: verdict must be 'spill', 'normal' or blank, got {fields[2]!r}")
        try:
            score = float(fields[1]) if len(fields) > 1 and fields[1] else math.nan
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: score must be a number, got {fields[1]!r}") from None
        if name not in present:
            raise DatasetError(f"{path}:{lineno}: {name!r} is not a crop of the site pool {folder}")
        if name in verdicts and verdicts[name] and verdict and verdicts[name] != verdict:
            raise DatasetError(f"{path}:{lineno}: {name!r} is marked both {verdicts[name]} and {verdict}")
        verdicts[name] = verdict or verdicts.get(name, "")
        scores[name] = score
    return Review(str(path), verdicts, scores)


def review_rows(flagged: list[tuple[str, float]], earlier: Review | None = None) -> list[tuple[str, float, str]]:
    """The next round's rows: the crops flagged now, highest score first, then every crop an earlier round
    decided and that is not flagged now (its verdict kept, so one file carries every round)."""
    earlier_verdicts = earlier.verdicts if earlier else {}
    rows = [(name, score, earlier_verdicts.get(name, "")) for name, score in sorted(flagged, key=lambda r: -r[1])]
    listed = {name for name, _ in flagged}
    rows += [(name, earlier.scores.get(name, math.nan), verdict) for name, verdict in earlier_verdicts.items()
             if verdict and name not in listed]
    return rows


def write_review(rows: list[tuple[str, float, str]], path: Path) -> Path:
    """The review file: tab-separated, a header, one crop a row; readable by ``read_review`` as it is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# the highest-scored site crops of the calibration part (every one above the shipped threshold among\n"
        "# them), highest first, then earlier rounds' verdicts.\n"
        "# Fill the verdict column with 'spill' or 'normal' (blank: not looked at) and pass this file as it\n"
        "# is to promote --site-review. A spill is taken out of the pool; a normal stays in it. Marking a\n"
        "# normal 'spill' lowers the threshold by one crop and voids the promised TNR: mark only what you saw.\n"
        + "\t".join(REVIEW_HEADER) + "\n"
        + "".join(f"{name}\t{'' if math.isnan(score) else f'{score:.6g}'}\t{verdict}\n" for name, score, verdict in rows))
    return path


def split_description(selection: SitePool, calibration: SitePool, share: float) -> dict[str, str]:
    """What records a split (sweep tags, registry version tags): the share and each part's hash and size."""
    return {"site_calibration_share": f"{share:g}",
            "site_selection_hash": selection.content_hash, "site_selection_size": str(len(selection)),
            "site_calibration_hash": calibration.content_hash, "site_calibration_size": str(len(calibration))}


def matching_lut(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-channel histogram matching of uint8 crops: a (3, 256) table taking ``source``'s pixel
    distribution to ``target``'s (the value whose target CDF first reaches the source CDF)."""
    lut = np.empty((3, 256), dtype=np.uint8)
    for c in range(3):
        src = np.cumsum(np.bincount(source[..., c].ravel(), minlength=256)) / source[..., c].size
        tgt = np.cumsum(np.bincount(target[..., c].ravel(), minlength=256)) / target[..., c].size
        lut[c] = np.minimum(np.searchsorted(tgt, src - 1e-12, side="left"), 255)
    return lut


def carry_to_site(images: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``images`` (crops taken under the train conditions) carried to the site's by a ``matching_lut`` from
    the train normals to the pool. Only the light and colour move; a geometric shift is not carried."""
    return np.stack([lut[c][images[..., c]] for c in range(3)], axis=-1)
