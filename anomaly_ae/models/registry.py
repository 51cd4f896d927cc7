"""One registry: variant name -> builder. Modelled on timm's register_model / create_model."""
from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

import torch
import torch.nn as nn


class Reconstruction(NamedTuple):
    """What every variant's forward returns."""

    recon: torch.Tensor
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    # Variant-specific regulariser already weighted (MemAE's attention entropy); 0 if none.
    aux_loss: torch.Tensor | float = 0.0
    # The code the decoder starts from, one row per crop: what the latent-distance score compares.
    latent: torch.Tensor | None = None
    # A distance detector's k nearest bank distances per crop, ascending (B, k).
    distances: torch.Tensor | None = None
    # A discriminative head's per-pixel anomaly logits (B, 1, H, W): the synthetic_map training.
    anomaly_logits: torch.Tensor | None = None
    # A classifier's logits over normal and its synthetic anomaly kinds (B, K): the synthetic_class training.
    class_logits: torch.Tensor | None = None
    # Mahalanobis distance of the crop's features to the train crops' (B,), once fitted.
    mahalanobis: torch.Tensor | None = None


class ModelSpec(NamedTuple):
    name: str
    builder: Callable[..., nn.Module]
    seed: str  # which write-up it reproduces, or "beyond"
    variational: bool
    params: dict  # tunable builder parameters and their defaults
    fixed_output: str | None  # output activation of a builder that takes no out_activation
    closed_form: bool = False  # fitted by model.fit(inputs) in one pass, not by gradient steps
    # Scores its forward pass adds to the residual ones, e.g. ("knn_mean", "knn_kth") from distances.
    extra_scores: tuple[str, ...] = ()
    choices: dict | None = None  # allowed values of string parameters
    # How it learns: "reconstruction" (of clean crops), "synthetic_map" (reconstruct and segment pasted
    # synthetic anomalies), "synthetic_class" (tell crops from their synthetic anomalies).
    training: str = "reconstruction"
    residual_scores: bool = True  # whether the residual scores (mse, ssim, ...) mean anything for it
    # What a sweep searches: parameter -> (kind, *args), kinds as search_spaces.spaces.suggest takes them.
    space: dict | None = None

    @property
    def synthetic(self) -> bool:
        """Learns from synthetic anomalies pasted into normal crops (draem, cutpaste), not by reconstruction."""
        return self.training != "reconstruction"


_REGISTRY: dict[str, ModelSpec] = {}
# Scores from the distance of a crop's latent to the train latents (anomaly_ae.detector.latent_bank).
LATENT_SCORES = ("latent_knn", "latent_hybrid")
_SHAPE_ARGS = ("in_channels", "height", "width")
TRAININGS = ("reconstruction", "synthetic_map", "synthetic_class")
SPACE_KINDS = ("cat", "bool", "int", "float", "logfloat")


def register_model(name: str, *, seed: str = "beyond", variational: bool = False, fixed_output: str | None = None,
                   closed_form: bool = False, extra_scores: tuple[str, ...] = LATENT_SCORES,
                   choices: dict | None = None, training: str = "reconstruction", residual_scores: bool = True,
                   space: dict | None = None):
    """Decorator: add a builder ``fn(in_channels, height, width, **params) -> nn.Module``.

    A builder without an ``out_activation`` parameter declares its fixed one in
    ``fixed_output``, so configs can be checked against the normalisation. ``extra_scores`` are the
    scores beyond the residual ones: by default the latent-distance pair, which needs ``latent`` in
    the forward's output. ``choices`` names the allowed values of string parameters. ``training`` is
    one of TRAININGS; a variant that reconstructs nothing sets ``residual_scores=False``. ``space`` is
    what a sweep searches of it (``{param: (kind, *args)}``); the search space reads it from here, so a
    variant is one file and one decorator.
    """

    def decorator(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        if training not in TRAININGS:
            raise ValueError(f"model {name!r}: training {training!r} is not one of {list(TRAININGS)}")
        signature = inspect.signature(fn)
        missing = [a for a in _SHAPE_ARGS if a not in signature.parameters]
        if missing:
            raise TypeError(f"builder for {name!r} must take {_SHAPE_ARGS}; missing {missing}")
        params = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.name not in _SHAPE_ARGS and p.default is not inspect.Parameter.empty
        }
        if "out_activation" not in params and fixed_output is None:
            raise TypeError(f"builder for {name!r} must take out_activation or declare fixed_output")
        for param, allowed in (choices or {}).items():
            if params.get(param) not in allowed:
                raise TypeError(f"builder for {name!r}: default of {param!r} is not among its choices {allowed}")
        check_space(name, space or {}, params)
        _REGISTRY[name] = ModelSpec(name, fn, seed, variational, params, fixed_output, closed_form,
                                    tuple(extra_scores), dict(choices or {}), training, residual_scores, dict(space or {}))
        return fn

    return decorator


def check_space(name: str, space: dict, params: dict) -> None:
    """Each searched parameter is the builder's, of a known kind; a categorical one lists its default, so
    that an enqueued config at the defaults fits the space."""
    for param, spec in space.items():
        if param not in params:
            raise TypeError(f"builder for {name!r}: searched parameter {param!r} is not one of its parameters")
        if not spec or spec[0] not in SPACE_KINDS:
            raise TypeError(f"builder for {name!r}: {param!r} has kind {spec[:1]}, not one of {SPACE_KINDS}")
        if spec[0] == "cat" and params[param] not in spec[1]:
            raise TypeError(f"builder for {name!r}: the default of {param!r} is not among its searched choices")


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model variant {name!r}; registered variants: {', '.join(list_models())}")
    return _REGISTRY[name]


def build_model(name: str, in_channels: int = 3, height: int = 32, width: int = 48, **params) -> nn.Module:
    spec = model_spec(name)
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown parameter(s) {unknown}; it accepts: {', '.join(sorted(spec.params))}"
        )
    return spec.builder(in_channels=in_channels, height=height, width=width, **params)
