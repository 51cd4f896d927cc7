"""Every MLflow write of the harness, in one place.

- ``SweepRun`` (the driver): the store, the experiment, the sweep's parent run, the reference runs,
  the parent's summary (``best_so_far``, counts, the leaderboard table), the statuses of trials the
  scheduler stopped, leftover runs, the analyze report.
- ``TrialRun`` (inside a Ray trial): one run per trial id, reopened when the trial is retried on
  another node or resumed, so a trial never has two runs.
- ``register_detector``: the promoted detector, logged as code (models-from-code), registered, aliased.

Writes go through ``RetryingWriter``. When the tracking server is unreachable they are queued in
order (metrics with their original timestamps, tags, artifacts spooled to local disk) and retried
with backoff at the next write, so training goes on. Only when the server has been unreachable for
longer than the grace period (``PROLIV_TRACKING_GRACE_S``, default 600 s) does the write raise
``TrackingUnavailable``. Reads (analysis) use a plain ``MlflowClient``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

GRACE_ENV = "PROLIV_TRACKING_GRACE_S"
DEFAULT_GRACE_S = 600.0
MAX_BACKOFF_S = 30.0
# Error codes that a retry cannot fix: a bad request, a missing run, refused credentials.
PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                   "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE"}
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # opens as model training, not GenAI


class TrackingUnavailable(RuntimeError):
    """The tracking store stayed unreachable for longer than the grace period."""


def grace_seconds() -> float:
    text = os.environ.get(GRACE_ENV)
    if text is None:
        return DEFAULT_GRACE_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{GRACE_ENV}: expected seconds, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{GRACE_ENV}: must be >= 0, got {value}")
    return value


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the write can help: an outage or a locked database, not a bad request."""
    from mlflow.exceptions import MlflowException

    text = str(exc)
    if isinstance(exc, MlflowException):
        if exc.error_code in PERMANENT_CODES or " 401" in text or " 403" in text:
            return False
        return True
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) or "database is locked" in text


