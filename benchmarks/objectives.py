"""Which objective predicts the site? Each objective's champion among one sweep's trials, shipped the way
promote ships it (the threshold fixed by the site rule on the pool's calibration part), tested once.

Run it on a sweep whose candidates do not depend on the objective (``--sampler random --scheduler fifo``):
then the objectives differ only in which trial they pick, and the comparison is paired. The reference every
objective must beat is ``clean`` (selection on validation as it is, calibration at the site).
Test figures here decide nothing in the harness: they are the measurement a default is argued from, on
data sets other than the one it is reported on.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pandas as pd

COMPARED = ("clean", "site", "site_matched", "site_blend")


def champion_of(frame: pd.DataFrame, objective: str) -> pd.Series:
    """The trial an objective picks: its best value, ties broken by validation AUROC, then trial id."""
    column = f"objective_{objective}"
    ok = frame[frame[column].notna() & (frame["status"] != "DIVERGED")]
    if ok.empty:
        from sweeps.runs import SweepNotFound

        raise SweepNotFound(f"no trial of the sweep reports {column}; was it run with a site pool?")
    return ok.sort_values([column, "val_auroc", "trial_id"], ascending=[False, False, True]).iloc[0]


def objective_table(client, experiment: str, data_dir: Path | None = None) -> pd.DataFrame:
    from anomaly_ae.stats.selection import site_blend
    from anomaly_ae.stats.thresholds import SITE_CALIBRATIONS
    from sweeps.promote import evaluate_once
    from sweeps.runs import SweepNotFound, download_checkpoint, find_parent_run, load_sweep_data, sweep_frame

    parent = find_parent_run(client, experiment)
    frame = sweep_frame(client, parent)
    # Trials from before site_blend was logged: derived from the two objectives it blends.
    frame["objective_site_blend"] = frame["objective_site_blend"].fillna(
        site_blend(frame["objective_clean"], frame["objective_site_matched"]))
    _, splits = load_sweep_data(parent, data_dir)
    if splits.site_calibration is None:
        raise SweepNotFound(f"sweep {experiment!r} has no site pool: nothing to calibrate at the site")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for objective in COMPARED:
            row = champion_of(frame, objective)
            payload = download_checkpoint(client, row["run_id"], Path(tmp) / row["run_id"])
            for mode in SITE_CALIBRATIONS:
                report = evaluate_once(payload, splits, site_mode=mode)
                site = report["site"]
                rows.append({"objective": objective, "calibration": mode, "trial_id": row["trial_id"],
                             "variant": row["variant"], "score": payload["config"]["score"],
                             **{f"val_{o}": row[f"objective_{o}"] for o in COMPARED},
                             "test_tpr": site["tpr"], "tpr_ci": f"{site['tpr_ci'][0]:.3f}-{site['tpr_ci'][1]:.3f}",
                             "test_tnr": site["tnr"], "tnr_ci": f"{site['tnr_ci'][0]:.3f}-{site['tnr_ci'][1]:.3f}",
                             "fn": site["fn"], "fp": site["fp"], "test_auroc": report["auroc"]})
    table = pd.DataFrame(rows)
    reference = table[(table["objective"] == "clean")].set_index("calibration")["test_tpr"]
    table["tpr_vs_clean"] = table["test_tpr"] - table["calibration"].map(reference)
    return table


def table_lines(table: pd.DataFrame, experiment: str) -> list[str]:
    return [f"{experiment}: each objective's champion among the sweep's trials, test figures at the threshold the "
            f"site rule fixes on the pool's calibration part (tpr_vs_clean: against clean selection, the reference)",
            table.to_string(index=False, float_format=lambda v: f"{v:.4f}" if math.isfinite(v) else "-")]
