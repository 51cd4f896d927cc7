"""Search spaces as Optuna define-by-run functions.

Each function only calls ``trial.suggest_*`` and returns constants; it does no
work. Parameter names are the trial-config keys, and a variant's parameters are
namespaced (``unet_ae.depth``), so they exist only in trials of that variant.

Categorical choices always contain the seed baselines' values, because Optuna
refuses an enqueued categorical value outside the choices (numeric values out
of range are accepted with a warning).
"""
from __future__ import annotations

from functools import partial

from anomaly_ae.detector.synthetic_anomalies import SYNTHETIC_FILLS, SYNTHETIC_MASKS
from anomaly_ae.models import list_models, model_spec
from anomaly_ae.models.registry import LATENT_SCORES
from search_spaces.baselines import baseline_configs, startup_configs

IMAGE_SIZES = ["32x48", "32x32", "40x72", "64x64"]
BATCH_SIZES = [8, 16, 32, 64, 128, 256, 512]


def suggest(trial, name: str, spec: tuple):
    """One parameter of kind "cat" (choices), "int", "float" or "logfloat" (lo, hi), or "bool"."""
    kind = spec[0]
    if kind == "cat":
        return trial.suggest_categorical(name, spec[1])
    if kind == "bool":
        return trial.suggest_categorical(name, [False, True])
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2])
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2])
    if kind == "logfloat":
        return trial.suggest_float(name, spec[1], spec[2], log=True)
    raise ValueError(f"unknown parameter kind {kind!r} for {name}")


def architecture(trial, variants: tuple[str, ...] | None = None) -> str:
    """The variant (default: every registered one), then only that variant's own searched parameters."""
    variant = trial.suggest_categorical("variant", list(variants or list_models()))
    for param, spec in model_spec(variant).space.items():
        suggest(trial, f"{variant}.{param}", spec)
    return variant


def augmentation(trial, variant: str, sizes=tuple(IMAGE_SIZES)) -> dict:
    """Image size, colour, flips, rotation, shift, blur, jitter, normalisation, spill corruption.

    A closed-form variant is fitted on clean crops, so it has no spill corruption."""
    trial.suggest_categorical("image_size", list(sizes))
    trial.suggest_categorical("grayscale", [False, True])
    constants = {}
    if model_spec(variant).fixed_output == "sigmoid":  # inputs must stay in [0, 1]
        constants["normalisation"] = "none"
    else:
        # per_crop: each crop standardised by its own per-channel mean and spread, so the residual
        # is blind to a global gain or colour cast (another site's lighting).
        trial.suggest_categorical("normalisation", ["none", "dataset", "minus_one_one", "per_crop"])
    trial.suggest_categorical("hflip", [False, True])
    trial.suggest_categorical("vflip", [False, True])
    trial.suggest_float("rotation_deg", 0.0, 5.0)
    trial.suggest_float("shift_px", 0.0, 5.0)
    trial.suggest_float("blur_sigma", 0.0, 1.5)
    trial.suggest_float("brightness_jitter", 0.0, 0.15)
    trial.suggest_float("contrast_jitter", 0.0, 0.15)
    trial.suggest_float("colour_jitter", 0.0, 0.05)
    spec = model_spec(variant)
    if spec.synthetic:
        synthetic_anomalies(trial)
    elif not spec.closed_form:
        trial.suggest_float("corruption_prob", 0.0, 0.5)
    return constants


def synthetic_anomalies(trial) -> None:
    """The recipe of the anomalies a synthetic-trained variant learns from: mask, fill, size, opacity."""
    trial.suggest_categorical("synthetic_mask", list(SYNTHETIC_MASKS))
    trial.suggest_categorical("synthetic_fill", list(SYNTHETIC_FILLS))
    # The two ranges meet at 0.05, so min <= max in every trial.
    trial.suggest_float("synthetic_area_min", 0.005, 0.05, log=True)
    trial.suggest_float("synthetic_area_max", 0.05, 0.3, log=True)
    trial.suggest_float("synthetic_opacity_min", 0.2, 1.0)
    trial.suggest_float("synthetic_edge_sigma", 0.0, 2.0)
    trial.suggest_float("synthetic_share", 0.3, 0.7)


RESIDUAL_SCORE_CHOICES = ["mse", "l1", "ssim", "hybrid", "topk", "smooth_max", "centred_max"]
# What most variants choose from: the residual scores and the latent-distance pair.
COMMON_SCORE_CHOICES = RESIDUAL_SCORE_CHOICES + list(LATENT_SCORES)


