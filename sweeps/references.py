"""Classical reference detectors, scored on a sweep's own splits beside the seed baselines.

- ``pca16``: a 16-component PCA reconstruction, RGB at 32x48, scored by MSE: the classical
  reconstruction-error detector. It is the ``pca_ae`` variant at fixed settings.
- ``knn5``: the mean Euclidean distance to the 5 nearest training crops, RGB pixels at 32x48
  pooled to 16x24. It is the ``knn`` variant at fixed settings.

Both fit in seconds without gradient steps, and both are enqueued as start points
(``start:pca16``, ``start:knn5``), so the trial that reproduces a winning reference can be promoted. Their objective is computed exactly as a trial's
(same splits, same TNR target, same objective), with their own fixed score.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.training import build_trial, fit_closed_form
from anomaly_ae.detector.validation import SiteInput, nuisance_split, score_images, score_summary, site_metrics
from anomaly_ae.stats.metrics import TNR_TARGET
from anomaly_ae.stats.selection import score_objective
from anomaly_ae.stats.selection import DEFAULT_OBJECTIVE
from search_spaces.baselines import KNN_REFERENCE, PCA_REFERENCE

REFERENCES = {"pca16": (PCA_REFERENCE, "PCA, 16 components, RGB 32x48, MSE"),
              "knn5": (KNN_REFERENCE, "kNN distance, k=5, RGB pixels 32x48 pooled to 16x24")}
REFERENCE_NAMES = tuple(REFERENCES)


@dataclass
class Reference:
    name: str
    description: str
    score: Callable[[torch.Tensor], np.ndarray]  # uint8 crops (N, H, W, 3) -> one score each
    val_scores: dict  # {"normal": array, "spill": array} (+ "site": array)
    metrics: dict  # score_summary of the validation scores (+ tpr_at_tnr_shift, + the site metrics)
    objective: float
    fit_seconds: float


def variant_scorer(raw: dict, train_u8: torch.Tensor, tnr_target: float):
    """A closed-form variant fitted on the train crops, scoring uint8 crops by the config's own score."""
    cfg = validate_config({**raw, "tnr_target": tnr_target})
    state = build_trial(cfg, train_u8, torch.device("cpu"))
    fit_closed_form(state, cfg, train_u8)
    return lambda u8: score_images(state, cfg, u8)[0][cfg["score"]]


def fit_reference(name: str, splits, tnr_target: float = TNR_TARGET, objective: str = DEFAULT_OBJECTIVE) -> Reference:
    """Fit one reference on the train split and score it on validation (and its nuisance copy)."""
    tick = time.perf_counter()
    train = torch.from_numpy(np.ascontiguousarray(splits.train))
    if name not in REFERENCES:
        raise ValueError(f"unknown reference detector {name!r}; valid: {list(REFERENCE_NAMES)}")
    raw, description = REFERENCES[name]
    scorer = variant_scorer(raw, train, tnr_target)
    normal = torch.from_numpy(np.ascontiguousarray(splits.val_normal))
    spill = torch.from_numpy(np.ascontiguousarray(splits.val_spill))
    val = {"normal": scorer(normal), "spill": scorer(spill)}
    metrics = score_summary(val["normal"], val["spill"], tnr_target)
    shifted = nuisance_split(normal, spill, {"objective": objective})
    if shifted is not None:  # the same perturbed crops the trials are judged on
        metrics["tpr_at_tnr_shift"] = score_summary(scorer(shifted[0]), scorer(shifted[1]), tnr_target)["tpr_at_tnr"]
    site = SiteInput.of(splits)
    if site is not None:  # the same pool and rule the trials are judged with
        val["site"] = scorer(site.images)
        matched = scorer(site.matched_spills) if site.matched_spills is not None else None
        metrics.update(site_metrics(val["site"], val["spill"], tnr_target, site, matched))
    return Reference(name, description, scorer, val, metrics, score_objective(metrics, objective),
                     time.perf_counter() - tick)


def fit_references(splits, tnr_target: float = TNR_TARGET, objective: str = DEFAULT_OBJECTIVE) -> list[Reference]:
    return [fit_reference(name, splits, tnr_target, objective) for name in REFERENCE_NAMES]