@contextlib.contextmanager
def quick_requests():
    """One HTTP attempt with a short timeout: the writer retries itself, without blocking training.

    MLflow's own default is 7 retries with exponential backoff (minutes) per request; a value the
    user set in the environment is kept."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RetryingWriter:
    """An ordered queue of writes, retried with backoff; raises only after the grace period."""

    def __init__(self, client, grace_s: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.client = client
        self.grace_s = grace_seconds() if grace_s is None else grace_s
        self.clock, self.sleep = clock, sleep
        self.pending: list[tuple[str, Callable]] = []
        self.down_since: float | None = None
        self.next_try = 0.0
        self.backoff = 1.0
        self.retries = 0  # failed attempts over the writer's life
        self.longest_outage_s = 0.0
        self.last_error = ""

    def submit(self, what: str, op: Callable) -> bool:
        """Queue ``op(client)`` behind the earlier writes and try the queue; True when all went out."""
        self.pending.append((what, op))
        return self.flush()

    def flush(self, wait_s: float = 0.0) -> bool:
        """Send the queued writes in order. With ``wait_s``, keep retrying for up to that long."""
        deadline = self.clock() + wait_s
        while self.pending:
            now = self.clock()
            if now < self.next_try:
                if now >= deadline:
                    return False
                self.sleep(min(self.next_try, deadline) - now)
                continue
            what, op = self.pending[0]
            try:
                with quick_requests():
                    op(self.client)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._failed(what, exc)
                continue
            self.pending.pop(0)
            if self.down_since is not None:
                self.longest_outage_s = max(self.longest_outage_s, self.clock() - self.down_since)
            self.down_since, self.backoff, self.next_try = None, 1.0, 0.0
        return True

    def _failed(self, what: str, exc: Exception) -> None:
        now = self.clock()
        self.retries += 1
        self.last_error = f"{what}: {type(exc).__name__}: {str(exc)[:300]}"
        if self.down_since is None:
            self.down_since = now
        if now - self.down_since > self.grace_s:
            raise TrackingUnavailable(
                f"the tracking store was unreachable for {now - self.down_since:.0f}s (grace {self.grace_s:.0f}s, "
                f"{GRACE_ENV}); {len(self.pending)} write(s) not sent; last error: {self.last_error}") from exc
        self.next_try = now + self.backoff
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)


# ------------------------------------------------------------------ names and metric keys

def trial_run_name(cfg: dict, trial_id: str) -> str:
    """The most telling part first, so that a name cut off in the UI still reads."""
    if cfg.get("baseline"):
        return f"{cfg['baseline']}·{cfg['variant']}·{cfg['score']}"
    return f"{cfg['variant']}·{cfg['score']}·{trial_id}"


def parent_run_name(experiment: str, space: str, started: float | None = None) -> str:
    return f"{experiment}·{space}·{time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"


# The UI's chart view makes one section per prefix before "/"; unprefixed keys go first.
_SECTIONS = {"val_pauroc": "val/pauroc", "val_aupr": "val/aupr", "threshold": "val/threshold",
             "selection_bias": "val/selection_bias", "objective_clean": "val/objective_clean",
             "objective_shift": "val/objective_shift", "objective_site": "val/objective_site",
             "objective_site_matched": "val/objective_site_matched", "site_matched_margin": "val/site_matched_margin",
             "best_objective_site_matched": "best/objective_site_matched",
             "objective_site_blend": "val/objective_site_blend", "best_objective_site_blend": "best/objective_site_blend",
             "site_margin": "val/site_margin", "site_threshold": "val/site_threshold", "val_margin": "val/margin",
             "tpr_at_tnr": "val/tpr_at_tnr", "best_objective_clean": "best/objective_clean",
             "best_objective_site": "best/objective_site", "best_objective_shift": "best/objective_shift",
             "best_tie_break": "best/tie_break", "epoch": "trial/epoch",
             "epoch_seconds": "trial/epoch_seconds", "diverged": "trial/diverged", "final": "trial/final",
             "fit_seconds": "trial/fit_seconds", "gpu_peak_mem_mb": "trial/gpu_peak_mem_mb"}
# What the chart view's first section ("Model metrics", the unprefixed keys) holds for trials; the
# parent run's summary (best_so_far, best_objective, counts) is unprefixed too, on its own page.
FRONT_METRICS = ("objective", "val_auroc", "train_loss")
_PER_SCORE = ("tpr_at_tnr_shift_", "tpr_at_tnr_", "tpr_at_site_", "auroc_")


def metric_key(report_key: str) -> str:
    """The MLflow name of a report key: objective, val_auroc and train_loss stay in front."""
    if report_key in _SECTIONS:
        return _SECTIONS[report_key]
    for prefix in _PER_SCORE:
        if report_key.startswith(prefix):
            return f"by_score/{report_key[len(prefix):]}/{prefix.rstrip('_')}"
    return report_key


def run_metric(run, report_key: str, default=math.nan) -> float:
    """A trial run's latest value of a report key, wherever the key is filed."""
    return run.data.metrics.get(metric_key(report_key), default)


