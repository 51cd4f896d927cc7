"""A sweep's life: its spec, the Sweep that runs it, the Ray Tune parts, its MLflow records, promotion."""
