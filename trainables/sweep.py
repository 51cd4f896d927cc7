"""Wire the trainable into Ray Tune: OptunaSearch (TPE), ASHA, a concurrency limit."""
from __future__ import annotations

import inspect
import os
import warnings

import optuna
import ray
from optuna.samplers import RandomSampler, TPESampler
from ray import tune
from ray.tune import CheckpointConfig, RunConfig
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from anomaly_ae.baselines import is_seed_baseline
from search_spaces import get_space
from trainables.autoencoder import train_autoencoder


class WarmStartedOptunaSearch(OptunaSearch):
    """OptunaSearch whose study starts with finished trials of earlier sweeps.

    Ray's ``evaluated_rewards`` refuses a define-by-run space, so the trials arrive as
    Optuna ``FrozenTrial``s whose distributions were replayed through the same space.
    """

    def __init__(self, *args, warm_trials=(), **kwargs):
        self._warm_trials = list(warm_trials)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        for trial in self._warm_trials:
            self._ot_study.add_trial(trial)
        self._warm_trials = []  # added once; a restored searcher already holds them in its study


class TrialLines(tune.Callback):
    """One readable line per finished trial, with the best so far against the baselines and references."""

    def __init__(self, total: int, references: dict[str, float] | None = None):
        self.total, self.references = total, dict(references or {})
        self.best_searched = self.best_baseline = float("-inf")
        self.best_of: dict[str, float] = {}  # each trial's best objective so far (its last may be lower)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        objective = result.get("objective", float("nan"))
        if objective == objective:
            self.best_of[trial.trial_id] = max(objective, self.best_of.get(trial.trial_id, float("-inf")))

    def _line(self, trials, trial, how: str) -> None:
        # Counted from the trial list, so that a resumed sweep goes on from the trials it restored.
        done = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | {trial.trial_id})
        r = trial.last_result or {}
        objective = self.best_of.get(trial.trial_id, r.get("objective", float("nan")))
        baseline = r.get("baseline", "")
        if objective == objective:  # not NaN; start points count as neither searched nor seed baseline
            if is_seed_baseline(baseline):
                self.best_baseline = max(self.best_baseline, objective)
            elif not baseline:
                self.best_searched = max(self.best_searched, objective)
        who = f"[{baseline}]" if baseline else ""
        standings = " ".join([f"searched {self.best_searched:.3f}", f"baseline {self.best_baseline:.3f}",
                              *(f"{k} {v:.3f}" for k, v in self.references.items())]).replace("-inf", " -  ")
        print(f"[{done:>2}/{self.total}] {trial.trial_id} {how:<8} {trial.config.get('variant', '?'):<19} "
              f"{r.get('score', '?'):<11} ep {r.get('epoch', 0):<2} obj {objective:.3f} {who:<17} "
              f"| best: {standings}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        how = "diverged" if r.get("diverged") else "done" if r.get("final") else "stopped"
        self._line(trials, trial, how)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, "ERROR")


def init_ray(args) -> None:
    if ray.is_initialized():
        return
    if args.address:
        import analysis
        import anomaly_ae
        import search_spaces
        import trainables

        # Ship this project's packages to every node: cluster nodes need the dependencies
        # (torch, ray, mlflow ...) installed, not a checkout of this repository.
        try:
            ray.init(address=args.address, log_to_driver=False, configure_logging=False,
                     runtime_env={"py_modules": [anomaly_ae, search_spaces, trainables, analysis]})
        except ConnectionError as err:
            # Ray 2.59+ clusters use token auth, and an explicit address never turns it on by itself.
            hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                " If the cluster uses token authentication (the default since Ray 2.59), set RAY_AUTH_MODE=token"
                " and make the cluster's token available (RAY_AUTH_TOKEN or ~/.ray/auth_token).")
            raise ConnectionError(f"--address {args.address}: {err}.{hint}") from err
    else:
        # address="local": without --address the sweep starts its own Ray, even where a `ray start`
        # cluster runs (or ran) on this machine; ray.init() would otherwise join that one.
        ray.init(address="local", num_cpus=max(2, int(args.cpus_per_trial * args.max_concurrent)),
                 include_dashboard=False, log_to_driver=False, configure_logging=False)