@dataclass(frozen=True)
class Tracking:
    """Where trials log: made on the driver, which creates the experiment and the parent run."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


def _trial_run_filter(tracking: Tracking, trial_id: str) -> str:
    return f"tags.mlflow.parentRunId = '{tracking.parent_run_id}' and tags.trial_id = '{trial_id}'"


def _metrics(values: dict, step: int, now_ms: int | None = None) -> list:
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return [Metric(k, float(v), now_ms, step) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]


# ------------------------------------------------------------------ the link that opens on the answer

# The MLflow UI keeps a shared view of the runs page (columns, sort, filter, chart sections) in an
# experiment tag, opened by ?viewStateShareKey=<key>; ?workflowType=machine_learning opens the page
# as model training (MLflow 3 opens GenAI otherwise). Both checked in Chromium (tests/test_mlflow_ui.py).
SHARED_VIEW_TAG = "mlflow.sharedViewState."
# best_objective is the objective at the trial's best epoch, what the leaderboard and promote rank by
# (objective is the latest epoch's).
COLUMNS = ("metrics.`best_objective`", "metrics.`objective`", "metrics.`best/objective_clean`",
           "metrics.`best/objective_site`", "metrics.`val_auroc`", "metrics.`train_loss`", "tags.`variant`",
           "tags.`score`", "tags.`baseline`", "tags.`reused_from`", "tags.`stopped_by`", "metrics.`trial/epoch`")
SECTIONS = ("Model metrics", "val", "trial")  # by_score/<score> sections follow, added by the UI


def _line_chart(metric: str, section_uuid: str) -> dict:
    return {"uuid": f"chart-{metric}", "type": "LINE", "runsCountToCompare": 100, "metricSectionId": section_uuid,
            "deleted": False, "isGenerated": True, "displayName": metric, "metricKey": metric,
            "lineSmoothness": 0, "xAxisScaleType": "linear", "scaleType": "linear", "range": {},
            "xAxisKey": "step", "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [],
            "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True}


def sweep_view_state(parent_run_id: str) -> dict:
    """The runs page of one sweep: its runs sorted by best objective, the telling columns, the objective's
    chart section first."""
    sections = [{"uuid": f"section-{i}", "name": name, "display": True, "isReordered": True, "deleted": False,
                 "isGenerated": True} for i, name in enumerate(SECTIONS)]
    return {"searchFilter": f"tags.mlflow.parentRunId = '{parent_run_id}'", "orderByKey": "metrics.`best_objective`",
            "orderByAsc": False, "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
            "modelVersionFilter": "All Runs", "selectedColumns": list(COLUMNS), "runsHiddenMode": "SHOW_ALL",
            "isAccordionReordered": True, "compareRunSections": sections,
            "compareRunCharts": [_line_chart(m, "section-0") for m in FRONT_METRICS]}


def runs_page(experiment_id: str, parent_run_id: str) -> str:
    # No sort or filter in the address itself: the UI applies a shared view only to a bare address,
    # and then writes the view's sort (orderByKey=metrics.`best_objective`) and filter into it.
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning&viewStateShareKey={parent_run_id}"


# ------------------------------------------------------------------ a trial's run

class TrialRun:
    """The trial's MLflow run, continued by trial id; a no-op when the trial runs without tracking."""

    def __init__(self, tracking: Tracking | None, cfg: dict, trial_id: str, search_params: dict | None = None,
                 grace_s: float | None = None):
        self.tracking, self.trial_id = tracking, trial_id
        self.run_id: str | None = None
        self.ended = False
        self.writer = None
        self.name = trial_run_name(cfg, trial_id)
        self.score = cfg["score"]
        self._spool = None
        if tracking is None:
            return
        self.writer = RetryingWriter(_client(tracking.tracking_uri), grace_s)
        tags = {"mlflow.parentRunId": tracking.parent_run_id, "mlflow.runName": self.name, "trial_id": trial_id,
                "variant": cfg["variant"], "score": cfg["score"], "baseline": cfg.get("baseline") or "",
                # The sampler's own parameter names, so analysis can replay the trials into a study.
                "search_params": json.dumps(search_params or {}, sort_keys=True)}
        params = {k: str(v) for k, v in sorted(cfg.items())}
        self.writer.submit("open the trial run", lambda c: self._open(c, tags, params))

    def _open(self, client, tags: dict, params: dict) -> None:
        from mlflow.entities import Param

        found = client.search_runs([self.tracking.experiment_id], _trial_run_filter(self.tracking, self.trial_id),
                                   max_results=1)
        if found:  # a retry on another node, or a resumed sweep: the same run goes on
            run = found[0]
            self.run_id = run.info.run_id
            restarts = int(run.data.tags.get("restarts", "0")) + 1
            client.update_run(self.run_id, status="RUNNING")
            client.set_tag(self.run_id, "restarts", str(restarts))
            return
        self.run_id = client.create_run(self.tracking.experiment_id, tags=tags).info.run_id
        client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])

    def log_report(self, report: dict, step: int) -> None:
        """An evaluation's report, filed under the UI's sections (see ``metric_key``)."""
        if self.writer is not None:
            metrics = _metrics({metric_key(k): v for k, v in report.items()}, step)
            self.writer.submit(f"metrics of epoch {step}", lambda c: c.log_batch(self.run_id, metrics=metrics))

    def set_tags(self, **tags) -> None:
        if self.writer is not None:
            from mlflow.entities import RunTag

            items = [RunTag(k, str(v)) for k, v in tags.items()]
            self.writer.submit("tags", lambda c: c.log_batch(self.run_id, tags=items))

    def log_dict(self, data, artifact_file: str) -> None:
        """A small JSON artifact (the epoch reports a later sweep replays)."""
        if self.writer is not None:
            self.writer.submit(artifact_file, lambda c: c.log_dict(self.run_id, data, artifact_file))

    def log_artifacts(self, folder: str | Path) -> None:
        """Log a folder's files; copied to a local spool first, so a write that waits keeps them."""
        if self.writer is None:
            return
        # A newer best epoch supersedes artifacts still waiting to go out.
        self.writer.pending = [(w, op) for w, op in self.writer.pending if w != "artifacts"]
        if self._spool is not None:
            shutil.rmtree(self._spool, ignore_errors=True)
        self._spool = tempfile.mkdtemp(prefix=f"trial-{self.trial_id}-artifacts-")
        shutil.copytree(folder, self._spool, dirs_exist_ok=True)
        spool = self._spool

        def send(c):
            c.log_artifacts(self.run_id, spool)
            shutil.rmtree(spool, ignore_errors=True)

        self.writer.submit("artifacts", send)

    def end(self, status: str, wait_s: float | None = None, **tags) -> None:
        """Set a terminal status once, and wait (up to the grace period) for every queued write."""
        if self.writer is None or self.ended:
            return
        self.ended = True
        if tags:
            self.set_tags(**tags)
        self.writer.submit(f"status {status}", lambda c: c.set_terminated(self.run_id, status))
        self.writer.flush(self.writer.grace_s if wait_s is None else wait_s)
        self._report_outages()

    def flush(self, wait_s: float) -> None:
        """Send what is queued, waiting at most ``wait_s`` (the trial is being torn down)."""
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.writer.flush(wait_s)

    def _report_outages(self) -> None:
        w = self.writer
        if w.retries and not w.pending:
            with contextlib.suppress(Exception), quick_requests():
                w.client.set_tag(self.run_id, "tracking_retries", str(w.retries))
                w.client.set_tag(self.run_id, "tracking_outage_s", f"{w.longest_outage_s:.0f}")


