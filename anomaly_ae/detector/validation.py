"""Validation of a trained model: every score on the validation split (and its perturbed copy, and
the site pool), their metrics, and the verdict that judges the trial."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from anomaly_ae.detector.config import score_params
from anomaly_ae.detector.nuisance import perturb_nuisance
from anomaly_ae.detector.scores import RESIDUAL_SCORES, compute_scores
from anomaly_ae.detector.training import TrialState, build_trial, model_input, needs_perceptual, train_one_epoch
from anomaly_ae.models import model_spec
from anomaly_ae.models.registry import LATENT_SCORES
from anomaly_ae.stats.metrics import detection_summary, operating_margin
from anomaly_ae.stats.selection import choose_score, score_objective, selection_bias, site_summary
from anomaly_ae.stats.thresholds import SITE_RISK, SITE_SPILL_BOUND


def score_types_for(cfg: dict) -> list[str]:
    """Every score derivable from this trial's forward pass (and its latent bank)."""
    spec = model_spec(cfg["variant"])
    types = (list(RESIDUAL_SCORES) if spec.residual_scores else []) + list(spec.extra_scores)
    if spec.variational:
        types.append("elbo")
    if needs_perceptual(cfg):
        types.append("perceptual")
    return types


@torch.inference_mode()
def score_images(state: TrialState, cfg: dict, images_u8: torch.Tensor, batch_size: int = 512,
                 keep_recon: int = 0) -> tuple[dict[str, np.ndarray], tuple | None]:
    """Every score for every image; optionally the first ``keep_recon`` (input, recon) pairs."""
    state.model.eval()
    pre, sparams = state.preprocess, score_params(cfg)
    bank = state.latent_bank
    # A checkpoint from before latent banks has none: it simply lacks those scores.
    types = [t for t in score_types_for(cfg) if bank is not None or t not in LATENT_SCORES]
    direct = [t for t in types if t not in LATENT_SCORES]
    chunks: dict[str, list] = {t: [] for t in types}
    kept = None
    for start in range(0, len(images_u8), batch_size):
        x = pre.to_unit(images_u8[start:start + batch_size].to(state.device))
        out = state.model(model_input(state, cfg, x))  # scored in fp32 whatever the training precision
        recon = pre.denormalise(out.recon, x).clamp(0, 1)
        scores = compute_scores(x, recon, direct, sparams, out.mu, out.logvar, state.perceptual,
                                distances=out.distances, anomaly_logits=out.anomaly_logits,
                                mahalanobis=out.mahalanobis)
        if bank is not None:
            tick = time.perf_counter()
            scores.update(bank.scores(out.latent, scores["mse"]))
            state.latent_seconds += time.perf_counter() - tick
        for t in types:
            chunks[t].append(scores[t].float().cpu())
        if kept is None and keep_recon:
            kept = (x[:keep_recon].cpu(), recon[:keep_recon].cpu())
    return {t: torch.cat(v).numpy().astype(np.float64) for t, v in chunks.items()}, kept


@dataclass
class SiteInput:
    """The site pool's selection part as a trial scores it: crops on the trial's device, the calibration
    bound, and the validation spills carried to the site (for the site_matched objective)."""

    images: torch.Tensor
    spill_bound: float = SITE_SPILL_BOUND
    delta: float = SITE_RISK
    matched_spills: torch.Tensor | None = None

    @classmethod
    def of(cls, splits, device: torch.device | None = None) -> "SiteInput | None":
        pool = getattr(splits, "site_selection", None)
        if pool is None:
            return None

        def tensor(array):
            t = torch.from_numpy(np.ascontiguousarray(array))
            return t.to(device) if device is not None else t

        matched = getattr(splits, "val_spill_matched", None)
        return cls(tensor(pool.images), pool.spill_bound, pool.delta,
                   None if matched is None else tensor(matched))


