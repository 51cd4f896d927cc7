"""Layer 4, MLflow and files: trial and sweep runs, the tracking server, the Optuna study store, the
registered detector and its serving, plots. The only core layer that talks to MLflow."""
