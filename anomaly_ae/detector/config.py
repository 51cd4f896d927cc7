"""The one trial configuration: a flat dict, validated before Ray starts.

Model and score parameters are namespaced by what they belong to
(``unet_ae.depth``, ``topk.fraction``), so a variant's parameters can only
appear when that variant is chosen, and Optuna sees distinct names per branch.
"""
from __future__ import annotations

import math
from typing import Any

from anomaly_ae.detector.losses import LOSS_TYPES, PERCEPTUAL_WEIGHT_FILES
from anomaly_ae.detector.scores import DEFAULT_SCORE_PARAMS, SCORE_TYPES
from anomaly_ae.detector.synthetic_anomalies import SYNTHETIC_FILLS, SYNTHETIC_MASKS
from anomaly_ae.models import list_models, model_spec
from anomaly_ae.stats.metrics import TNR_TARGET
from anomaly_ae.stats.selection import DEFAULT_OBJECTIVE, OBJECTIVES, SCORE_SELECTIONS
from anomaly_ae.stats.thresholds import THRESHOLD_POLICIES

NORMALISATIONS = ("none", "dataset", "minus_one_one", "per_crop")
OPTIMIZERS = ("adam", "adamw", "sgd")
# The output activation each normalisation implies, unless the config sets one.
ACTIVATION_FOR_NORMALISATION = {"none": "sigmoid", "minus_one_one": "tanh", "dataset": "identity",
                                "per_crop": "identity"}
ACTIVATIONS_ALLOWED = {"sigmoid": {"none"}, "tanh": {"none", "minus_one_one"},
                       "identity": set(NORMALISATIONS)}


class ConfigError(ValueError):
    """A bad configuration; the message names the field."""


def _choice(*options):
    def check(key, v):
        if v not in options:
            raise ConfigError(f"{key}: {v!r} is not one of {list(options)}")
        return v
    return check


