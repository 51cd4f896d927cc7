"""Train and evaluate one autoencoder from a validated config. No Ray here.

Images live on the device as uint8 (N, H, W, 3) tensors; every batch is cast,
resized, augmented and normalised on the device, so a GPU trial never waits on
PIL or a DataLoader. Losses and scores are computed in [0, 1] pixel space,
whatever the model's input normalisation, so thresholds compare across trials.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from anomaly_ae.config import model_params, score_params
from anomaly_ae.latent_bank import LatentBank, bank_indices, fit_bank
from anomaly_ae.losses import PerceptualDistance, kl_loss, reconstruction_loss
from anomaly_ae.metrics import detection_summary, operating_margin
from anomaly_ae.models import build_model, model_spec
from anomaly_ae.models.vae import kl_beta_of
from anomaly_ae.nuisance import perturb_nuisance
from anomaly_ae.models.registry import LATENT_SCORES
from anomaly_ae.scores import RESIDUAL_SCORES, compute_scores, mse_score
from anomaly_ae.selection import choose_score, score_objective, selection_bias, site_summary


class DivergedError(RuntimeError):
    """The training loss became NaN or inf."""


# How often the training loop looks at its (device-side) running loss for divergence: a host sync.
DIVERGENCE_CHECK_STEPS = 64
# How many train crops a closed-form fit's reported loss is measured on.
CLOSED_FORM_LOSS_SAMPLE = 2048
# Per-crop standardisation never divides by less than this spread (in [0, 1] pixel units).
PER_CROP_STD_FLOOR = 0.01


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
class Preprocess:
    """uint8 crops -> model input. Saved with every checkpoint."""

    height: int
    width: int
    grayscale: bool
    normalisation: str
    mean: list[float]
    std: list[float]

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    @classmethod
    def fit(cls, cfg: dict, train_u8: torch.Tensor) -> "Preprocess":
        pre = cls(cfg["image_height"], cfg["image_width"], cfg["grayscale"], cfg["normalisation"],
                  [0.0] * 3, [1.0] * 3)
        if cfg["normalisation"] == "dataset":
            sample = train_u8[torch.randperm(len(train_u8), generator=torch.Generator().manual_seed(0))[:2048]]
            x = pre.to_unit(sample.to(train_u8.device))
            pre.mean = x.mean((0, 2, 3)).tolist()
            pre.std = x.std((0, 2, 3)).clamp_min(1e-3).tolist()
        return pre

    def to_unit(self, u8: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, C, height, width) float in [0, 1]."""
        x = u8.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False)
        if self.grayscale:
            x = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
        return x

    def _stats(self, x):
        c = x.shape[1]
        mean = torch.tensor(self.mean[:c], device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std[:c], device=x.device).view(1, c, 1, 1)
        return mean, std

    @staticmethod
    def _crop_stats(x):
        # Each crop's own per-channel mean and spread: a global gain or colour cast moves both, and
        # dividing them out leaves what the light falls on. The floor keeps a flat crop's noise small.
        return x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True).clamp_min(PER_CROP_STD_FLOOR)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalisation == "minus_one_one":
            return x * 2 - 1
        if self.normalisation == "dataset":
            mean, std = self._stats(x)
            return (x - mean) / std
        if self.normalisation == "per_crop":
            mean, std = self._crop_stats(x)
            return (x - mean) / std
        return x

    def denormalise(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Model space back to [0, 1] pixels; ``like`` is the [0, 1] input the model was given (per-crop
        standardisation restores that crop's own lighting, so a residual is blind to it)."""
        if self.normalisation == "minus_one_one":
            return (x + 1) / 2
        if self.normalisation == "dataset":
            mean, std = self._stats(x)
            return x * std + mean
        if self.normalisation == "per_crop":
            mean, std = self._crop_stats(like)
            return x * std + mean
        return x

    def as_dict(self) -> dict:
        return asdict(self)


def device_rand(gen: torch.Generator, dev: torch.device, *shape) -> torch.Tensor:
    """Uniform numbers drawn where the generator lives, moved to ``dev`` (a no-op when they match)."""
    return torch.rand(*shape, generator=gen, device=gen.device).to(dev)


def random_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Gaussian blur with its own sigma per crop (sigma ~ 0 leaves a crop as it is), separable.

    Optics differ between sites (focus, dirt on the lens); training on blurred normals keeps a softer
    crop from scoring as an anomaly. The kernel's radius comes from ``max_sigma``, a host number, so
    the step never waits on the device to size it."""
    radius = max(1, int(math.ceil(3 * max_sigma)))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-taps.pow(2) / (2 * sigma.clamp_min(1e-3).to(x.dtype).pow(2)[:, None]))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (n, 2r + 1)
    for dim in (-1, -2):
        pad = (radius, radius, 0, 0) if dim == -1 else (0, 0, radius, radius)
        windows = F.pad(x, pad, mode="replicate").unfold(dim, 2 * radius + 1, 1)  # (..., h, w, 2r + 1)
        x = (windows * kernel[:, None, None, None, :]).sum(-1)
    return x


def augment(x: torch.Tensor, cfg: dict, gen: torch.Generator) -> torch.Tensor:
    """Batch-level augmentation of [0, 1] images, on whatever device x is on."""
    n, dev = x.shape[0], x.device

    def rand(*shape):
        return device_rand(gen, dev, *shape)

    def uniform(*shape, scale=1.0):
        return (rand(*shape) * 2 - 1).mul_(scale)

    if cfg["hflip"]:
        x = torch.where((rand(n) < 0.5).view(n, 1, 1, 1), x.flip(-1), x)
    if cfg["vflip"]:
        x = torch.where((rand(n) < 0.5).view(n, 1, 1, 1), x.flip(-2), x)
    if cfg["rotation_deg"] > 0 or cfg["shift_px"] > 0:
        angle = uniform(n, scale=math.radians(cfg["rotation_deg"]))
        h, w = x.shape[-2:]
        tx, ty = uniform(n, scale=2 * cfg["shift_px"] / w), uniform(n, scale=2 * cfg["shift_px"] / h)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg["blur_sigma"] > 0:
        x = random_blur(x, rand(n) * cfg["blur_sigma"], cfg["blur_sigma"])
    if cfg["brightness_jitter"] > 0:
        x = x * (1 + uniform(n, 1, 1, 1, scale=cfg["brightness_jitter"]))
    if cfg["contrast_jitter"] > 0:
        mean = x.mean((1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + uniform(n, 1, 1, 1, scale=cfg["contrast_jitter"])) + mean
    if cfg["colour_jitter"] > 0:
        x = x + uniform(n, x.shape[1], 1, 1, scale=cfg["colour_jitter"])
    return x.clamp(0, 1)


def corrupt_with_spills(x: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Paint spill-like bright streaks and specks on a random subset (denoising input).

    Seed 004 painted white circles; this draws a bright vertical wedge with a
    random centre, length, width and brightness, plus a few bright specks.
    """
    n, c, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return device_rand(gen, dev, *shape)

    # No early return when no crop is chosen: that test would sync the host every step.
    chosen = (rand(n) < prob).view(n, 1, 1, 1)

    def r(lo, hi):
        return (rand(n) * (hi - lo) + lo).view(n, 1, 1)

    yy = torch.arange(h, device=dev).view(1, h, 1).float()
    xx = torch.arange(w, device=dev).view(1, 1, w).float()
    top, length = r(-0.1, 0.3) * h, r(0.3, 0.9) * h
    t = ((yy - top) / length).clamp(0, 1)
    half = r(0.06, 0.2) * w * (1 - t) + 0.5
    centre = r(0.3, 0.7) * w
    inside = ((xx - centre).abs() < half) & (yy >= top) & (yy <= top + length)
    streak = inside.float() * r(0.15, 0.45)
    specks = (rand(n, h, w) < 0.04) & inside
    painted = (x + streak.unsqueeze(1)).masked_fill(specks.unsqueeze(1), 0.95)
    return torch.where(chosen, painted.clamp(0, 1), x)


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
    for step in range(steps):
        idx = order[step * bs:(step + 1) * bs]
        clean = augment(state.preprocess.to_unit(train_u8[idx]), cfg, gen)
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
    return total.item() / max(steps, 1)


@torch.inference_mode()
def refresh_latent_bank(state: TrialState, cfg: dict, train_u8: torch.Tensor, batch_size: int = 512) -> None:
    """Encode the bank and scale crops with the model as it is now (anomaly_ae.latent_bank)."""
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


def score_types_for(cfg: dict) -> list[str]:
    """Every score derivable from this trial's forward pass (and its latent bank)."""
    spec = model_spec(cfg["variant"])
    types = list(RESIDUAL_SCORES) + list(spec.extra_scores)
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
                                distances=out.distances)
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
    """The site pool as a trial scores it: crops on the trial's device and the calibration bound."""

    images: torch.Tensor
    max_spill_fraction: float = 0.05
    delta: float = 0.05

    @classmethod
    def of(cls, pool, device: torch.device | None = None) -> "SiteInput | None":
        if pool is None:
            return None
        images = torch.from_numpy(np.ascontiguousarray(pool.images))
        return cls(images.to(device) if device is not None else images, pool.max_spill_fraction, pool.delta)


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
        for name in metrics:
            metrics[name].update(site_metrics(scores["site"][name], spill[name], cfg["tnr_target"], site))
    return metrics, scores


def site_metrics(site_scores: np.ndarray, spill_scores: np.ndarray, tnr: float, site: SiteInput) -> dict:
    """site_summary, or the worst figures when a score is not finite (a broken model)."""
    if not (np.all(np.isfinite(site_scores)) and np.all(np.isfinite(spill_scores))):
        return {"tpr_at_site": 0.0, "site_threshold": math.inf, "site_margin": math.nan}
    return site_summary(site_scores, spill_scores, tnr, site.max_spill_fraction, site.delta)


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
                                   SiteInput.of(getattr(splits, "site", None)))
    return state, metrics, val_scores, judge(metrics, val_scores, cfg)


