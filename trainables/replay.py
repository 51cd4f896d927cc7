"""Fixed work done once: an enqueued trial (a seed baseline, a start point) whose config, seed, budget
and data match a finished run in the same tracking store is replayed from that run, not retrained.

A trial's *fixed-work key* hashes its validated config (variant, parameters, seed, epochs, score,
objective, TNR target) with the sweep's *data key* (dataset content, split, site pool). The run that
trained it keeps its epoch reports (``reports.json``) and its weights; a sweep that reuses it logs a
run of its own tagged ``reused_from`` with the same reports and no weights of its own.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

REPORTS_FILE = "reports.json"
KEY_TAG = "fixed_work_key"
REUSED_TAG = "reused_from"
# Parent-run tags that fix what a trial sees: the data, the split and the site pool.
DATA_TAGS = ("dataset_hash", "labelled_hash", "val_normal_fraction", "val_spill_fraction", "split_seed")


def data_key(sweep_tags: dict) -> str:
    """The part of a sweep's tags that decides what its trials train and are judged on."""
    fixed = {k: sweep_tags.get(k, "") for k in DATA_TAGS}
    fixed.update({k: v for k, v in sweep_tags.items() if k.startswith("site_")})
    return json.dumps(fixed, sort_keys=True)


def replay_key(cfg: dict, data: str) -> str:
    """The key of one enqueued trial: its full validated config and the sweep's data key."""
    text = json.dumps({"config": cfg, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def find_reusable_run(client, key: str) -> tuple[str, list[dict]] | None:
    """The latest finished run in the store that trained ``key`` itself, with its weights and epoch
    reports: ``(run_id, reports)``, or None."""
    from mlflow.entities import ViewType

    from anomaly_ae.detector.checkpoints import MODEL_FILE

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return None
    runs = client.search_runs(experiments, f"tags.{KEY_TAG} = '{key}' and attributes.status = 'FINISHED'",
                              run_view_type=ViewType.ACTIVE_ONLY, order_by=["attributes.start_time DESC"],
                              max_results=20)
    for run in runs:
        if REUSED_TAG in run.data.tags or "weights_dropped" in run.data.tags:
            continue
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        if MODEL_FILE in names and REPORTS_FILE in names:
            with tempfile.TemporaryDirectory() as tmp:
                reports = json.loads(Path(client.download_artifacts(run.info.run_id, REPORTS_FILE, tmp)).read_text())
            return run.info.run_id, reports
    return None