# ------------------------------------------------------------------ the sweep's parent run

def prepare_store(tracking_uri: str) -> None:
    """A SQLite store: its folder exists and the database is in WAL mode (readers never block writers)."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri[len("sqlite:///"):])
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as db:
        db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file


class SweepRun:
    """The sweep's parent run and what the driver records for its trials."""

    def __init__(self, tracking: Tracking, grace_s: float | None = None):
        self.tracking = tracking
        self.client = _client(tracking.tracking_uri)
        self.writer = RetryingWriter(self.client, grace_s)
        self._trial_runs: dict[str, str] = {}

    @property
    def run_id(self) -> str:
        return self.tracking.parent_run_id

    @classmethod
    def create(cls, tracking_uri: str, experiment: str, tags: dict, grace_s: float | None = None) -> "SweepRun":
        """The store, the experiment and the parent run, made on the driver before any trial starts."""
        prepare_store(tracking_uri)
        client = _client(tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            artifact_location = None
            if tracking_uri.startswith("sqlite:///"):
                root = Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts" / experiment
                artifact_location = root.resolve().as_uri()
            experiment_id = client.create_experiment(experiment, artifact_location=artifact_location)
        else:
            experiment_id = exp.experiment_id
        if (exp is None or EXPERIMENT_KIND[0] not in exp.tags):
            client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
        name = parent_run_name(experiment, tags.get("space", "?"))
        parent = client.create_run(experiment_id, tags={"mlflow.runName": name, "sweep": "parent", **tags})
        client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + parent.info.run_id,
                                  json.dumps(sweep_view_state(parent.info.run_id)))
        return cls(Tracking(tracking_uri, experiment_id, parent.info.run_id), grace_s)

    @property
    def runs_page(self) -> str:
        """The UI's address (after the server's root) of this sweep's runs, best objective first."""
        return runs_page(self.tracking.experiment_id, self.run_id)

    @classmethod
    def reopen(cls, tracking_uri: str, parent, grace_s: float | None = None) -> tuple["SweepRun", int]:
        """A resumed sweep's parent run, RUNNING again; runs the interruption left open are marked KILLED."""
        prepare_store(tracking_uri)
        sweep = cls(Tracking(tracking_uri, parent.info.experiment_id, parent.info.run_id), grace_s)
        closed = sweep.close_leftovers("KILLED", "interrupted")
        sweep.client.update_run(parent.info.run_id, status="RUNNING")
        sweep.client.set_tag(parent.info.run_id, "resumed", str(int(parent.data.tags.get("resumed", "0")) + 1))
        return sweep, closed

    def log_reference(self, name: str, description: str, metrics: dict) -> None:
        """A reference detector (PCA, kNN) as a finished run under the parent."""
        from mlflow.entities import Param

        run = self.client.create_run(self.tracking.experiment_id, tags={
            "mlflow.parentRunId": self.run_id, "mlflow.runName": f"reference·{name}", "reference": name,
            "sweep": "reference"})
        self.client.log_batch(run.info.run_id, metrics=_metrics({metric_key(k): v for k, v in metrics.items()}, 0),
                              params=[Param("description", description)])
        self.client.set_terminated(run.info.run_id, "FINISHED")
        self.log_metrics({f"reference_{name}_objective": metrics["objective"]})

    def log_metrics(self, metrics: dict, step: int = 0) -> None:
        batch = _metrics({metric_key(k): v for k, v in metrics.items()}, step)
        self.writer.submit("parent metrics", lambda c: c.log_batch(self.run_id, metrics=batch))

    def _trial_run_id(self, trial_id: str) -> str | None:
        if trial_id not in self._trial_runs:
            with quick_requests():
                found = self.client.search_runs([self.tracking.experiment_id],
                                                _trial_run_filter(self.tracking, trial_id), max_results=1)
            if not found:
                return None
            self._trial_runs[trial_id] = found[0].info.run_id
        return self._trial_runs[trial_id]

    def _for_trial(self, trial_id: str, what: str, write) -> None:
        """Queue ``write(client, run_id)`` on the trial's run (nothing if it was never opened)."""
        def op(c):
            run_id = self._trial_run_id(trial_id)
            if run_id is not None:
                write(c, run_id)

        self.writer.submit(what, op)

    def trial_stopped(self, trial_id: str, epoch: int, by: str = "asha") -> None:
        """A trial the scheduler stopped early ran as told: FINISHED, with who stopped it and when."""
        from mlflow.entities import RunTag

        def close(c, run_id):
            c.log_batch(run_id, tags=[RunTag("stopped_by", by), RunTag("stopped_at_epoch", str(epoch))])
            c.set_terminated(run_id, "FINISHED")

        self._for_trial(trial_id, f"close stopped trial {trial_id}", close)

    def trial_failed(self, trial_id: str, reason: str) -> None:
        """A trial that used up its retries (a lost node, an error): FAILED, with the reason."""
        from mlflow.entities import RunTag

        def close(c, run_id):
            if "failure" not in c.get_run(run_id).data.tags:  # the trial's own reason, when it could write it
                c.log_batch(run_id, tags=[RunTag("failure", reason[:5000])])
            c.set_terminated(run_id, "FAILED")

        self._for_trial(trial_id, f"close failed trial {trial_id}", close)

    def trial_retried(self, trial_id: str, attempt: int, reason: str) -> None:
        from mlflow.entities import RunTag

        self._for_trial(trial_id, f"note retry of {trial_id}", lambda c, run_id: c.log_batch(
            run_id, tags=[RunTag("retries", str(attempt)), RunTag("last_retry_reason", reason[:5000])]))

    def drop_model(self, trial_id: str, artifact: str) -> None:
        """Delete a trial's logged weights (``--keep-checkpoints``); its metrics and plots stay."""
        from mlflow.entities import RunTag
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        def drop(c, run_id):
            get_artifact_repository(c.get_run(run_id).info.artifact_uri).delete_artifacts(artifact)
            c.log_batch(run_id, tags=[RunTag("weights_dropped", "keep-checkpoints")])

        self._for_trial(trial_id, f"drop the weights of {trial_id}", drop)

    def close_leftovers(self, status: str, reason: str) -> int:
        """Trial runs still open (the sweep ended or was interrupted around them); returns how many."""
        from mlflow.entities import ViewType

        self.writer.flush(self.writer.grace_s)
        runs = self.client.search_runs([self.tracking.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
                                       run_view_type=ViewType.ACTIVE_ONLY, max_results=10_000)
        closed = 0
        for run in runs:
            if run.info.status in ("RUNNING", "SCHEDULED"):
                self.client.set_tag(run.info.run_id, "stopped_by", reason)
                self.client.set_terminated(run.info.run_id, status)
                closed += 1
        return closed

    def summarise(self, leaderboard, metrics: dict) -> None:
        """The sweep's outcome on the parent: summary metrics and the leaderboard as an MLflow table."""
        self.log_metrics(metrics)
        table = leaderboard.astype(object).where(leaderboard.notna(), None)
        self.writer.submit("leaderboard table", lambda c: c.log_table(self.run_id, data=table,
                                                                        artifact_file="leaderboard.json"))
        self.writer.flush(self.writer.grace_s)

    def end(self, status: str, leftover_status: str = "KILLED", reason: str = "interrupted") -> int:
        """Close the runs trials left open, then the parent; returns how many trial runs were closed."""
        closed = self.close_leftovers(leftover_status, reason)
        self.writer.submit(f"parent status {status}", lambda c: c.set_terminated(self.run_id, status))
        self.writer.flush(self.writer.grace_s)
        return closed


def log_sweep_report(tracking_uri: str, parent_run_id: str, folder: str | Path, artifact_path: str,
                     tags: dict | None = None) -> None:
    """The analyze report and its figures, on the sweep's parent run."""
    client = _client(tracking_uri)
    client.log_artifacts(parent_run_id, str(folder), artifact_path)
    for k, v in (tags or {}).items():
        client.set_tag(parent_run_id, k, str(v))


def log_summary_run(tracking_uri: str, experiment: str, name: str, params: dict, metrics: dict,
                    folder: str | Path) -> str:
    """A standalone run (the search benchmark's summary) with params, metrics and a folder of artifacts."""
    from mlflow.entities import Param

    prepare_store(tracking_uri)
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, tags={"mlflow.runName": name}).info.run_id
    client.log_batch(run_id, metrics=_metrics(metrics, 0),
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id, "FINISHED")
    return run_id


