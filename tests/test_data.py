import numpy as np
import pytest
from PIL import Image

from anomaly_ae.data import DatasetError, load_proliv, load_site_pool, make_dataset, make_splits
from anomaly_ae.data.synthetic import COUNTS


def write_layout(root, n_train=3, n_proliv=2, annotation="a.png 0\nb.png 1\n"):
    for sub in ("train", "proliv", "test/imgs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.full((30, 48, 3), 120, np.uint8))
    for i in range(n_train):
        img.save(root / "train" / f"{i}.jpg")
    for i in range(n_proliv):
        img.save(root / "proliv" / f"{i}.jpeg")
    img.save(root / "test" / "imgs" / "a.png")
    img.save(root / "test" / "imgs" / "b.png")
    (root / "test" / "test_annotation.txt").write_text(annotation)
    return root


def test_loads_layout_and_resizes(tmp_path):
    data = load_proliv(write_layout(tmp_path / "d"), size=(32, 48), cache_dir=tmp_path / "c")
    assert data.train.shape == (3, 32, 48, 3) and data.train.dtype == np.uint8
    assert data.proliv.shape == (2, 32, 48, 3)
    assert list(data.test_labels) == [0, 1] and data.test_names == ["a.png", "b.png"]


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    root = write_layout(tmp_path / "d")
    cache = tmp_path / "c"
    first = load_proliv(root, cache_dir=cache)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1
    # Poison the cached array: a reload that reads the cache sees the poisoned values.
    with np.load(files[0]) as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["train"][:] = 7
    np.savez(files[0], **arrays)
    assert (load_proliv(root, cache_dir=cache).train == 7).all()
    # Changed content -> new key -> fresh decode.
    Image.fromarray(np.zeros((30, 48, 3), np.uint8)).save(root / "train" / "0.jpg")
    again = load_proliv(root, cache_dir=cache)
    assert again.content_hash != first.content_hash and not (again.train == 7).all()
    assert len(list(cache.glob("*.npz"))) == 2
    assert not list(cache.glob("*.tmp"))


def test_missing_folder_named(tmp_path):
    root = write_layout(tmp_path / "d")
    for p in (root / "proliv").iterdir():
        p.unlink()
    (root / "proliv").rmdir()
    with pytest.raises(DatasetError, match=r"missing folder: .*proliv"):
        load_proliv(root, cache_dir=tmp_path / "c")
    with pytest.raises(DatasetError, match="missing dataset folder"):
        load_proliv(tmp_path / "nope")


def test_empty_folder_named(tmp_path):
    root = write_layout(tmp_path / "d", n_train=0)
    with pytest.raises(DatasetError, match=r"empty folder: .*train"):
        load_proliv(root, cache_dir=tmp_path / "c")


def test_corrupt_image_named_and_no_cache_written(tmp_path):
    root = write_layout(tmp_path / "d")
    (root / "train" / "1.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DatasetError, match=r"corrupt or unreadable image: .*train/1\.jpg"):
        load_proliv(root, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())


@pytest.mark.parametrize("annotation,message", [
    ("a.png 0\nb.png\n", r"test_annotation\.txt:2: expected 'NAME LABEL'"),
    ("a.png 0\nb.png 2\n", r"test_annotation\.txt:2: label must be 0 or 1, got '2'"),
    ("a.png 0\n\nc.png 1\n", r"test_annotation\.txt:3: annotated image 'c\.png' not found"),
    ("a.png 0\na.png 1\n", r"test_annotation\.txt:2: 'a\.png' is annotated twice"),
    ("\n", r"test_annotation\.txt: no annotations"),
])
def test_bad_annotation_named_with_line(tmp_path, annotation, message):
    root = write_layout(tmp_path / "d", annotation=annotation)
    with pytest.raises(DatasetError, match=message):
        load_proliv(root, cache_dir=tmp_path / "c")


def test_splits_are_seeded_and_disjoint(tiny_data_dir, tmp_path):
    data = load_proliv(tiny_data_dir, cache_dir=tmp_path)
    a, b = make_splits(data, 0.25, 1.0, seed=3), make_splits(data, 0.25, 1.0, seed=3)
    assert np.array_equal(a.val_normal, b.val_normal)
    assert len(a.train) + len(a.val_normal) == len(data.train)
    c = make_splits(data, 0.25, 1.0, seed=4)
    assert not np.array_equal(a.val_normal, c.val_normal)
    half = make_splits(data, 0.25, 0.5, seed=3)
    assert len(half.val_spill) == round(0.5 * len(data.proliv))


def test_generated_dataset_counts_and_look(tmp_path):
    counts = make_dataset(tmp_path / "gen", scale=0.05, seed=2)
    assert counts == {"train": 500, "proliv": 8, "test": round(COUNTS["test_normal"] * 0.05) + 6, "test_spills": 6,
                      "site": 160}
    lines = (tmp_path / "gen" / "test" / "test_annotation.txt").read_text().split("\n")
    assert sum(line.endswith(" 1") for line in lines) == 6
    sizes = {Image.open(p).size for p in (tmp_path / "gen" / "train").iterdir()}
    assert all(44 <= w <= 52 and 28 <= h <= 32 for w, h in sizes)
    data = load_proliv(tmp_path / "gen", cache_dir=tmp_path / "c")
    mean = data.train.reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, [0.42, 0.53, 0.46], atol=0.03)
    # Spills are brighter in the middle column band than normals, on average.
    mid = slice(18, 30)
    assert data.proliv[:, :, mid].mean() > data.train[:, :, mid].mean() + 2


def test_generator_is_deterministic_and_refuses_overwrite(tmp_path):
    make_dataset(tmp_path / "a", scale=0.01, seed=5)
    make_dataset(tmp_path / "b", scale=0.01, seed=5)
    assert (tmp_path / "a/train/00003.jpg").read_bytes() == (tmp_path / "b/train/00003.jpg").read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        make_dataset(tmp_path / "a", scale=0.01, seed=5)


# ------------------------------------------------------------------ the site pool

def test_site_pool_is_loaded_cached_and_part_of_the_hash(tmp_path):
    root = write_layout(tmp_path / "d")
    cache = tmp_path / "c"
    without = load_proliv(root, cache_dir=cache)
    assert without.site is None and without.content_hash == without.labelled_hash
    (root / "site").mkdir()
    img = Image.fromarray(np.full((30, 48, 3), 200, np.uint8))
    for i in range(4):
        img.save(root / "site" / f"s{i}.png")
    data = load_proliv(root, cache_dir=cache, site_max_spill_fraction=0.02, site_delta=0.1)
    assert data.site.images.shape == (4, 32, 48, 3) and data.site.names == [f"s{i}.png" for i in range(4)]
    assert (data.site.spill_bound, data.site.delta) == (0.02, 0.1)
    # Same labelled data, new pool: the dataset hash moves, the labelled hash does not.
    assert data.labelled_hash == without.labelled_hash and data.content_hash != without.content_hash
    assert len(list(cache.glob("*.npz"))) == 2
    again = load_proliv(root, cache_dir=cache)  # from the cache
    assert np.array_equal(again.site.images, data.site.images) and again.site.content_hash == data.site.content_hash
    img.rotate(90).save(root / "site" / "s0.png")
    assert load_proliv(root, cache_dir=cache).content_hash != data.content_hash


def test_site_pool_elsewhere_and_its_errors(tmp_path):
    root = write_layout(tmp_path / "d")
    with pytest.raises(DatasetError, match="missing site pool folder: .*nowhere"):
        load_proliv(root, cache_dir=tmp_path / "c", site=tmp_path / "nowhere")
    (tmp_path / "pool").mkdir()
    with pytest.raises(DatasetError, match="empty folder: .*pool"):
        load_proliv(root, cache_dir=tmp_path / "c", site=tmp_path / "pool")
    (root / "site").mkdir()  # an empty ROOT/site/ is refused too, not silently ignored
    with pytest.raises(DatasetError, match="empty folder: .*site"):
        load_proliv(root, cache_dir=tmp_path / "c")
    Image.fromarray(np.zeros((30, 48, 3), np.uint8)).save(tmp_path / "pool" / "ok.png")
    (tmp_path / "pool" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="corrupt or unreadable image: .*bad.jpg"):
        load_proliv(root, cache_dir=tmp_path / "c", site=tmp_path / "pool")
    assert not list(tmp_path.glob("c/*.npz"))  # nothing cached from a refused load
    (tmp_path / "pool" / "bad.jpg").unlink()
    pool = load_site_pool(tmp_path / "pool", (32, 48))
    assert pool.images.shape == (1, 32, 48, 3) and pool.describe()["site_size"] == "1"


def test_generated_site_pool_is_unlabelled_shifted_and_disjoint_from_test(tmp_path):
    from anomaly_ae.data.synthetic import SITE_MIN

    make_dataset(tmp_path / "gen", scale=0.05, seed=2)
    site = sorted((tmp_path / "gen" / "site").iterdir())
    assert len(site) == SITE_MIN and all(p.suffix == ".jpg" for p in site)  # images only: no labels beside them
    data = load_proliv(tmp_path / "gen", cache_dir=tmp_path / "c")
    test_bytes = {(tmp_path / "gen" / "test" / "imgs" / n).read_bytes() for n in data.test_names}
    assert not any(p.read_bytes() in test_bytes for p in site)
    # Drawn under the test conditions: brighter and warmer than train, like test normals.
    normals = data.test[data.test_labels == 0].reshape(-1, 3).mean(0)
    assert data.site.images.reshape(-1, 3).mean(0)[0] > data.train.reshape(-1, 3).mean(0)[0] + 3
    assert np.allclose(data.site.images.reshape(-1, 3).mean(0), normals, atol=3)


def test_reviewed_spills_leave_the_pool_and_the_bound_shrinks_by_as_many(tmp_path):
    from anomaly_ae.data.site import reviewed_bound

    # 1,000 crops at a 5% bound allow 50 spills; a review took 30 out: at most 20 among the 970 left.
    assert reviewed_bound(1000, 0.05, 30) == pytest.approx(20 / 970)
    with pytest.raises(DatasetError, match="found 51 spills .* more than the stated bound of 0.05 allows \\(50\\)"):
        reviewed_bound(1000, 0.05, 51)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(6):
        Image.fromarray(np.full((30, 48, 3), 40 * i, np.uint8)).save(pool / f"{i}.png")
    review = tmp_path / "spills.txt"
    review.write_text("# confirmed by a review (the old form: one spill's name a line)\n4.png\n5.png\n")
    site = load_site_pool(pool, (32, 48), max_spill_fraction=0.5, review=review)
    assert site.names == ["0.png", "1.png", "2.png", "3.png"] and site.removed == ("4.png", "5.png")
    assert site.spill_bound == pytest.approx(1 / 4)  # floor(0.5 * 6) - 2 = 1 of the 4 left
    assert site.describe()["site_max_spill_fraction"] == "0.5" and site.describe()["site_review_spills"] == "2"
    review.write_text("4.png\nnot-there.png\n")
    with pytest.raises(DatasetError, match="spills.txt:2: 'not-there.png' is not a crop of the site pool"):
        load_site_pool(pool, (32, 48), review=review)


def test_site_truth_is_the_generators_draw_and_a_simulated_review_marks_by_it(tiny_data_dir, tmp_path):
    from anomaly_ae.data.site import read_review, review_rows, write_review
    from anomaly_ae.data.synthetic import SITE_MIN, site_truth
    from benchmarks.review import simulate_review

    truth = site_truth(seed=1, scale=0.02)  # the tiny_data_dir fixture's dataset
    names = sorted(p.name for p in (tiny_data_dir / "site").iterdir())
    assert sorted(truth) == names and len(names) == SITE_MIN and 0 < sum(truth.values()) < 20
    # The drawn spills are the crops with the bright streak: their brightest pixel stands well above the normals'.
    data = load_proliv(tiny_data_dir, cache_dir=tmp_path / "c")
    brightest = data.site.images.max(axis=(1, 2, 3)).astype(float)
    is_spill = np.array([truth[n] for n in data.site.names])
    assert brightest[is_spill].mean() > brightest[~is_spill].mean() + 3 * brightest[~is_spill].std()
    # A review of the top crops, marked by the draw; the limit leaves the rest undecided.
    listed = [n for n in names if truth[n]][:3] + [n for n in names if not truth[n]][:3]
    review = write_review(review_rows([(n, 10.0 - i) for i, n in enumerate(listed)]), tmp_path / "r.tsv")
    counts = simulate_review(review, tmp_path / "marked.tsv", seed=1, scale=0.02, limit=4)
    assert counts == {"marked": 4, "spills": 3, "listed": 6}
    marked = read_review(tmp_path / "marked.tsv", names, "/site")
    assert marked.spills == set(listed[:3]) and marked.normals == {listed[3]}
    assert marked.verdicts[listed[4]] == marked.verdicts[listed[5]] == ""
