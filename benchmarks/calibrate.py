"""Calibrate the default dataset: train named configs without Ray, then test once.

    python run_search.py calibrate --data data/default --configs seed000 strong
    python run_search.py calibrate --data data/default --configs pca32 strong --epochs 3 --invariance

For each config: train on the train split, fix the threshold on validation with
the config's policy (tnr_target for both here) and, with a site pool, on the pool
by the site rule; evaluate once on test. Prints one line per config; docs/results.md's
calibration and invariance tables come from this. ``--invariance`` trains each
config once as it is and once with each invariance option of the search space.
"""
from __future__ import annotations

import logging
import time

import torch

from anomaly_ae.data import load_proliv, make_splits
from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.testing import test_report
from anomaly_ae.detector.validation import train_and_validate
from search_spaces.baselines import SEED_BASELINES

# A config the search space can reach that copes with the test shift: brightness,
# contrast and colour jitter plus small shifts in training, and a local score.
CALIBRATION_CONFIGS = {
    "seed000": {**SEED_BASELINES["seed000"]},
    "strong": {
        "variant": "conv_ae", "conv_ae.base_width": 32, "conv_ae.depth": 3, "conv_ae.latent_channels": 8,
        "image_height": 32, "image_width": 48, "normalisation": "none",
        "hflip": True, "shift_px": 2.0, "brightness_jitter": 0.12, "contrast_jitter": 0.1, "colour_jitter": 0.04,
        "optimizer": "adam", "lr": 2e-3, "batch_size": 64, "epochs": 15,
        "loss": "mse", "score": "smooth_max", "smooth_max.sigma": 1.0, "threshold_policy": "tnr_target",
    },
    # The quick sweep's usual champion family: PCA with the same augmentation and a top-k score.
    "pca32": {
        "variant": "pca_ae", "pca_ae.n_components": 32, "image_height": 32, "image_width": 48,
        "shift_px": 2.0, "brightness_jitter": 0.1, "contrast_jitter": 0.1, "colour_jitter": 0.03,
        "score": "topk", "topk.fraction": 0.02, "threshold_policy": "tnr_target",
    },
}
# The invariance options of the search space, each added alone to a config (--invariance).
INVARIANCE_OPTIONS = {
    "as is": {},
    "per_crop": {"normalisation": "per_crop"},
    "blur 1.0": {"blur_sigma": 1.0},
    "shift 4px": {"shift_px": 4.0},
}

logger = logging.getLogger(__name__)


def run_config(name: str, raw: dict, splits, epochs: int | None, also_scores=()) -> dict:
    cfg = validate_config({**raw, **({"epochs": epochs} if epochs else {})})
    tick = time.perf_counter()

    def progress(epoch, loss):
        logger.info(f"  {name} epoch {epoch}/{cfg['epochs']} loss {loss:.5f} ({time.perf_counter() - tick:.0f}s)")

    state, metrics, val_scores, _ = train_and_validate(cfg, splits, on_epoch=progress)
    seconds = round(time.perf_counter() - tick, 1)
    rows = []
    # Other scores of the same trained model: one forward pass yields them all.
    for score in (cfg["score"], *(s for s in also_scores if s != cfg["score"])):
        report = test_report(state, {**cfg, "score": score}, splits, val_scores)
        row = {
            "config": name, "epochs": cfg["epochs"], "score": score,
            "val_tpr_at_tnr": round(metrics[score]["tpr_at_tnr"], 4),
            "test_tpr": round(report["tpr"], 4), "test_tnr": round(report["tnr"], 4),
            "test_tpr_ci": [round(v, 3) for v in report["tpr_ci"]],
            "test_auroc": round(report["auroc"], 4),
            "test_oracle_tpr_at_tnr": round(report["oracle_tpr_at_tnr"], 4),
            "seconds": seconds,
        }
        if "site" in report:
            row.update({"val_tpr_at_site": round(metrics[score]["tpr_at_site"], 4),
                        "val_site_margin": round(metrics[score]["site_margin"], 4),
                        "site_test_tpr": round(report["site"]["tpr"], 4),
                        "site_test_tnr": round(report["site"]["tnr"], 4)})
        rows.append(row)
    return rows


def calibrate(data, configs, epochs: int | None = None, threads: int = 2, also_scores=(), invariance: bool = False):
    """Train each calibration config (and, with ``invariance``, each invariance option alone); yield one row
    per config and score."""
    torch.set_num_threads(threads)
    splits = make_splits(load_proliv(data))
    options = INVARIANCE_OPTIONS if invariance else {"as is": {}}
    for name in configs:
        for option, extra in options.items():
            label = name if option == "as is" else f"{name} + {option}"
            yield from run_config(label, {**CALIBRATION_CONFIGS[name], **extra}, splits, epochs, also_scores)
