"""The site pool's split into a part that chooses and a part that calibrates, and the review file."""
import math

import numpy as np
import pytest
from scipy.stats import norm

from anomaly_ae.data import DatasetError, SitePool
from anomaly_ae.data.site import calibration_mask, read_review, review_rows, write_review
from anomaly_ae.stats.thresholds import site_rank, site_threshold


def pool_of(n: int, removed=(), bound: float = 0.05) -> SitePool:
    images = np.arange(n * 2 * 2 * 3, dtype=np.uint8).reshape(n, 2, 2, 3)
    return SitePool(images, [f"{i:05d}.jpg" for i in range(n)], "whole", "/pool", bound, 0.05, tuple(removed))


def test_the_split_is_by_name_disjoint_seeded_and_stable_when_crops_are_added():
    pool = pool_of(1000)
    selection, calibration = pool.split(0.5)
    assert not set(selection.names) & set(calibration.names)
    assert sorted(selection.names + calibration.names) == pool.names
    assert 430 < len(calibration) < 570  # a fair coin per crop: 500 +- 4.4 sd
    assert (selection.part, calibration.part) == ("selection", "calibration")
    # Each part's images are its crops' images, and its hash follows them.
    index = {n: i for i, n in enumerate(pool.names)}
    assert all(np.array_equal(calibration.images[j], pool.images[index[n]]) for j, n in enumerate(calibration.names))
    assert calibration.content_hash == pool.split(0.5)[1].content_hash != selection.content_hash
    assert pool.split(0.5, seed=1)[1].names != calibration.names
    # A crop's part depends on its name alone: a bigger folder keeps every earlier crop where it was.
    bigger = pool_of(1200).split(0.5)[1]
    assert set(bigger.names) & set(pool.names) == set(calibration.names)
    assert calibration.describe()["site_part"] == "calibration"
    with pytest.raises(ValueError, match="site_calibration_share must be in \\(0, 1\\), got 1.0"):
        pool.split(1.0)
    with pytest.raises(ValueError, match="calibration part of a site pool is split already"):
        calibration.split()


def test_reviewed_spills_count_in_the_part_their_name_falls_in():
    names = [f"{i:05d}.jpg" for i in range(200)]
    removed = names[:6]
    pool = pool_of(200, bound=0.05)
    pool = SitePool(pool.images[6:], names[6:], "h", "/pool", 0.05, 0.05, tuple(removed))
    mask = calibration_mask(removed, 0.5)
    selection, calibration = pool.split(0.5)
    assert calibration.removed == tuple(n for n, m in zip(removed, mask) if m)
    assert len(selection.removed) + len(calibration.removed) == 6
    n_cal = len(calibration) + len(calibration.removed)
    assert calibration.spill_bound == pytest.approx(
        (math.floor(0.05 * n_cal + 1e-9) - len(calibration.removed)) / len(calibration))


def test_choosing_on_the_pool_that_calibrates_breaks_delta_and_the_split_holds_it():
    """40 candidates alike in distribution (normals N(0, 1), so TNR(t) = Phi(t)), each scoring the pool with
    its own noise; the sweep keeps the one whose site threshold lets the most validation spills through.
    Reused, that is the one whose pool sample sat lowest: its TNR promise fails far more often than delta.
    Chosen on one part and calibrated on the other, the promise keeps its risk."""
    rng = np.random.default_rng(0)
    tnr, delta, reps, candidates, n_pool = 0.95, 0.05, 200, 40, 400
    spills = rng.normal(2.0, 1.0, 400)
    mask = calibration_mask([f"{i:05d}.jpg" for i in range(n_pool)], 0.5)
    k_whole, k_choose, k_cal = (site_rank(n, tnr, 0.0, delta) for n in (n_pool, (~mask).sum(), mask.sum()))
    pools = rng.normal(size=(reps, candidates, n_pool))
    example = pools[0, 0]
    assert np.sort(example)[k_whole - 1] == site_threshold(example, tnr, 0.0, delta)  # the library's rule

    def thresholds(scores, k):
        return np.sort(scores, axis=-1)[..., k - 1]

    def tpr(threshold):
        return (spills[None, None, :] > threshold[..., None]).mean(-1)

    reused = thresholds(pools, k_whole)
    picked = np.argmax(tpr(reused), axis=1)  # the site objective's choice, on the same crops
    reuse_fail = np.mean(norm.cdf(reused[np.arange(reps), picked]) < tnr)
    choose = thresholds(pools[..., ~mask], k_choose)
    calibrate = thresholds(pools[..., mask], k_cal)
    picked = np.argmax(tpr(choose), axis=1)
    split_fail = np.mean(norm.cdf(calibrate[np.arange(reps), picked]) < tnr)
    # One detector fixed in advance fails at most delta of the time; so does the split's pick.
    single_fail = np.mean(norm.cdf(reused[:, 0]) < tnr)
    assert single_fail <= delta + 0.03
    assert reuse_fail > 5 * delta, reuse_fail
    print(f"P(TNR < {tnr}): one fixed detector {single_fail:.3f}, chosen on the pool it is calibrated on "
          f"{reuse_fail:.3f}, chosen and calibrated on separate parts {split_fail:.3f}")
    assert split_fail <= delta + 0.03, split_fail