def score_choices(variant: str, perceptual: bool) -> list[str]:
    spec = model_spec(variant)
    if not spec.residual_scores:
        return list(spec.extra_scores)
    return (RESIDUAL_SCORE_CHOICES + list(spec.extra_scores)
            + (["elbo"] if spec.variational else []) + (["perceptual"] if perceptual else []))


def score_key(variant: str, perceptual: bool) -> str:
    # One name per choice set: Optuna refuses a name whose choices change between trials.
    choices = score_choices(variant, perceptual)
    if choices == COMMON_SCORE_CHOICES:
        return "score"
    extra = "+".join(c for c in choices if c not in RESIDUAL_SCORE_CHOICES)
    return f"score[{extra}]" if model_spec(variant).residual_scores else f"score[only:{extra}]"


def loss_key(perceptual: bool) -> str:
    return "loss[perceptual]" if perceptual else "loss"


def score(trial, variant: str, perceptual: bool = False) -> str:
    """The score type and its own parameters; elbo only for VAEs, perceptual only with weights."""
    chosen = trial.suggest_categorical(score_key(variant, perceptual), score_choices(variant, perceptual))
    if chosen == "hybrid":
        trial.suggest_float("hybrid.alpha", 0.1, 10.0, log=True)
        trial.suggest_float("hybrid.beta", 0.1, 10.0, log=True)
    elif chosen == "topk":
        trial.suggest_float("topk.fraction", 0.005, 0.2, log=True)
    elif chosen in ("smooth_max", "centred_max", "map_max"):
        trial.suggest_float(f"{chosen}.sigma", 0.5, 3.0)
    elif chosen == "map_topk":
        trial.suggest_float("map_topk.fraction", 0.005, 0.2, log=True)
    return chosen


def loss(trial, perceptual: bool = False) -> None:
    choices = ["mse", "l1", "ssim", "l1_ssim", "mse_ssim"] + (["mse_perceptual"] if perceptual else [])
    chosen = trial.suggest_categorical(loss_key(perceptual), choices)
    if chosen in ("l1_ssim", "mse_ssim"):
        trial.suggest_float("loss_ssim_weight", 0.05, 0.95)
    elif chosen == "mse_perceptual":
        trial.suggest_float("loss_perceptual_weight", 0.05, 0.95)


