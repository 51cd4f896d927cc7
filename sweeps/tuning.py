"""The Ray Tune parts of a sweep: the searcher (OptunaSearch, TPE), the scheduler (ASHA), the callbacks
(progress, checkpoint retention), and the Tuner that puts them together. Driven by sweeps.sweep.Sweep."""
from __future__ import annotations

import inspect
import logging
import os
import warnings

import optuna
import ray
from optuna.samplers import RandomSampler, TPESampler
from ray import tune
from ray.tune import CheckpointConfig, FailureConfig, RunConfig
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from anomaly_ae.detector.checkpoints import MODEL_FILE
from anomaly_ae.tracking.mlflow_runs import SweepRun, Tracking
from search_spaces.baselines import is_seed_baseline
from trainables.autoencoder import train_autoencoder

# MLflow credentials travel to cluster nodes with the trials (a basic-auth tracking server).
FORWARDED_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_TRACKING_SERVER_CERT_PATH", "PROLIV_TRACKING_GRACE_S")

logger = logging.getLogger(__name__)


class WarmStartedOptunaSearch(OptunaSearch):
    """OptunaSearch whose study starts with finished trials of earlier sweeps, and records in the
    study who proposed each trial.

    Ray's ``evaluated_rewards`` refuses a define-by-run space, so the trials arrive as
    Optuna ``FrozenTrial``s whose distributions were replayed through the same space.

    Each proposed trial gets the user attributes ``ray_trial_id`` (its MLflow run's ``trial_id``
    tag), ``sampler`` (the class that proposed it) and ``history`` (finished trials the sampler
    had seen): a study in a database then shows that a resumed sweep went on with the same sampler
    and the trials from before the interruption.
    """

    def __init__(self, *args, warm_trials=(), **kwargs):
        self._warm_trials = list(warm_trials)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        for trial in self._warm_trials:
            self._ot_study.add_trial(trial)
        self._warm_trials = []  # added once; a restored searcher already holds them in its study

    def suggest(self, trial_id: str):
        known = trial_id in self._ot_trials
        params = super().suggest(trial_id)
        if not known:
            trial = self._ot_trials[trial_id]
            finished = self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            for key, value in (("ray_trial_id", trial_id), ("sampler", type(self._ot_study.sampler).__name__),
                               ("history", len(finished))):
                trial.set_user_attr(key, value)
        return params

    def on_trial_result(self, trial_id: str, result: dict):
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # A database study can be ahead of Ray's last experiment snapshot: a trial that finished
            # after it is run again by --resume, and the study keeps its first result.
            pass

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        # Trials the killed driver asked for after Ray's last snapshot are RUNNING in a database
        # study, and no restored trial will ever finish them: mark them FAIL, so that the study
        # shows only what ran to an end (TPE ignores failed trials).
        known = {t._trial_id for t in self._ot_trials.values()}
        storage = self._ot_study._storage
        for trial in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial._trial_id not in known:
                storage.set_trial_user_attr(trial._trial_id, "failed_by", "resume: asked after the last snapshot")
                storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


def trial_outcome(result: dict) -> str:
    """How a trial that Tune calls complete ended: done, stopped (by the scheduler) or diverged."""
    return "diverged" if result.get("diverged") else "done" if result.get("final") else "stopped"


