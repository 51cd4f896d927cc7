"""`run_search.py benchmark-knn`: the knn variant's bank, memory and time, at growing train sizes.

Train crops are random uint8 crops at the decode size (a bank's cost does not depend on what
the crops show). For each size and feature space: the bank's bytes (what every checkpoint of
such a trial carries), the fit's seconds, and the seconds to score a batch of query crops by
exact search in torch, with the ratio to the smallest size measured in the same run.
"""
from __future__ import annotations

import logging
import time

import pandas as pd
import torch

from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.training import build_trial, fit_closed_form
from anomaly_ae.detector.validation import score_images
from search_spaces.baselines import KNN_REFERENCE

logger = logging.getLogger(__name__)

FEATURE_SPACES = {"pixels 16x24 (knn5)": {}, "PCA 64 of pixels 16x24": {"knn.pca_dim": 64}}


def benchmark_knn(sizes=(10_000, 100_000), queries: int = 1000, height: int = 32, width: int = 48,
                  seed: int = 0) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        train = torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=gen)
        probe = torch.randint(0, 256, (queries, height, width, 3), dtype=torch.uint8, generator=gen)
        for space, extra in FEATURE_SPACES.items():
            cfg = validate_config({**KNN_REFERENCE, **extra})
            state = build_trial(cfg, train, torch.device("cpu"))
            tick = time.perf_counter()
            fit_closed_form(state, cfg, train)
            fit_s = time.perf_counter() - tick
            tick = time.perf_counter()
            score_images(state, cfg, probe)
            score_s = time.perf_counter() - tick
            bank = state.model.bank
            rows.append({"train_crops": n, "features": space, "bank_dim": bank.shape[1],
                         "bank_mb": bank.numel() * bank.element_size() / 2**20, "fit_s": fit_s,
                         f"score_{queries}_s": score_s, "ms_per_crop": 1000 * score_s / queries})
            logger.info(f"  {n} crops, {space}: bank {rows[-1]['bank_mb']:.1f} MB, fit {fit_s:.1f}s, "
                        f"{queries} queries {score_s:.2f}s")
    frame = pd.DataFrame(rows)
    first = frame.groupby("features")[f"score_{queries}_s"].transform("first")
    frame["score_vs_smallest"] = frame[f"score_{queries}_s"] / first
    return frame
