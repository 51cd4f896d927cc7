"""Sweep analysis, plots and promotion."""