def _int(lo, hi):
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v:
            raise ConfigError(f"{key}: expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise ConfigError(f"{key}: {v} is outside [{lo}, {hi}]")
        return int(v)
    return check


def _float(lo, hi, lo_open=False):
    def check(key, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key}: expected a finite number, got {v!r}")
        if v < lo or v > hi or (lo_open and v == lo):
            raise ConfigError(f"{key}: {v} is outside {'(' if lo_open else '['}{lo}, {hi}]")
        return float(v)
    return check


def _bool(key, v):
    if not isinstance(v, bool):
        raise ConfigError(f"{key}: expected true or false, got {v!r}")
    return v


def _optional_str(key, v):
    if v is not None and not isinstance(v, str):
        raise ConfigError(f"{key}: expected a string or null, got {v!r}")
    return v


# Keys a trial config once carried and never read: the split is made once per sweep, by the driver.
SWEEP_KEYS = {"val_normal_fraction": "the sweep's option --val-fraction",
              "val_spill_fraction": "the sweep's option --val-spill-fraction",
              "split_seed": "the sweep's split (seed 0, the same for every trial)"}

# key: (default, validator)
SCHEMA: dict[str, tuple[Any, Any]] = {
    # model
    "variant": ("conv_ae", lambda k, v: _choice(*list_models())(k, v)),
    # data and preprocessing
    "image_height": (32, _int(8, 256)),
    "image_width": (48, _int(8, 256)),
    "grayscale": (False, _bool),
    "normalisation": ("none", _choice(*NORMALISATIONS)),
    # batch augmentation
    "hflip": (False, _bool),
    "vflip": (False, _bool),
    "rotation_deg": (0.0, _float(0.0, 30.0)),
    "shift_px": (0.0, _float(0.0, 8.0)),
    "blur_sigma": (0.0, _float(0.0, 3.0)),  # each crop blurred with sigma ~ U(0, blur_sigma)
    "brightness_jitter": (0.0, _float(0.0, 0.5)),
    "contrast_jitter": (0.0, _float(0.0, 0.5)),
    "colour_jitter": (0.0, _float(0.0, 0.2)),
    "corruption_prob": (0.0, _float(0.0, 1.0)),
    # synthetic anomalies, for the variants that learn from them (anomaly_ae.detector.synthetic_anomalies)
    "synthetic_mask": ("perlin", _choice(*SYNTHETIC_MASKS)),
    "synthetic_fill": ("mixed", _choice(*SYNTHETIC_FILLS)),
    "synthetic_area_min": (0.02, _float(0.0, 1.0, lo_open=True)),
    "synthetic_area_max": (0.15, _float(0.0, 1.0, lo_open=True)),
    "synthetic_opacity_min": (0.5, _float(0.0, 1.0)),
    "synthetic_edge_sigma": (1.0, _float(0.0, 5.0)),
    "synthetic_share": (0.5, _float(0.0, 1.0)),
    # loss
    "loss": ("mse", _choice(*LOSS_TYPES)),
    "loss_ssim_weight": (0.5, _float(0.0, 1.0)),
    "loss_perceptual_weight": (0.5, _float(0.0, 1.0)),
    "perceptual_backbone": ("alexnet", _choice(*PERCEPTUAL_WEIGHT_FILES)),
    "perceptual_weights": (None, _optional_str),
    # score and threshold
    "score": ("mse", _choice(*SCORE_TYPES)),
    "threshold_policy": ("tnr_target", _choice(*THRESHOLD_POLICIES)),
    "tnr_target": (TNR_TARGET, _float(0.5, 1.0)),
    # fixed: judged by `score`; best: by the best of every score of the same forward pass (fan-out)
    "score_selection": ("fixed", _choice(*SCORE_SELECTIONS)),
    "objective": (DEFAULT_OBJECTIVE, _choice(*OBJECTIVES)),
    # optimisation
    "optimizer": ("adam", _choice(*OPTIMIZERS)),
    "lr": (1e-3, _float(1e-7, 1.0, lo_open=True)),
    "weight_decay": (0.0, _float(0.0, 1.0)),
    "batch_size": (64, _int(1, 8192)),
    "epochs": (10, _int(1, 10_000)),
    "steps_per_epoch": (0, _int(0, 1_000_000)),  # 0: one full pass over train
    # A fixed number of crops per epoch, whatever the batch size (0: unused). The quick preset
    # uses it so that a batch-512 trial costs what a batch-16 one does.
    "samples_per_epoch": (0, _int(0, 100_000_000)),
    "eval_every": (1, _int(1, 1000)),
    # Execution only (same maths): bf16 autocast of the forward pass and the loss, and the
    # channels_last memory format. Defaults from `run_search.py benchmark` (docs/results.md, "Throughput and artifact sizes").
    "precision": ("fp32", _choice("fp32", "bf16")),
    "channels_last": (False, _bool),
    "seed": (0, _int(0, 2**31 - 1)),
    # bookkeeping: the seed write-up this config reproduces, if any
    "baseline": (None, _optional_str),
}

SCORE_PARAM_RANGES = {
    "hybrid.alpha": _float(0.0, 100.0),
    "hybrid.beta": _float(0.0, 100.0),
    "topk.fraction": _float(0.0, 1.0, lo_open=True),
    "smooth_max.sigma": _float(0.1, 10.0),
    "centred_max.sigma": _float(0.1, 10.0),
    "map_max.sigma": _float(0.1, 10.0),
    "map_topk.fraction": _float(0.0, 1.0, lo_open=True),
}


def _check_model_param(key: str, value, default, allowed=None):
    if isinstance(default, bool):
        return _bool(key, value)
    if isinstance(default, int):
        # A parameter whose default is 0 means "off" at 0 (knn.pca_dim); any other count is >= 1.
        return _int(0 if default == 0 else 1, 100_000)(key, value)
    if isinstance(default, float):
        return _float(0.0, 1e6)(key, value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
        return value
    return value


def stored_config(raw: dict) -> dict:
    """A config as a run, a checkpoint or a Ray experiment of an earlier version recorded it: the keys since
    retired (``SWEEP_KEYS``) are dropped, then it is validated. What a person writes is refused instead."""
    return validate_config({k: v for k, v in raw.items() if k not in SWEEP_KEYS})


def validate_config(raw: dict) -> dict:
    """Fill defaults and check every key and value; raise ConfigError naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping, got {type(raw).__name__}")
    cfg: dict[str, Any] = {}
    for key, (default, check) in SCHEMA.items():
        cfg[key] = check(key, raw[key]) if key in raw else default
    variant = cfg["variant"]
    spec = model_spec(variant)
    for key, value in raw.items():
        if key in SCHEMA:
            continue
        if key in SWEEP_KEYS:
            raise ConfigError(f"{key}: not a trial setting; the split is {SWEEP_KEYS[key]}. Remove it from the config")
        prefix, _, param = key.partition(".")
        if key in SCORE_PARAM_RANGES:
            cfg[key] = SCORE_PARAM_RANGES[key](key, value)
        elif prefix in list_models():
            if prefix != variant:
                raise ConfigError(f"{key}: parameter of variant {prefix!r}, but variant is {variant!r}")
            if param not in spec.params:
                raise ConfigError(f"{key}: {variant!r} has no parameter {param!r}; "
                                  f"it accepts: {', '.join(sorted(spec.params))}")
            cfg[key] = _check_model_param(key, value, spec.params[param], spec.choices.get(param))
        else:
            valid = sorted(SCHEMA) + sorted(SCORE_PARAM_RANGES) + [f"{variant}.{p}" for p in sorted(spec.params)]
            raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
    if cfg["steps_per_epoch"] and cfg["samples_per_epoch"]:
        raise ConfigError(f"samples_per_epoch: {cfg['samples_per_epoch']} and steps_per_epoch: "
                          f"{cfg['steps_per_epoch']} both set an epoch's length; set one of them")
    activation = output_activation_for(cfg)
    if activation is not None and cfg["normalisation"] not in ACTIVATIONS_ALLOWED[activation]:
        raise ConfigError(
            f"normalisation: {cfg['normalisation']!r} does not fit the {activation} output of {variant!r}; "
            f"use one of {sorted(ACTIVATIONS_ALLOWED[activation])}"
        )
    if cfg["synthetic_area_min"] > cfg["synthetic_area_max"]:
        raise ConfigError(f"synthetic_area_min: {cfg['synthetic_area_min']} is above synthetic_area_max: "
                          f"{cfg['synthetic_area_max']}")
    if spec.synthetic and cfg["corruption_prob"]:
        raise ConfigError(f"corruption_prob: {variant!r} learns from its own synthetic anomalies "
                          f"(synthetic_* keys); set corruption_prob to 0")
    if not spec.residual_scores and cfg["score"] not in spec.extra_scores:
        raise ConfigError(f"score: {variant!r} reconstructs nothing, so {cfg['score']!r} does not apply; "
                          f"use one of {list(spec.extra_scores)}")
    if cfg["score"] == "elbo" and not spec.variational:
        raise ConfigError(f"score: 'elbo' needs a variational variant, and {variant!r} is not one")
    # A score only some variants' forward passes give (ModelSpec.extra_scores) needs one of them.
    givers = [m for m in list_models() if cfg["score"] in model_spec(m).extra_scores]
    if givers and cfg["score"] not in spec.extra_scores:
        raise ConfigError(f"score: {cfg['score']!r} comes from {', '.join(givers)}, and {variant!r} does not give it")
    if cfg["score"] == "perceptual" or cfg["loss"] == "mse_perceptual":
        from anomaly_ae.detector.losses import PerceptualWeightsMissing, find_perceptual_weights
        try:
            find_perceptual_weights(cfg["perceptual_backbone"], cfg["perceptual_weights"])
        except PerceptualWeightsMissing as exc:
            field = "score" if cfg["score"] == "perceptual" else "loss"
            raise ConfigError(f"{field}: {exc}") from exc
    return cfg


def model_params(cfg: dict) -> dict:
    """Builder kwargs for the chosen variant, with the output activation implied by normalisation."""
    variant = cfg["variant"]
    params = {k.split(".", 1)[1]: v for k, v in cfg.items() if k.startswith(variant + ".")}
    if "out_activation" in model_spec(variant).params and "out_activation" not in params:
        params["out_activation"] = ACTIVATION_FOR_NORMALISATION[cfg["normalisation"]]
    return params


def output_activation_for(cfg: dict) -> str | None:
    spec = model_spec(cfg["variant"])
    explicit = cfg.get(f"{cfg['variant']}.out_activation")
    if explicit is not None:
        return explicit
    # None: derived from the normalisation, so always compatible.
    return spec.fixed_output


def score_params(cfg: dict) -> dict[str, dict]:
    out: dict[str, dict] = {name: dict(p) for name, p in DEFAULT_SCORE_PARAMS.items()}
    for key in SCORE_PARAM_RANGES:
        if key in cfg:
            name, param = key.split(".")
            out[name][param] = cfg[key]
    return out
