"""The site review promote hands to a person: the highest-scored crops of the pool's calibration part
(every one above the shipped threshold, and at least ``REVIEW_SIZE``), as a file to fill
(``site_review.tsv``) and a page to fill it from (``site_review.html``).

A review restores power (Bashari, Sesia and Romano, ICML 2025): the site rule must assume every pool
crop may be a spill scoring just below the threshold, so each confirmed spill taken out of the pool
frees a false-alarm slot. Crops marked normal stay in the pool; a normal marked spill by mistake takes
a normal out and lowers the threshold by one crop, which the guarantee does not cover.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly_ae.data.site import REVIEW_HEADER, Review, SitePool, review_rows, write_review

REVIEW_FILE = "site_review.tsv"
REVIEW_PAGE = "site_review.html"
PAGE_SCALE = 4  # 32x48 crops shown at 128x192 pixels
LOGGED_IMAGES = 16  # the top listed crops logged to the promotion run as MLflow images
# A round lists at least this many crops: the rule's threshold often sits above every pool normal, so the
# crops above it are all spills and a review of those alone frees few slots; the next ones down are where
# a person's marks move the threshold.
REVIEW_SIZE = 40


@dataclass
class ReviewFiles:
    table: Path
    page: Path
    rows: list[tuple[str, float, str]]

    threshold: float

    @property
    def undecided(self) -> int:
        return sum(1 for _, _, verdict in self.rows if not verdict)

    @property
    def above(self) -> int:
        return sum(1 for _, score, _ in self.rows if score > self.threshold)


def review_crops(scores, threshold: float, pool: SitePool, size: int = REVIEW_SIZE) -> list[tuple[str, float]]:
    """The pool's highest-scored crops, (name, score), highest first: every one above ``threshold``, and at
    least ``size``."""
    rows = sorted(((name, float(s)) for name, s in zip(pool.names, scores)), key=lambda r: -r[1])
    above = sum(1 for _, s in rows if s > threshold)
    return rows[:max(above, size)]


def upscaled(image: np.ndarray, scale: int = PAGE_SCALE) -> np.ndarray:
    return np.repeat(np.repeat(np.asarray(image, dtype=np.uint8), scale, axis=0), scale, axis=1)


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(upscaled(image)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def crop_figure(i: int, name: str, score: float, verdict: str, image: np.ndarray | None, threshold: float) -> str:
    """One crop of the page: the picture (or why it is gone), its score, and the spill / normal choice."""
    picture = (f'<img src="{png_data_uri(image)}" alt="{html.escape(name)}">' if image is not None
               else '<div class="gone">left out of the pool<br>(an earlier round marked it)</div>')
    choices = "".join(
        f'<label><input type="radio" name="v{i}" value="{value}"{" checked" if verdict == value else ""}> '
        f'{label}</label>' for value, label in (("spill", "spill"), ("normal", "normal"), ("", "not looked at")))
    score_text = "" if math.isnan(score) else f"{score:.6g}"
    flag = " · <b>above the threshold</b>" if score > threshold else ""
    return (f'<figure class="crop" data-name="{html.escape(name)}" data-score="{score_text}">{picture}'
            f'<figcaption>{html.escape(name)} · score {score_text or "-"}{flag}</figcaption>{choices}</figure>')


def review_page(rows: list[tuple[str, float, str]], images: dict[str, np.ndarray], title: str,
                threshold: float = math.inf) -> str:
    """A self-contained page: each crop at a readable size with its score, a spill / normal choice, and a
    button that saves the review file exactly as ``read_review`` reads it."""
    figures = [crop_figure(i, name, score, verdict, images.get(name), threshold)
               for i, (name, score, verdict) in enumerate(rows)]
    header = json.dumps("\t".join(REVIEW_HEADER))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.crop {{ margin: 0; padding: .5em; border: 1px solid #ccc; width: {48 * PAGE_SCALE}px; }}
.crop img {{ width: {48 * PAGE_SCALE}px; height: {32 * PAGE_SCALE}px; image-rendering: pixelated; display: block; }}
.crop label {{ display: block; }}
.gone {{ height: {32 * PAGE_SCALE}px; color: #777; display: flex; align-items: center; text-align: center; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>The highest-scored crops of the part of the site pool that fixed the shipped threshold ({threshold:.6g}),
highest first. Mark the ones you can judge, then save: the file goes to <code>run_search.py promote --site-review FILE</code> as it is.
A crop marked <b>spill</b> is taken out of the pool; a crop marked <b>normal</b> stays. Mark only what you saw:
a normal marked spill lowers the threshold by one crop, and the promised TNR no longer holds.</p>
<p><button id="save">Save {REVIEW_FILE}</button> <span id="counts"></span></p>
<div class="grid">
{chr(10).join(figures)}
</div>
<script>
function reviewText() {{
  const lines = ["# site review saved from {REVIEW_PAGE}", {header}];
  document.querySelectorAll("figure.crop").forEach((fig, i) => {{
    const picked = fig.querySelector("input:checked");
    lines.push([fig.dataset.name, fig.dataset.score, picked ? picked.value : ""].join("\\t"));
  }});
  return lines.join("\\n") + "\\n";
}}
function count() {{
  const marks = [...document.querySelectorAll("input:checked")].map(x => x.value);
  document.getElementById("counts").textContent =
    `${{marks.filter(v => v === "spill").length}} spill, ${{marks.filter(v => v === "normal").length}} normal, ` +
    `${{marks.filter(v => v === "").length}} not looked at`;
}}
document.querySelectorAll("input").forEach(x => x.addEventListener("change", count));
count();
document.getElementById("save").addEventListener("click", () => {{
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([reviewText()], {{type: "text/tab-separated-values"}}));
  a.download = "{REVIEW_FILE}";
  document.body.appendChild(a);
  a.click();
  a.remove();
}});
</script>
</body></html>
"""


def write_review_files(scores, threshold: float, pool: SitePool, earlier: Review | None, folder: Path,
                       title: str) -> ReviewFiles:
    """The review file and its page for the highest-scored crops of ``pool`` (``review_crops``), with the
    earlier rounds' verdicts carried over."""
    rows = review_rows(review_crops(scores, threshold, pool), earlier)
    images = dict(zip(pool.names, pool.images))
    folder = Path(folder)
    table = write_review(rows, folder / REVIEW_FILE)
    page = folder / REVIEW_PAGE
    page.write_text(review_page(rows, images, title, threshold), encoding="utf-8")
    return ReviewFiles(table, page, rows, threshold)


def log_review(client, run_id: str, files: ReviewFiles, pool: SitePool) -> None:
    """The file, the page and the top flagged crops (MLflow images, upscaled) in the promotion run."""
    client.log_artifact(run_id, str(files.table), "review")
    client.log_artifact(run_id, str(files.page), "review")
    images = dict(zip(pool.names, pool.images))
    top = [(name, score) for name, score, verdict in files.rows if not verdict and name in images][:LOGGED_IMAGES]
    for rank, (name, score) in enumerate(top, start=1):
        client.log_image(run_id, upscaled(images[name]), artifact_file=f"review/top/{rank:02d}_{Path(name).stem}.png")
