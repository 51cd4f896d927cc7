"""make-data --kind textures: a real texture photograph, defects of other real content, a shift."""
import hashlib

import numpy as np
import pytest

from anomaly_ae.data import load_proliv
from anomaly_ae.data.textures import make_textures


def digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())).hexdigest()


@pytest.fixture(scope="module")
def textures(tmp_path_factory):
    root = tmp_path_factory.mktemp("textures") / "gravel"
    return root, make_textures(root, seed=0)


def test_the_texture_set_has_the_proliv_layout_and_its_counts(textures, tmp_path):
    root, counts = textures
    assert counts == {"train": 2000, "proliv": 60, "test": 645, "test_spills": 45, "site": 600}
    data = load_proliv(root, cache_dir=tmp_path / "cache", site=root / "site")
    assert data.train.shape == (2000, 32, 48, 3) and int(data.test_labels.sum()) == 45
    # Test normals are under other light than train: brighter on average.
    test_normals = data.test[data.test_labels == 0]
    assert test_normals.mean() > data.train.mean() + 10


def test_the_same_seed_writes_the_same_set_and_another_seed_another(textures, tmp_path):
    root, _ = textures
    make_textures(tmp_path / "again", seed=0)
    make_textures(tmp_path / "other", seed=1)
    assert digest(tmp_path / "again") == digest(root) != digest(tmp_path / "other")


def test_an_unknown_texture_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="unknown texture 'marble'"):
        make_textures(tmp_path / "x", texture="marble")


def test_defects_change_the_crop_locally_in_the_surfaces_tint():
    from anomaly_ae.data import textures as t

    rng = np.random.default_rng(0)
    crop = np.round(120 * t.TINT * np.ones((32, 48, 1))).astype(np.uint8)
    for name, defect in (("photo", lambda c: t.photo_piece(c, t._donors(), rng)), ("scratch", lambda c: t.scratch(c, rng)),
                         ("stain", lambda c: t.stain(c, rng))):
        out = defect(crop).astype(float)
        changed = np.abs(out - crop).sum(2) > 3
        assert 0.005 < changed.mean() < 0.5, name  # a local defect, not the whole crop
        # Colour gives nothing away: every pixel keeps the tint's blue-to-red ratio (up to rounding).
        bright = out[..., 0] > 40
        ratio = out[bright][:, 2] / out[bright][:, 0]
        assert np.abs(ratio - t.TINT[2] / t.TINT[0]).max() < 0.05, name