class SweepProgress(tune.Callback):
    """The sweep as it runs: one line per finished trial, and the parent run's story in MLflow.

    Printed: the best searched trial so far against the seed baselines and the references. Logged
    to the parent run: ``best_so_far`` and the counts by outcome, with step = trials finished (the
    search's anytime curve); a scheduler-stopped trial's run is closed FINISHED with
    ``stopped_by=asha``; a trial that used up its retries is closed FAILED with the reason.
    """

    def __init__(self, total: int, references: dict[str, float] | None = None, tracking: Tracking | None = None,
                 quiet: bool = False):
        self.total, self.references, self.tracking, self.quiet = total, dict(references or {}), tracking, quiet
        self.best_searched = self.best_baseline = float("-inf")
        self.best_of: dict[str, float] = {}  # each trial's best objective so far (its last may be lower)
        self._sweep = None

    def __getstate__(self):
        # Pickled with the experiment state (for --resume); the MLflow client is made again.
        return {**self.__dict__, "_sweep": None}

    @property
    def sweep(self) -> SweepRun | None:
        if self._sweep is None and self.tracking is not None:
            self._sweep = SweepRun(self.tracking)
        return self._sweep

    def on_trial_result(self, iteration, trials, trial, result, **info):
        objective = result.get("objective", float("nan"))
        if objective == objective:
            self.best_of[trial.trial_id] = max(objective, self.best_of.get(trial.trial_id, float("-inf")))

    def _objective(self, trial) -> float:
        return self.best_of.get(trial.trial_id, (trial.last_result or {}).get("objective", float("nan")))

    def _finished(self, trials, trial, how: str) -> None:
        # Counted from the trial list, so that a resumed sweep goes on from the trials it restored.
        finished = {t.trial_id: t for t in trials if t.status in ("TERMINATED", "ERROR")}
        finished[trial.trial_id] = trial
        done = len(finished)
        r = trial.last_result or {}
        objective = self._objective(trial)
        baseline = r.get("baseline", "")
        if objective == objective:  # not NaN; start points count as neither searched nor seed baseline
            if is_seed_baseline(baseline):
                self.best_baseline = max(self.best_baseline, objective)
            elif not baseline:
                self.best_searched = max(self.best_searched, objective)
        if self.sweep is not None:
            values = [v for v in map(self._objective, finished.values()) if v == v]
            outcomes = ["error" if t.status == "ERROR" or (t is trial and how == "ERROR")
                        else trial_outcome(t.last_result or {}) for t in finished.values()]
            self.sweep.log_metrics({"best_so_far": max(values, default=float("nan")), "trials_finished": done,
                                    **{f"trials_{o}": outcomes.count(o)
                                       for o in ("done", "stopped", "diverged", "error")}}, step=done)
        if self.quiet:
            return
        who = f"[{baseline}{' reused' if r.get('reused_from') else ''}]" if baseline else ""
        standings = " ".join([f"searched {self.best_searched:.3f}", f"baseline {self.best_baseline:.3f}",
                              *(f"{k} {v:.3f}" for k, v in self.references.items())]).replace("-inf", " -  ")
        logger.info(f"[{done:>2}/{self.total}] {trial.trial_id} {how:<8} {trial.config.get('variant', '?'):<19} "
                    f"{r.get('score', '?'):<11} ep {r.get('epoch', 0):<2} obj {objective:.3f} {who:<17} "
                    f"| best: {standings}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        how = trial_outcome(r)
        # A trial ASHA stopped is closed here. One stopped by the time budget or a Ctrl-C is left
        # open, for the sweep's end to close (FINISHED with stopped_by=time_budget, or KILLED).
        if how == "stopped" and getattr(trial, "stopped_by", None) == "asha" and self.sweep is not None:
            self.sweep.trial_stopped(trial.trial_id, int(r.get("epoch", 0)))
        self._finished(trials, trial, how)

    def on_trial_recover(self, iteration, trials, trial, **info):
        if self.sweep is not None:
            self.sweep.trial_retried(trial.trial_id, trial.num_failures, _error_text(trial))
        if not self.quiet:
            logger.info(f"       {trial.trial_id} retried (failure {trial.num_failures}): {_error_text(trial)[:120]}")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.sweep is not None:
            self.sweep.trial_failed(trial.trial_id, _error_text(trial))
        self._finished(trials, trial, "ERROR")


class CheckpointRetention(tune.Callback):
    """What a finished trial keeps of its weights.

    Its Ray checkpoint (weights, optimizer state) goes when it finishes: only a trial still running
    needs one, for a retry or ``--resume``, and MLflow holds its best epoch's ``model.pt``. With
    ``keep`` (``--keep-checkpoints N``), only the N best finished searched trials keep their
    ``model.pt`` too; enqueued trials (seed baselines, start points) keep theirs, since promotion
    compares against them. Metrics and plots always stay.
    """

    def __init__(self, keep: int | None, tracking: Tracking | None):
        self.keep, self.tracking = keep, tracking
        self.best: dict[str, float] = {}
        self.dropped: set[str] = set()
        self._sweep = None

    def __getstate__(self):
        return {**self.__dict__, "_sweep": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        objective = result.get("objective", float("nan"))
        if objective == objective and not result.get("baseline"):
            self.best[trial.trial_id] = max(objective, self.best.get(trial.trial_id, float("-inf")))

    def on_trial_complete(self, iteration, trials, trial, **info):
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            checkpoint.filesystem.delete_dir(checkpoint.path)
        if not self.keep or self.tracking is None:
            return
        finished = {t.trial_id for t in trials if t.status == "TERMINATED"} | {trial.trial_id}
        kept = set(sorted(self.best, key=self.best.get, reverse=True)[:self.keep])
        for trial_id in sorted((finished & set(self.best)) - kept - self.dropped):
            self.dropped.add(trial_id)
            if self._sweep is None:
                self._sweep = SweepRun(self.tracking)
            self._sweep.drop_model(trial_id, MODEL_FILE)


def _error_text(trial) -> str:
    """The last line of the trial's error trace (the exception), or a placeholder."""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - the trace is advice, never worth failing the sweep for
        text = ""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "the trial's worker died (node lost?)"


def init_ray(spec) -> None:
    if ray.is_initialized():
        return
    if spec.address:
        import anomaly_ae
        import search_spaces
        import trainables

        # Ship this project's packages to every node: cluster nodes need the dependencies
        # (torch, ray, mlflow ...) installed, not a checkout of this repository.
        env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        try:
            ray.init(address=spec.address, log_to_driver=False, configure_logging=False,
                     runtime_env={"py_modules": [anomaly_ae, search_spaces, trainables], "env_vars": env})
        except ConnectionError as err:
            # Ray 2.59+ clusters use token auth, and an explicit address never turns it on by itself.
            hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                " If the cluster uses token authentication (the default since Ray 2.59), set RAY_AUTH_MODE=token"
                " and make the cluster's token available (RAY_AUTH_TOKEN or ~/.ray/auth_token).")
            raise ConnectionError(f"--address {spec.address}: {err}.{hint}") from err
    else:
        # address="local": without --address the sweep starts its own Ray, even where a `ray start`
        # cluster runs (or ran) on this machine; ray.init() would otherwise join that one.
        ray.init(address="local", num_cpus=max(2, int(spec.cpus_per_trial * spec.max_concurrent)),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)


def trainable_parameters(spec, splits, tracking, data_key: str | None) -> dict:
    """What every trial gets besides its config (through Ray's object store)."""
    return {"splits": splits, "tracking": tracking, "data_key": data_key, "reuse": not spec.rerun_baselines}


def make_trainable(spec, splits, tracking, data_key: str | None):
    trainable = tune.with_parameters(train_autoencoder, **trainable_parameters(spec, splits, tracking, data_key))
    return tune.with_resources(trainable, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def startup_trials(n_points: int, max_concurrent: int) -> int:
    """TPE's random startup, counted in finished trials.

    The enqueued points (seed baselines, PCA start) and any warm-start trials are TPE's startup. The
    first searched trial is proposed when the (points - concurrency + 1)-th point finishes, so that
    many finished points let it be guided rather than drawn at random.
    """
    return max(2, n_points - max_concurrent + 1) if n_points else 10


def make_searcher(spec, space, points: list[dict], warm_trials=(), study=None):
    """TPE (or random) behind Ray's OptunaSearch. ``study``: (storage, name) of a database study, else
    the study lives in the driver's memory and Ray's experiment state."""
    points = points[:spec.num_samples]  # points past the budget would wait in the study, never run
    if spec.sampler == "random":
        sampler = RandomSampler(seed=spec.seed)
    else:
        # group=True: the space is conditional (each variant has its own parameters), and grouped
        # multivariate TPE models each branch's parameters jointly instead of only those common to
        # every trial, which is all Optuna 5's default multivariate TPE sees here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            sampler = TPESampler(seed=spec.seed, n_startup_trials=startup_trials(len(points), spec.max_concurrent),
                                 multivariate=True, group=True)
    storage, name = study or (None, None)
    return WarmStartedOptunaSearch(space=space, metric="objective", mode="max", sampler=sampler,
                                   points_to_evaluate=points or None, warm_trials=warm_trials, storage=storage,
                                   study_name=name)


class EnqueuedRunToEnd(ASHAScheduler):
    """ASHA that never stops an enqueued trial (a seed baseline or the PCA start point).

    They are the yardsticks the searched trials are compared with, so they run their whole budget;
    their results still enter the rungs, so they still set the bar for searched trials.
    """

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if result.get("baseline"):
            return TrialScheduler.CONTINUE
        if decision == TrialScheduler.STOP:
            # Marked on the trial: Tune stops trials the same way at a time budget or a Ctrl-C, and
            # only this stop is ASHA's (SweepProgress tells them apart by it).
            trial.stopped_by = "asha"
        return decision


def make_scheduler(spec, epochs: int):
    if spec.scheduler == "fifo":
        return FIFOScheduler()  # every trial runs its whole budget: what the rung-fidelity measurement needs
    return EnqueuedRunToEnd(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                            grace_period=min(spec.grace_period, epochs), reduction_factor=2)


def run_sweep(spec, splits, tracking, data_key: str, points: list[dict], perceptual: bool, warm_trials=(),
              references: dict[str, float] | None = None, study=None):
    """Run the sweep; returns Ray's ResultGrid."""
    init_ray(spec)
    space = spec.search_space(perceptual)
    epochs = space.keywords.get("epochs") or inspect.signature(space.func).parameters["epochs"].default
    # metric/mode live on the searcher and scheduler only: setting them on TuneConfig as
    # well raises, and a define-by-run OptunaSearch does not pick them up from there.
    tuner = tune.Tuner(
        make_trainable(spec, splits, tracking, data_key),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(make_searcher(spec, space, points, warm_trials, study), spec.max_concurrent),
            scheduler=make_scheduler(spec, epochs), num_samples=spec.num_samples, time_budget_s=spec.time_budget_s,
        ),
        run_config=RunConfig(
            name=spec.experiment_name, storage_path=spec.storage_path, verbose=0,
            callbacks=[SweepProgress(spec.num_samples, references, tracking),
                       CheckpointRetention(spec.keep_checkpoints, tracking)],
            # The latest checkpoint only: what a retry or --resume needs. MLflow keeps the best epoch.
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            # A trial on a lost node (or one that failed) restarts from its last checkpoint elsewhere.
            failure_config=FailureConfig(max_failures=spec.max_failures),
        ),
    )
    return tuner.fit()


def resume_sweep(spec, splits, tracking, data_key: str, path: str):
    """Continue an interrupted sweep from Ray's experiment state: finished trials are kept,
    unfinished ones restart from their last checkpoint, the Optuna searcher goes on."""
    init_ray(spec)
    tuner = tune.Tuner.restore(path, trainable=make_trainable(spec, splits, tracking, data_key), resume_unfinished=True)
    return tuner.fit()


def was_interrupted(results, num_samples: int, time_budget_s: float | None) -> bool:
    """True when fit() returned early on Ctrl-C: a trial is unfinished, or trials are missing."""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
    if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        return True
    return time_budget_s is None and len(results) < num_samples