def evaluate(state: TrialState, cfg: dict, val_normal_u8: torch.Tensor, val_spill_u8: torch.Tensor,
             shifted: tuple[torch.Tensor, torch.Tensor] | None = None, site: SiteInput | None = None):
    """Metrics of every score on the validation split, plus the raw score arrays.

    With ``shifted`` (the validation normals and spills under nuisance perturbations), each score's
    metrics also hold ``tpr_at_tnr_shift``, the objective on the perturbed crops. With ``site`` (the
    site pool), they hold ``tpr_at_site``, ``site_threshold`` and ``site_margin``, and the raw scores
    hold the pool's under ``"site"``.
    """
    normal, _ = score_images(state, cfg, val_normal_u8)
    spill, _ = score_images(state, cfg, val_spill_u8)
    metrics = {name: score_summary(normal[name], spill[name], cfg["tnr_target"]) for name in normal}
    scores = {"normal": normal, "spill": spill}
    if shifted is not None:
        normal_shift, _ = score_images(state, cfg, shifted[0])
        spill_shift, _ = score_images(state, cfg, shifted[1])
        for name in metrics:
            metrics[name]["tpr_at_tnr_shift"] = score_summary(normal_shift[name], spill_shift[name],
                                                              cfg["tnr_target"])["tpr_at_tnr"]
    if site is not None:
        scores["site"], _ = score_images(state, cfg, site.images)
        matched = score_images(state, cfg, site.matched_spills)[0] if site.matched_spills is not None else None
        for name in metrics:
            metrics[name].update(site_metrics(scores["site"][name], spill[name], cfg["tnr_target"], site,
                                              None if matched is None else matched[name]))
    return metrics, scores


def site_metrics(site_scores: np.ndarray, spill_scores: np.ndarray, tnr: float, site: SiteInput,
                 matched_scores: np.ndarray | None = None) -> dict:
    """site_summary, or the worst figures when a score is not finite (a broken model)."""
    finite = [site_scores, spill_scores] + ([] if matched_scores is None else [matched_scores])
    if not all(np.all(np.isfinite(s)) for s in finite):
        worst = {"tpr_at_site": 0.0, "site_threshold": math.inf, "site_margin": math.nan}
        if matched_scores is not None:
            worst.update(tpr_at_site_matched=0.0, site_matched_margin=math.nan)
        return worst
    return site_summary(site_scores, spill_scores, tnr, site.spill_bound, site.delta, matched_scores)


def score_summary(normal: np.ndarray, spill: np.ndarray, tnr: float) -> dict:
    """detection_summary and the margin at its threshold, or the worst figures when a score is not
    finite (a broken model)."""
    if not (np.all(np.isfinite(normal)) and np.all(np.isfinite(spill))):
        return {"tpr_at_tnr": 0.0, "threshold": math.inf, "auroc": 0.0, "pauroc": 0.0, "aupr": 0.0,
                "val_margin": math.nan}
    summary = detection_summary(normal, spill, tnr)
    summary["val_margin"] = operating_margin(normal, spill, summary["threshold"])
    return summary


def judge(metrics: dict, val_scores: dict, cfg: dict) -> dict:
    """The trial's verdict: the score it is judged by, its objective, and the selection bias of that choice."""
    score = choose_score(metrics, cfg["score"], cfg["score_selection"], cfg["objective"])
    bias = 0.0
    if cfg["score_selection"] == "best":
        bias = selection_bias(val_scores["normal"], val_scores["spill"], cfg["tnr_target"])
    return {"score": score, "objective": score_objective(metrics[score], cfg["objective"]),
            "selection_bias": bias}


def nuisance_split(val_normal_u8: torch.Tensor, val_spill_u8: torch.Tensor, cfg: dict):
    """The perturbed validation crops the worst_of_shift objective needs, or None."""
    if cfg["objective"] != "worst_of_shift":
        return None
    return (perturb_nuisance(val_normal_u8.cpu(), seed=0).to(val_normal_u8.device),
            perturb_nuisance(val_spill_u8.cpu(), seed=1).to(val_spill_u8.device))


def train_and_validate(cfg: dict, splits, device: torch.device | None = None, on_epoch=None):
    """Train ``cfg`` for its epochs outside Ray, then evaluate on validation: (state, metrics, val_scores, verdict).

    ``on_epoch(epoch, loss)`` is called after each epoch (progress lines). The verdict's score is the
    one the config is judged by (its own, or the best with ``score_selection: best``)."""
    train = torch.from_numpy(np.ascontiguousarray(splits.train))
    state = build_trial(cfg, train, device)
    epochs = 1 if model_spec(cfg["variant"]).closed_form else cfg["epochs"]
    for epoch in range(1, epochs + 1):
        loss = train_one_epoch(state, cfg, train)
        if on_epoch is not None:
            on_epoch(epoch, loss)
    normal, spill = torch.from_numpy(splits.val_normal), torch.from_numpy(splits.val_spill)
    metrics, val_scores = evaluate(state, cfg, normal, spill, nuisance_split(normal, spill, cfg),
                                   SiteInput.of(splits))
    return state, metrics, val_scores, judge(metrics, val_scores, cfg)
