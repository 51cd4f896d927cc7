"""Parameter importance of a finished sweep, with Optuna's evaluators.

Ray's OptunaSearch keeps its study to itself, so the trials are replayed into a
fresh in-memory study through the sweep's own define-by-run space, which records
the same (conditional) distributions. The value given to Optuna is the trial's best
objective; ASHA-stopped trials count with their shorter budget.
"""
from __future__ import annotations

import warnings

import optuna
import pandas as pd

from search_spaces import frozen_trials, get_space


def replay_study(space_name: str, perceptual: bool, trials: list[tuple[dict, float]]) -> optuna.Study:
    """An in-memory study holding ``(search_params, value)`` trials with the space's distributions.

    The same replay as a warm start (``search_spaces.frozen_trials``)."""
    replayed, _ = frozen_trials(get_space(space_name, perceptual), trials)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.add_trials(replayed)
    return study


def param_importances(frame: pd.DataFrame, space_name: str, perceptual: bool, evaluator: str = "ped_anova") -> dict:
    """Importance per sampled parameter over the trials with a finite objective (PED-ANOVA or fANOVA)."""
    done = frame[frame["best_objective"].notna() & frame["search_params"].map(bool)]
    if len(done) < 2:
        raise ValueError(f"parameter importance needs at least 2 finished trials, this sweep has {len(done)}")
    if done["best_objective"].nunique() < 2:
        raise ValueError("parameter importance needs trials with different objectives; all are "
                         f"{done['best_objective'].iloc[0]:.4g}")
    study = replay_study(space_name, perceptual, list(zip(done["search_params"], done["best_objective"])))
    evaluators = {"ped_anova": optuna.importance.PedAnovaImportanceEvaluator,
                  "fanova": optuna.importance.FanovaImportanceEvaluator}
    if evaluator not in evaluators:
        raise ValueError(f"unknown importance evaluator {evaluator!r}; valid: {sorted(evaluators)}")
    with warnings.catch_warnings():
        # In a conditional space most parameters exist in a few trials only; PED-ANOVA warns once
        # per such parameter. The report states the number of trials instead.
        warnings.filterwarnings("ignore", message="Some regimes for parameter", category=UserWarning)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluators[evaluator]()))