# ------------------------------------------------------------------ the review file

def test_the_review_file_is_read_as_written_and_rounds_accumulate(tmp_path):
    names = [f"{i}.jpg" for i in range(6)]
    first = write_review(review_rows([("3.jpg", 2.5), ("1.jpg", 4.0), ("2.jpg", 3.0)]), tmp_path / "r.tsv")
    read = read_review(first, names, "/pool")
    assert list(read.verdicts) == ["1.jpg", "2.jpg", "3.jpg"]  # highest score first
    assert set(read.verdicts.values()) == {""} and read.spills == read.normals == set()
    assert read.scores["1.jpg"] == 4.0
    lines = first.read_text().splitlines()
    marked = [line + ("spill" if line.startswith("1.jpg") else "normal" if line.startswith("2.jpg") else "")
              for line in lines]
    first.write_text("\n".join(marked) + "\n")
    read = read_review(first, names, "/pool")
    assert read.spills == {"1.jpg"} and read.normals == {"2.jpg"}
    # The next round: 1.jpg left the pool, 2.jpg is still flagged, 4.jpg is new; every verdict carries over.
    rows = review_rows([("4.jpg", 5.0), ("2.jpg", 3.1)], read)
    assert rows == [("4.jpg", 5.0, ""), ("2.jpg", 3.1, "normal"), ("1.jpg", 4.0, "spill")]
    again = read_review(write_review(rows, tmp_path / "r2.tsv"), names, "/pool")
    assert again.spills == {"1.jpg"} and again.normals == {"2.jpg"} and again.verdicts["4.jpg"] == ""


def test_older_review_forms_are_read(tmp_path):
    names = ["a.jpg", "b.jpg", "c.jpg"]
    old = tmp_path / "old.txt"
    old.write_text("# an old site_review.txt, as promote wrote it\na.jpg 3.2\nb.jpg 1.5\n")
    assert read_review(old, names, "/pool").spills == set()
    old.write_text("c.jpg\n")  # the old --site-known-spills form: a name is a confirmed spill
    assert read_review(old, names, "/pool").spills == {"c.jpg"}


@pytest.mark.parametrize("body, message", [
    ("name\tscore\tverdict\na.jpg\t1\tmaybe\n", "r.tsv:2: verdict must be 'spill', 'normal' or blank, got 'maybe'"),
    ("a.jpg\tx\tspill\n", "r.tsv:1: score must be a number, got 'x'"),
    ("z.jpg\t1\tspill\n", "r.tsv:1: 'z.jpg' is not a crop of the site pool /pool"),
    ("a.jpg\t1\tspill\na.jpg\t1\tnormal\n", "r.tsv:2: 'a.jpg' is marked both spill and normal"),
    ("a.jpg\t1\tspill\textra\n", "r.tsv:1: expected 'NAME \\[SCORE \\[VERDICT\\]\\]'"),
])
def test_a_bad_review_line_is_named(tmp_path, body, message):
    path = tmp_path / "r.tsv"
    path.write_text(body)
    with pytest.raises(DatasetError, match=message):
        read_review(path, ["a.jpg", "b.jpg"], "/pool")


def test_a_missing_review_file_is_named(tmp_path):
    with pytest.raises(DatasetError, match="missing site review file: .*nope.tsv"):
        read_review(tmp_path / "nope.tsv", ["a.jpg"], "/pool")