# ------------------------------------------------------------------ the registry

DETECTOR_CODE = Path(__file__).with_name("detector_model.py")
DISTRIBUTION = "anomaly-ae-search"


def torch_pins() -> list[str]:
    """torch and torchvision as pyproject.toml pins them (read from the installed package's metadata)."""
    from importlib.metadata import requires

    pins = [r for r in requires(DISTRIBUTION) or [] if r.split("==")[0] in ("torch", "torchvision")]
    if len(pins) != 2:
        raise RuntimeError(f"{DISTRIBUTION}'s metadata does not pin torch and torchvision: {pins}")
    return pins


def register_detector(tracking_uri: str, parent, name: str, trial_id: str, params: dict, metrics: dict,
                      files: list[Path], model_artifacts: dict[str, str], decode_size: tuple[int, int],
                      model_name: str, version_tags: dict, description: str, alias: str):
    """Log the detector in a promotion run under the sweep, as code, register it and move ``alias``.

    Models-from-code: the model is ``detector_model.py`` plus the artifacts it loads (weights as
    tensors, the detector's JSON), so nothing is pickled and loading it runs only that file."""
    import mlflow
    import numpy as np
    from mlflow.entities import Param
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    client = _client(tracking_uri)
    # uint8 crops (N, H, W, 3) at the decode size in, one score and label per crop out.
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, *decode_size, 3))]),
                               outputs=Schema([ColSpec("double", "score"), ColSpec("long", "label")]))
    run = client.create_run(parent.info.experiment_id, tags={
        "mlflow.parentRunId": parent.info.run_id, "sweep": "promotion", "mlflow.runName": name,
        "promoted_trial": trial_id})
    run_id = run.info.run_id
    client.log_batch(run_id, metrics=_metrics(metrics, 0), params=[Param(k, str(v)) for k, v in params.items()])
    for f in files:
        client.log_artifact(run_id, str(f))
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(DETECTOR_CODE), artifacts=model_artifacts, signature=signature,
            input_example=np.zeros((1, *decode_size, 3), dtype=np.uint8),
            pip_requirements=[*torch_pins(), "mlflow", "pandas", "numpy"])
    version = mlflow.register_model(info.model_uri, model_name, tags={**version_tags, "promotion_run_id": run_id})
    client.update_model_version(model_name, version.version, description=description)
    client.set_registered_model_alias(model_name, alias, version.version)
    client.set_tag(parent.info.run_id, "promotion_run_id", run_id)
    client.set_tag(parent.info.run_id, "promoted_version", f"{model_name}/{version.version}")
    return version


def log_prediction(tracking_uri: str, model_version, name: str, params: dict, metrics: dict, tags: dict) -> str:
    """A predict call's drift check, as a finished run nested under the promotion run of ``model_version``.

    The run sits in the sweep's experiment, so the UI shows a detector's field checks beside its promotion."""
    from mlflow.entities import Param

    client = _client(tracking_uri)
    promotion = client.get_run(model_version.run_id)
    run_id = client.create_run(promotion.info.experiment_id, tags={
        "mlflow.parentRunId": promotion.info.run_id, "mlflow.runName": name, "sweep": "predict",
        "model_version": f"{model_version.name}/{model_version.version}", **{k: str(v) for k, v in tags.items()}},
    ).info.run_id
    client.log_batch(run_id, metrics=_metrics({f"drift/{k}": v for k, v in metrics.items()}, 0),
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id
