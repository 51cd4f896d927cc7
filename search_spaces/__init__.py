"""Optuna define-by-run search spaces and presets."""
from search_spaces.spaces import (
    DEPRECATED_SPACES, SPACES, baseline_point, baseline_points, config_from_params, frozen_trials, get_space, replay_distributions,
)

__all__ = ["DEPRECATED_SPACES", "SPACES", "baseline_point", "baseline_points", "config_from_params", "frozen_trials", "get_space",
           "replay_distributions"]
