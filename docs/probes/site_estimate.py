"""Probe behind docs/results.md §15: on the generated default dataset, where the generator knows which
site crops are spills, how the matched calibration's spill estimate and rank compare with the truth and
with the rank an oracle that knew every spill would take.

    python docs/probes/site_estimate.py CHECKPOINT [DATA]   # DATA: the default dataset, seed 0, scale 1
"""
import sys
from pathlib import Path

import numpy as np
import torch

from anomaly_ae.data import load_proliv, make_splits
from anomaly_ae.data.synthetic import site_truth
from anomaly_ae.detector.checkpoints import load_checkpoint, load_trained
from anomaly_ae.detector.validation import score_images
from anomaly_ae.stats.thresholds import matched_site_threshold, neyman_pearson_rank, site_rank, spill_share_estimate

payload = load_checkpoint(Path(sys.argv[1]))
state, cfg = load_trained(payload, torch.device("cpu")), payload["config"]
data = load_proliv(sys.argv[2] if len(sys.argv) > 2 else "data/default", (cfg["image_height"], cfg["image_width"]))
splits = make_splits(data)


def scores(u8):
    return score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(u8)))[0][cfg["score"]]


pool = splits.site_calibration
truth = site_truth(0, 1.0)
spill = np.array([truth[name] for name in pool.names], bool)
pool_scores, carried_normal, carried_spill = scores(pool.images), scores(splits.val_normal_matched), scores(splits.val_spill_matched)
print(f"calibration part: {spill.size} crops, {spill.sum()} spills (share {spill.mean():.4f}); "
      f"the estimate {spill_share_estimate(pool_scores, carried_normal):.4f}")
for q in (0.9, 0.95, 0.99):
    t = np.quantile(carried_normal, q)
    print(f"  at the carried normals' {q} quantile the site's normals are {np.mean(pool_scores[~spill] <= t):.4f} below it")
_, info = matched_site_threshold(pool_scores, carried_normal, carried_spill)
normals = np.sort(pool_scores[~spill])
oracle_normal_rank = neyman_pearson_rank(normals.size)
oracle = oracle_normal_rank + int(np.sum(pool_scores[spill] <= normals[oracle_normal_rank - 1]))
ordered = np.sort(pool_scores)
for name, rank in (("distribution_free", site_rank(spill.size)), ("matched", int(info["site_rank"])), ("oracle", oracle)):
    t = ordered[rank - 1]
    print(f"{name:18s} rank {rank}: the part's normals TNR {np.mean(pool_scores[~spill] <= t):.4f}, "
          f"its spills TPR {np.mean(pool_scores[spill] > t):.4f}")
