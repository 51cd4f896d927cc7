"""The training loop of one autoencoder from a validated config: seeding, model and optimizer, an
epoch of gradient steps (or a closed-form fit), the latent bank. No Ray here; validation is in
anomaly_ae.detector.validation, preprocessing and augmentation in anomaly_ae.detector.augmentation.

Images live on the device as uint8 (N, H, W, 3) tensors; every batch is cast,
resized, augmented and normalised on the device, so a GPU trial never waits on
PIL or a DataLoader. Losses and scores are computed in [0, 1] pixel space,
whatever the model's input normalisation, so thresholds compare across trials.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_ae.detector.augmentation import Preprocess, augment, corrupt_with_spills
from anomaly_ae.detector.config import model_params
from anomaly_ae.detector.latent_bank import LatentBank, bank_indices, fit_bank
from anomaly_ae.detector.losses import PerceptualDistance, focal_loss, kl_loss, reconstruction_loss
from anomaly_ae.detector.scores import mse_score
from anomaly_ae.detector.synthetic_anomalies import AnomalyRecipe, synthesize
from anomaly_ae.models import build_model, model_spec
from anomaly_ae.models.registry import LATENT_SCORES
from anomaly_ae.models.vae import kl_beta_of


class DivergedError(RuntimeError):
    """The training loss became NaN or inf."""


# How often the training loop looks at its (device-side) running loss for divergence: a host sync.
DIVERGENCE_CHECK_STEPS = 64


# How many train crops a closed-form fit's reported loss is measured on.
CLOSED_FORM_LOSS_SAMPLE = 2048

# How many train crops a classifier variant's feature Gaussian is fitted on: several per dimension (cutpaste's
# moments have hundreds), where the latent bank's 1,024 left it worse on validation (docs/results.md §16).
# The cap bounds the forward pass it costs each epoch.
DENSITY_CROPS = 4096


def seed_everything(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator on ``device`` that draws the trial's
    augmentation and corruption numbers there (no host-to-device copy per step)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def pick_device() -> torch.device:
    # Ray hides GPUs from trials that did not ask for one, so this follows the resources.
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrialState:
    """Everything a trial carries between epochs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer | None  # None for closed-form variants
    preprocess: Preprocess
    perceptual: PerceptualDistance | None
    device: torch.device
    generator: torch.Generator
    epoch: int = 0
    latent_bank: LatentBank | None = None  # train latents for the latent-distance scores
    latent_seconds: float = 0.0  # time spent on them so far: their extra cost per trial


def build_optimizer(cfg: dict, params) -> torch.optim.Optimizer | None:
    """None for a closed-form variant, which has no trainable parameters."""
    params = list(params)
    if not params:
        return None
    if cfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"], momentum=0.9, nesterov=True)


def needs_perceptual(cfg: dict) -> bool:
    return cfg["loss"] == "mse_perceptual" or cfg["score"] == "perceptual"


def build_trial(cfg: dict, train_u8: torch.Tensor, device: torch.device | None = None) -> TrialState:
    """Seeded model, optimizer and preprocessing for a validated config."""
    device = device or pick_device()
    gen = seed_everything(cfg["seed"], device)
    pre = Preprocess.fit(cfg, train_u8)
    model = build_model(cfg["variant"], pre.channels, pre.height, pre.width, **model_params(cfg)).to(device)
    if cfg.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    perceptual = None
    if needs_perceptual(cfg):
        perceptual = PerceptualDistance(cfg["perceptual_backbone"], cfg["perceptual_weights"]).to(device)
    return TrialState(model, build_optimizer(cfg, model.parameters()), pre, perceptual, device, gen)


def model_input(state: TrialState, cfg: dict, x: torch.Tensor) -> torch.Tensor:
    x = state.preprocess.normalise(x)
    return x.contiguous(memory_format=torch.channels_last) if cfg.get("channels_last") else x


