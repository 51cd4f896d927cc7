"""Layer 1, pure statistics on arrays of scores: metrics, thresholds, the site rule, selection, drift,
the ensemble's combination. No torch, no files, no MLflow; imports nothing above it."""