def checkpoint_payload(state: TrialState, cfg: dict, val_scores: dict, report: dict) -> dict:
    """What promotion needs without retraining: weights, config, preprocessing, score distributions."""
    return {
        "model_state": state.model.state_dict(),
        "optimizer_state": state.optimizer.state_dict() if state.optimizer is not None else None,
        "config": cfg,
        "preprocess": state.preprocess.as_dict(),
        "val_scores": val_scores,
        "epoch": state.epoch,
        "report": report,
        "latent_bank": state.latent_bank.as_dict() if state.latent_bank is not None else None,
    }


def load_trained(payload: dict, device: torch.device | None = None) -> TrialState:
    """Rebuild a trained model from a checkpoint payload, ready for scoring."""
    cfg = payload["config"]
    device = device or pick_device()
    pre = Preprocess(**payload["preprocess"])
    model = build_model(cfg["variant"], pre.channels, pre.height, pre.width, **model_params(cfg)).to(device)
    model.load_state_dict(payload["model_state"])
    model.eval()
    perceptual = None
    if needs_perceptual(cfg):
        perceptual = PerceptualDistance(cfg["perceptual_backbone"], cfg["perceptual_weights"]).to(device)
    opt = build_optimizer(cfg, model.parameters())
    return TrialState(model, opt, pre, perceptual, device, torch.Generator(device=device).manual_seed(cfg["seed"]),
                      payload.get("epoch", 0), LatentBank.from_dict(payload.get("latent_bank"), device))
