"""Core library, in layers; a module imports only from its own layer or the ones below it.

1. ``stats``: pure statistics on score arrays (metrics, thresholds, the site rule, selection, drift).
2. ``data`` and ``models``: crops on disk and the detector zoo (one registry).
3. ``detector``: configuration, training, scores, validation, the test step, checkpoints.
4. ``tracking``: MLflow runs, server and registry, serving, plots.

What serves only the sweep lives beside it: ``search_spaces`` (the space, the seed baselines and start
points), ``trainables`` (the trial, and its replay of fixed work), ``sweeps`` (Tune, references, promote).
"""
