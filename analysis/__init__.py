"""Reading a finished sweep from MLflow: its report, parameter importance, rung fidelity, plots."""
