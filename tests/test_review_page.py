"""The site review page in a real browser: Playwright drives Debian's Chromium over the page promote
writes; the file its button saves is read back by the same reader promote uses.

Skipped, with the reason, where /usr/bin/chromium or Playwright is absent; CI installs both.
"""
from pathlib import Path

import numpy as np
import pytest

from anomaly_ae.data import SitePool
from anomaly_ae.data.site import read_review, review_rows
from sweeps.review import PAGE_SCALE, REVIEW_FILE, write_review_files

pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def test_a_person_marks_crops_on_the_page_and_saves_a_file_promote_reads(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    rng = np.random.default_rng(0)
    names = [f"{i:03d}.jpg" for i in range(8)]
    pool = SitePool(rng.integers(0, 255, (8, 32, 48, 3), dtype=np.uint8), names, "h", "/pool", 0.5, 0.05)
    scores = np.array([0.1, 5.0, 0.2, 4.0, 3.0, 0.3, 0.4, 2.0])
    # An earlier round marked 006.jpg normal; it is below the threshold now and still listed with its verdict.
    earlier = read_review(_written(tmp_path, review_rows([("006.jpg", 2.5)])), names, "/pool")
    earlier.verdicts["006.jpg"] = "normal"
    files = write_review_files(scores, 1.0, pool, earlier, tmp_path / "out", "Site review: test")
    # Every crop above the threshold, then the next ones down: at least REVIEW_SIZE (all 8 here).
    assert [r[0] for r in files.rows] == ["001.jpg", "003.jpg", "004.jpg", "007.jpg", "006.jpg", "005.jpg", "002.jpg",
                                          "000.jpg"]
    assert (files.above, files.undecided) == (4, 7)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900}, accept_downloads=True)
            page.goto(files.page.as_uri())
            figures = page.locator("figure.crop")
            assert figures.count() == 8
            # Readable size: each crop drawn at PAGE_SCALE times its pixels.
            box = figures.nth(0).locator("img").bounding_box()
            assert (round(box["width"]), round(box["height"])) == (48 * PAGE_SCALE, 32 * PAGE_SCALE)
            assert "score 5 · above the threshold" in figures.nth(0).inner_text()
            assert "above the threshold" not in figures.nth(4).inner_text()
            assert figures.nth(4).locator("input[value=normal]").is_checked()  # the earlier verdict, kept
            figures.nth(0).locator("input[value=spill]").check()
            figures.nth(2).locator("input[value=normal]").check()
            assert page.locator("#counts").inner_text() == "1 spill, 2 normal, 5 not looked at"
            SCREENSHOTS.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "site_review_page.png"), full_page=True)
            with page.expect_download() as download:
                page.get_by_role("button", name=f"Save {REVIEW_FILE}").click()
            saved = tmp_path / "saved.tsv"
            download.value.save_as(saved)
            assert download.value.suggested_filename == REVIEW_FILE
        finally:
            browser.close()
    review = read_review(saved, names, "/pool")
    assert review.spills == {"001.jpg"} and review.normals == {"004.jpg", "006.jpg"}
    assert review.verdicts["003.jpg"] == review.verdicts["007.jpg"] == review.verdicts["000.jpg"] == ""
    assert review.scores["001.jpg"] == 5.0


def _written(tmp_path, rows):
    from anomaly_ae.data.site import write_review

    return write_review(rows, tmp_path / "earlier.tsv")