def autocast(state: TrialState, cfg: dict):
    """bf16 autocast when the config asks for it, else a no-op context."""
    return torch.autocast(state.device.type, dtype=torch.bfloat16, enabled=cfg.get("precision") == "bf16")


def step_loss(state: TrialState, cfg: dict, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    pre = state.preprocess
    with autocast(state, cfg):
        out = state.model(model_input(state, cfg, corrupted))
        recon = pre.denormalise(out.recon.float(), corrupted)
        loss = reconstruction_loss(clean, recon, cfg["loss"], cfg["loss_ssim_weight"], cfg["loss_perceptual_weight"],
                                   state.perceptual)
        if out.mu is not None:
            loss = loss + kl_beta_of(state.model) * kl_loss(out.mu.float(), out.logvar.float(), clean[0].numel())
    return loss.float() + out.aux_loss


def synthetic_step_loss(state: TrialState, cfg: dict, clean: torch.Tensor) -> torch.Tensor:
    """The loss of a variant that learns from synthetic anomalies pasted into ``clean`` on the device.

    ``synthetic_map``: the reconstruction of the clean crop from the pasted one, plus the focal loss of
    the anomaly map against the pasted mask (DRAEM). ``synthetic_class``: cross-entropy over normal,
    the recipe's anomaly and a scar, each of the same crops (CutPaste, 3-way).
    """
    pre, gen, recipe = state.preprocess, state.generator, AnomalyRecipe.of(cfg)
    if model_spec(cfg["variant"]).training == "synthetic_class":
        anomalous, _ = synthesize(clean, recipe, gen, share=1.0)
        scarred, _ = synthesize(clean, recipe, gen, share=1.0, shape="scar", fill="colour")
        batch = torch.cat([clean, anomalous, scarred])
        labels = torch.arange(3, device=clean.device).repeat_interleave(len(clean))
        with autocast(state, cfg):
            logits = state.model(model_input(state, cfg, batch)).class_logits
        return F.cross_entropy(logits.float(), labels)
    pasted, mask = synthesize(clean, recipe, gen)
    with autocast(state, cfg):
        out = state.model(model_input(state, cfg, pasted))
        recon = pre.denormalise(out.recon.float(), pasted)
        loss = reconstruction_loss(clean, recon, cfg["loss"], cfg["loss_ssim_weight"], cfg["loss_perceptual_weight"],
                                   state.perceptual)
    return loss.float() + focal_loss(out.anomaly_logits.float(), mask)


def train_one_epoch(state: TrialState, cfg: dict, train_u8: torch.Tensor) -> float:
    """One epoch (a full pass, ``steps_per_epoch`` batches or ``samples_per_epoch`` crops); returns
    the mean loss. Raises DivergedError."""
    if model_spec(cfg["variant"]).closed_form:
        return fit_closed_form(state, cfg, train_u8)
    state.model.train()
    n, bs = len(train_u8), min(cfg["batch_size"], len(train_u8))
    if cfg.get("samples_per_epoch"):
        steps = max(1, -(-cfg["samples_per_epoch"] // bs))
    else:
        steps = n // bs if cfg["steps_per_epoch"] == 0 else cfg["steps_per_epoch"]
    passes = -(-steps * bs // n)
    gen = state.generator
    order = torch.cat([torch.randperm(n, generator=gen, device=gen.device) for _ in range(passes)]).to(train_u8.device)
    # The running loss stays on the device; the host looks at it every DIVERGENCE_CHECK_STEPS steps
    # and at the end, never per step (a per-step .item() is a device sync).
    total = torch.zeros((), device=state.device)
    synthetic = model_spec(cfg["variant"]).synthetic
    for step in range(steps):
        idx = order[step * bs:(step + 1) * bs]
        clean = augment(state.preprocess.to_unit(train_u8[idx]), cfg, gen)
        if synthetic:
            loss = synthetic_step_loss(state, cfg, clean)
        else:
            noisy = corrupt_with_spills(clean, cfg["corruption_prob"], gen) if cfg["corruption_prob"] else clean
            loss = step_loss(state, cfg, clean, noisy)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        total += loss.detach()
        if (step + 1) % DIVERGENCE_CHECK_STEPS == 0 or step + 1 == steps:
            if not torch.isfinite(total):
                raise DivergedError(f"loss became {total.item()} by epoch {state.epoch + 1}, step {step + 1}")
    state.epoch += 1
    refresh_latent_bank(state, cfg, train_u8)
    refresh_density(state, cfg, train_u8)
    return total.item() / max(steps, 1)


@torch.inference_mode()
def refresh_density(state: TrialState, cfg: dict, train_u8: torch.Tensor, batch_size: int = 512) -> None:
    """Fit a classifier variant's feature Gaussian on up to ``DENSITY_CROPS`` train crops, a seeded draw (the
    model as it is now)."""
    if model_spec(cfg["variant"]).training != "synthetic_class":
        return
    state.model.eval()
    drawn = torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(cfg["seed"]))[:DENSITY_CROPS]
    features = [state.model(model_input(state, cfg, state.preprocess.to_unit(
        train_u8[chunk.to(train_u8.device)].to(state.device)))).latent.float() for chunk in drawn.split(batch_size)]
    state.model.fit_density(torch.cat(features))


@torch.inference_mode()
def refresh_latent_bank(state: TrialState, cfg: dict, train_u8: torch.Tensor, batch_size: int = 512) -> None:
    """Encode the bank and scale crops with the model as it is now (anomaly_ae.detector.latent_bank)."""
    if LATENT_SCORES[0] not in model_spec(cfg["variant"]).extra_scores:
        return
    tick = time.perf_counter()
    state.model.eval()
    pre = state.preprocess

    def encode(indices):
        latents, errors = [], []
        for chunk in indices.split(batch_size):
            x = pre.to_unit(train_u8[chunk.to(train_u8.device)].to(state.device))
            out = state.model(model_input(state, cfg, x))
            latents.append(out.latent.float().flatten(1))
            errors.append(mse_score(x, pre.denormalise(out.recon.float(), x).clamp(0, 1)))
        return torch.cat(latents), torch.cat(errors)

    bank_idx, scale_idx = bank_indices(len(train_u8), cfg["seed"])
    bank, _ = encode(bank_idx)
    scale_latents, scale_mse = encode(scale_idx)
    state.latent_bank = fit_bank(bank, scale_latents, scale_mse)
    state.latent_seconds += time.perf_counter() - tick


@torch.no_grad()
def fit_closed_form(state: TrialState, cfg: dict, train_u8: torch.Tensor, chunk: int = 1024) -> float:
    """Fit a closed-form variant on one augmented pass over every training crop; returns its mean loss.

    The epoch budget counts gradient steps, which such a variant has none of, so it always sees the
    whole train split. Augmentation applies as for any variant, so the fit learns the same invariances.
    """
    pre = state.preprocess
    gen = state.generator
    order = torch.randperm(len(train_u8), generator=gen, device=gen.device).to(train_u8.device)
    units = torch.cat([augment(pre.to_unit(train_u8[order[i:i + chunk]].to(state.device)), cfg, gen)
                       for i in range(0, len(order), chunk)])
    inputs = pre.normalise(units)
    state.model.fit(inputs)
    state.epoch += 1
    # The fit's loss on a sample (the order is already random): over every crop, a kNN bank would
    # compare all train crops with each other.
    sample = slice(0, CLOSED_FORM_LOSS_SAMPLE)
    recon = state.model(inputs[sample]).recon
    loss = F.mse_loss(pre.denormalise(recon, units[sample]), units[sample]).item()
    if not math.isfinite(loss):
        raise DivergedError(f"closed-form fit gave a reconstruction loss of {loss}")
    refresh_latent_bank(state, cfg, train_u8)
    return loss