def optimisation(trial, batch_sizes=tuple(BATCH_SIZES)) -> None:
    trial.suggest_categorical("optimizer", ["adam", "adamw", "sgd"])
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    # Categorical so that 0 (no decay, several seeds) stays reachable.
    trial.suggest_categorical("weight_decay", [0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    trial.suggest_categorical("batch_size", list(batch_sizes))


def full_space(trial, perceptual: bool = False, epochs: int = 30, steps_per_epoch: int = 0,
               samples_per_epoch: int = 0, score_selection: str = "best", objective: str = "clean") -> dict:
    """Every dimension; epochs are the ASHA budget, the same for every trial.

    A closed-form variant (PCA) has no loss or optimiser to choose."""
    variant = architecture(trial)
    constants = augmentation(trial, variant)
    if not model_spec(variant).closed_form and model_spec(variant).training != "synthetic_class":
        loss(trial, perceptual)
    score(trial, variant, perceptual)
    if not model_spec(variant).closed_form:
        optimisation(trial)
    return {**constants, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "samples_per_epoch": samples_per_epoch,
            "score_selection": score_selection, "objective": objective}


def quick_space(trial, perceptual: bool = False, epochs: int = 4, steps_per_epoch: int = 0,
                samples_per_epoch: int = 768, score_selection: str = "best", objective: str = "clean") -> dict:
    """CPU-sized: the same dimensions on a short budget of 768 crops per epoch."""
    return full_space(trial, perceptual, epochs, steps_per_epoch, samples_per_epoch, score_selection, objective)


def writeups_space(trial, perceptual: bool = False, epochs: int | None = None, steps_per_epoch: int = 0,
                   samples_per_epoch: int = 0, score_selection: str = "fixed", objective: str = "clean") -> dict:
    """Only the write-up baselines, one per trial, judged by their own score, each at the budget its
    write-up states (full passes, its own epochs) unless ``epochs`` is given: the fair comparison."""
    baselines = baseline_configs(perceptual)
    name = trial.suggest_categorical("seed_baseline", sorted(baselines))
    cfg = {k: v for k, v in baselines[name].items() if k not in NOT_SEARCHED}
    return {**cfg, "epochs": baselines[name]["epochs"] if epochs is None else epochs,
            "steps_per_epoch": steps_per_epoch, "samples_per_epoch": samples_per_epoch,
            "score_selection": "fixed", "objective": objective}


SPACES = {"quick": quick_space, "full": full_space, "writeups": writeups_space}
# Old names, kept for one release (SweepSpec notes the rename).
DEPRECATED_SPACES = {"seeds": "writeups"}


def get_space(name: str, perceptual: bool = False, epochs: int | None = None, steps_per_epoch: int | None = None,
              samples_per_epoch: int | None = None, score_selection: str | None = None, objective: str | None = None):
    """A picklable define-by-run function (Tuner.restore needs to unpickle it).

    Giving only one of ``steps_per_epoch`` and ``samples_per_epoch`` switches the other off.
    """
    if name not in SPACES:
        raise KeyError(f"unknown search space {name!r}; valid: {sorted(SPACES)}")
    kwargs = {"perceptual": perceptual}
    if epochs is not None:
        kwargs["epochs"] = epochs
    if steps_per_epoch is not None or samples_per_epoch is not None:
        kwargs["steps_per_epoch"] = steps_per_epoch or 0
        kwargs["samples_per_epoch"] = samples_per_epoch or 0
    if score_selection is not None:
        kwargs["score_selection"] = score_selection
    if objective is not None:
        kwargs["objective"] = objective
    return partial(SPACES[name], **kwargs)


# Keys a baseline fixes that are not search dimensions: the budget and bookkeeping.
NOT_SEARCHED = ("baseline", "threshold_policy", "epochs", "steps_per_epoch", "samples_per_epoch", "seed",
                "score_selection", "objective")


def config_from_params(params: dict) -> dict:
    """Sampled parameters -> raw trial config (undoes the space's naming)."""
    cfg = {}
    for key, value in params.items():
        if key == "image_size":
            h, w = value.split("x")
            cfg["image_height"], cfg["image_width"] = int(h), int(w)
        elif key.startswith("score["):
            cfg["score"] = value
        elif key.startswith("loss["):
            cfg["loss"] = value
        elif key == "seed_baseline":
            continue
        else:
            cfg[key] = value
    return cfg


def baseline_point(cfg: dict, perceptual: bool = False) -> dict:
    """A baseline as the values of suggest_* calls (for points_to_evaluate).

    Every searched key of its branch gets a value, defaults included, so that
    no dimension of a baseline trial is left to the sampler.
    """
    from anomaly_ae.detector.config import validate_config
    from anomaly_ae.models import model_spec

    full = validate_config(cfg)
    variant = full["variant"]
    point = {k: v for k, v in full.items() if k not in NOT_SEARCHED and k not in ("image_height", "image_width")}
    for param, default in model_spec(variant).params.items():
        point.setdefault(f"{variant}.{param}", default)
    point["image_size"] = f"{full['image_height']}x{full['image_width']}"
    point[score_key(variant, perceptual)] = point.pop("score")
    point[loss_key(perceptual)] = point.pop("loss")
    return point


def startup_order(name: str) -> tuple[int, str]:
    """The reference start points first (they take seconds), then the seed baselines, then the start
    points of the synthetic-anomaly families (the slowest)."""
    return ({"start:knn5": 0, "start:pca16": 0}.get(name, 1 if name.startswith("seed") else 2), name)


def baseline_points(perceptual: bool = False) -> list[dict]:
    """The enqueued startup points, in ``startup_order``."""
    return [baseline_point(cfg, perceptual) for _, cfg in sorted(startup_configs(perceptual).items(),
                                                                 key=lambda kv: startup_order(kv[0]))]


def replay_distributions(space, params: dict) -> dict | None:
    """The distributions ``space`` gives ``params``, or None when they no longer fit it.

    The params are enqueued into a throwaway study and the space suggests them again, so
    conditional parameters get exactly the distributions a live trial would record.
    """
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(params, skip_if_exists=False)
    trial = study.ask()
    try:
        space(trial)
    except Exception:  # noqa: BLE001 - e.g. a categorical value no longer among the choices
        return None
    # Keys the space does not suggest (its constants, config fields) are ignored; a suggested
    # key that is missing, changed or out of range means the trial no longer fits.
    dists = trial.distributions
    for name, dist in dists.items():
        if name not in params or trial.params[name] != params[name]:
            return None
        if not dist._contains(dist.to_internal_repr(params[name])):
            return None
    return dists


def frozen_trials(space, observations: list[tuple[dict, float]]):
    """Finished Optuna trials for ``(params, value)`` pairs that fit ``space``; returns (trials, skipped)."""
    import optuna

    trials, skipped = [], 0
    for params, value in observations:
        dists = replay_distributions(space, params)
        if dists is None:
            skipped += 1
            continue
        trials.append(optuna.trial.create_trial(params={k: params[k] for k in dists}, distributions=dists,
                                                value=float(value)))
    return trials, skipped
