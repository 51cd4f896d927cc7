"""The checkpoint format: tensors and plain types only, loaded with ``weights_only=True``.

A checkpoint may come from a shared artifact store, so loading it must never run code:
``torch.load(weights_only=True)`` unpickles tensors, dicts, lists, strings and numbers and refuses
anything else. Validation score arrays are stored as float64 tensors for that reason.

Two files: ``checkpoint.pt`` is what a Ray trial resumes from (with the optimizer state);
``model.pt`` is what MLflow keeps and promotion loads (no optimizer state, about a third the size
for Adam).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from anomaly_ae.detector.augmentation import Preprocess
from anomaly_ae.detector.config import model_params
from anomaly_ae.detector.latent_bank import LatentBank
from anomaly_ae.detector.losses import PerceptualDistance
from anomaly_ae.detector.training import TrialState, build_optimizer, needs_perceptual, pick_device
from anomaly_ae.models import build_model

CHECKPOINT_FILE = "checkpoint.pt"  # resume: weights, optimizer state, epoch
MODEL_FILE = "model.pt"  # promotion and serving: weights, config, preprocessing, validation scores


class UntrustedCheckpoint(ValueError):
    """A checkpoint holds something other than tensors and plain types (a pickled object)."""


def _to_tensors(val_scores: dict) -> dict:
    return {split: {name: torch.as_tensor(np.asarray(a, dtype=np.float64)) for name, a in scores.items()}
            for split, scores in val_scores.items()}


def _to_arrays(val_scores: dict) -> dict:
    return {split: {name: t.numpy() for name, t in scores.items()} for split, scores in val_scores.items()}


def _plain(value):
    """Numbers, strings, None, lists and dicts of them: what weights_only unpickles."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint field of type {type(value).__name__} is not a plain type")


def save_checkpoint(path: Path, payload: dict, with_optimizer: bool = True) -> Path:
    """Write ``payload`` (see ``checkpoint_payload``) in the safe format."""
    tensors = ("model_state", "optimizer_state", "val_scores", "latent_bank")
    out = {k: _plain(v) for k, v in payload.items() if k not in tensors}
    out["model_state"] = {k: v.detach().cpu() for k, v in payload["model_state"].items()}
    out["val_scores"] = _to_tensors(payload["val_scores"])
    bank = payload.get("latent_bank")
    out["latent_bank"] = None if bank is None else {
        k: v.detach().cpu() if isinstance(v, torch.Tensor) else _plain(v) for k, v in bank.items()}
    if with_optimizer and payload.get("optimizer_state") is not None:
        out["optimizer_state"] = payload["optimizer_state"]
    torch.save(out, path)
    return Path(path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint without running code; a pickled object in it is refused with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UntrustedCheckpoint(
            f"{path}: refused to load: it holds a pickled object, not only tensors and plain types "
            f"({first}). Checkpoints written by this harness never do; this one was written elsewhere "
            f"or tampered with.") from None
    except (RuntimeError, EOFError) as exc:
        raise UntrustedCheckpoint(f"{path}: not a readable checkpoint: {exc}") from None
    if not isinstance(payload, dict) or "model_state" not in payload or "config" not in payload:
        raise UntrustedCheckpoint(f"{path}: not a checkpoint of this harness (no model_state/config)")
    payload["val_scores"] = _to_arrays(payload.get("val_scores", {}))
    payload.setdefault("optimizer_state", None)
    return payload


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