def make_trainable(args, splits, tracking):
    trainable = tune.with_parameters(train_autoencoder, splits=splits, tracking=tracking)
    return tune.with_resources(trainable, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})


def startup_trials(n_points: int, max_concurrent: int) -> int:
    """TPE's random startup, counted in finished trials.

    The enqueued points (seed baselines, PCA start) and any warm-start trials are TPE's startup. The
    first searched trial is proposed when the (points - concurrency + 1)-th point finishes, so that
    many finished points let it be guided rather than drawn at random.
    """
    return max(2, n_points - max_concurrent + 1) if n_points else 10


def make_searcher(args, space, points: list[dict], warm_trials=()):
    if args.sampler == "random":
        sampler = RandomSampler(seed=args.seed)
    else:
        # group=True: the space is conditional (each variant has its own parameters), and grouped
        # multivariate TPE models each branch's parameters jointly instead of only those common to
        # every trial, which is all Optuna 5's default multivariate TPE sees here.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            sampler = TPESampler(seed=args.seed, n_startup_trials=startup_trials(len(points), args.max_concurrent),
                                 multivariate=True, group=True)
    return WarmStartedOptunaSearch(space=space, metric="objective", mode="max", sampler=sampler,
                                   points_to_evaluate=points or None, warm_trials=warm_trials)


class EnqueuedRunToEnd(ASHAScheduler):
    """ASHA that never stops an enqueued trial (a seed baseline or the PCA start point).

    They are the yardsticks the searched trials are compared with, so they run their whole budget;
    their results still enter the rungs, so they still set the bar for searched trials.
    """

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if result.get("baseline") else decision


def make_scheduler(args, epochs: int):
    if args.scheduler == "fifo":
        return FIFOScheduler()  # every trial runs its whole budget: what the rung-fidelity measurement needs
    return EnqueuedRunToEnd(time_attr="epoch", metric="objective", mode="max", max_t=epochs,
                            grace_period=min(args.grace_period, epochs), reduction_factor=2)


def run_sweep(args, splits, tracking, points: list[dict], perceptual: bool, warm_trials=(),
              references: dict[str, float] | None = None):
    """Run the sweep; returns Ray's ResultGrid."""
    init_ray(args)
    space = get_space(args.space, perceptual, args.epochs, args.steps_per_epoch, args.samples_per_epoch,
                      args.score_selection, args.objective)
    epochs = space.keywords.get("epochs") or inspect.signature(space.func).parameters["epochs"].default
    # metric/mode live on the searcher and scheduler only: setting them on TuneConfig as
    # well raises, and a define-by-run OptunaSearch does not pick them up from there.
    tuner = tune.Tuner(
        make_trainable(args, splits, tracking),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(make_searcher(args, space, points, warm_trials), args.max_concurrent),
            scheduler=make_scheduler(args, epochs), num_samples=args.num_samples, time_budget_s=args.time_budget_s,
        ),
        run_config=RunConfig(
            name=args.experiment or f"proliv-{args.space}", storage_path=args.storage_path, verbose=0,
            callbacks=[TrialLines(args.num_samples, references)],
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="objective",
                                               checkpoint_score_order="max"),
        ),
    )
    return tuner.fit()


def resume_sweep(args, splits, tracking, path: str):
    """Continue an interrupted sweep from Ray's experiment state: finished trials are kept,
    unfinished ones restart from their last checkpoint, the Optuna searcher goes on."""
    init_ray(args)
    tuner = tune.Tuner.restore(path, trainable=make_trainable(args, splits, tracking), resume_unfinished=True)
    return tuner.fit()


def was_interrupted(results, num_samples: int, time_budget_s: float | None) -> bool:
    """True when fit() returned early on Ctrl-C: a trial is unfinished, or trials are missing."""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None) or []
    if any(t.status not in ("TERMINATED", "ERROR") for t in trials):
        return True
    return time_budget_s is None and len(results) < num_samples
