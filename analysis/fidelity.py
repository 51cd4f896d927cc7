"""Does a short budget rank trials the way the full budget does?

ASHA keeps a trial at a rung only if its objective there ranks high, so a rung is
worth its savings only if its ranking predicts the final one. Measured on trials
that ran their whole budget (a FIFO sweep gives many), as Spearman's rho.
"""
from __future__ import annotations

import math

import pandas as pd
from scipy.stats import spearmanr


def asha_rungs(max_t: int, grace_period: int, reduction_factor: int = 2) -> list[int]:
    """The epochs at which ASHA compares trials (below max_t)."""
    rungs, t = [], grace_period
    while t < max_t:
        rungs.append(t)
        t *= reduction_factor
    return rungs


def rung_fidelity(histories: dict[str, dict[int, float]], max_t: int) -> pd.DataFrame:
    """Spearman's rho between the objective at each epoch below ``max_t`` and at ``max_t``.

    ``histories`` maps a trial to its ``{epoch: objective}``; only trials that reached ``max_t``
    count. One row per epoch: the epoch, the number of trials, rho (NaN below 3 trials or when
    a side is constant).
    """
    complete = {t: h for t, h in histories.items() if max_t in h}
    rows = []
    for epoch in range(1, max_t):
        pairs = [(h[epoch], h[max_t]) for h in complete.values() if epoch in h]
        rho = math.nan
        if len(pairs) >= 3:
            early, final = zip(*pairs)
            if len(set(early)) > 1 and len(set(final)) > 1:
                rho = float(spearmanr(early, final).statistic)
        rows.append({"epoch": epoch, "trials": len(pairs), "spearman_rho": rho})
    return pd.DataFrame(rows, columns=["epoch", "trials", "spearman_rho"])


def pooled_fidelity(client, experiments: list[str]) -> tuple[pd.DataFrame, int]:
    """Rung fidelity over the trials of several sweeps (same max_t); returns the table and the sweep count."""
    from sweeps.runs import find_parent_run, sweep_frame

    histories, max_t = {}, None
    for name in experiments:
        frame = sweep_frame(client, find_parent_run(client, name))
        max_t = max_t or int(frame["param.epochs"].max())
        histories.update({f"{name}/{t}": h for t, h in zip(frame["trial_id"], frame["history"])})
    return rung_fidelity(histories, max_t), len(experiments)
