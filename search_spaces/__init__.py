"""Optuna define-by-run search spaces and presets."""
from search_spaces.spaces import (
    SPACES, baseline_point, baseline_points, config_from_params, get_space,
)

__all__ = ["SPACES", "baseline_point", "baseline_points", "config_from_params", "get_space"]
