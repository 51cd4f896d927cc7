"""Searcher and scheduler wiring: TPE's startup and ASHA's treatment of enqueued trials."""
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from sweeps.tuning import EnqueuedRunToEnd, startup_trials


def test_asha_never_stops_an_enqueued_trial_but_stops_a_searched_one():
    scheduler = EnqueuedRunToEnd(time_attr="epoch", metric="objective", mode="max", max_t=4, grace_period=1,
                                 reduction_factor=2)
    trials = [Trial("t", config={}, stub=True) for _ in range(4)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    decisions = [scheduler.on_trial_result(None, t, {"epoch": 1, "objective": v, "baseline": b})
                 for t, v, b in zip(trials, [0.9, 0.95, 0.1, 0.1], ["", "", "seed000", ""])]
    assert decisions == [TrialScheduler.CONTINUE] * 3 + [TrialScheduler.STOP]
    # The stop is marked as ASHA's on the trial; a time budget or Ctrl-C stops trials the same way.
    assert [getattr(t, "stopped_by", None) for t in trials] == [None, None, None, "asha"]


def test_only_a_trial_asha_stopped_is_closed_as_stopped(tmp_path):
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from anomaly_ae.tracking.mlflow_runs import SweepRun, TrialRun
    from sweeps.tuning import SweepProgress

    sweep = SweepRun.create(f"sqlite:///{tmp_path / 'mlflow.db'}", "wiring", {"space": "quick"}, grace_s=5)
    progress = SweepProgress(2, tracking=sweep.tracking, quiet=True)
    trials = []
    for trial_id, marker in (("by-asha", "asha"), ("by-budget", None)):
        TrialRun(sweep.tracking, {"variant": "conv_ae", "score": "mse", "baseline": None}, trial_id).log_report(
            {"objective": 0.5, "epoch": 1}, 1)
        trial = SimpleNamespace(trial_id=trial_id, status="TERMINATED", config={"variant": "conv_ae"},
                                last_result={"objective": 0.5, "epoch": 1, "final": 0, "baseline": ""})
        if marker:
            trial.stopped_by = marker
        trials.append(trial)
        progress.on_trial_complete(0, trials, trial)
    progress.sweep.writer.flush()
    runs = {r.data.tags["trial_id"]: r for r in MlflowClient(sweep.tracking.tracking_uri).search_runs(
        [sweep.tracking.experiment_id], "tags.trial_id != ''")}
    assert runs["by-asha"].info.status == "FINISHED" and runs["by-asha"].data.tags["stopped_by"] == "asha"
    assert runs["by-budget"].info.status == "RUNNING"  # the sweep's end closes it, knowing why it stopped
    assert sweep.end("KILLED") == 1
    assert MlflowClient(sweep.tracking.tracking_uri).get_run(runs["by-budget"].info.run_id).info.status == "KILLED"


def test_tpe_startup_ends_when_the_first_searched_trial_is_proposed():
    # 6 enqueued points, 2 at a time: the 7th trial is proposed when the 5th point finishes.
    assert startup_trials(6, 2) == 5
    assert startup_trials(6, 1) == 6
    assert startup_trials(1, 4) == 2
    assert startup_trials(0, 2) == 10  # nothing enqueued: Optuna's own default


def test_leaderboard_skips_a_trial_the_time_budget_never_started():
    from types import SimpleNamespace

    import pandas as pd

    from sweeps.leaderboard import results_frame

    started = SimpleNamespace(config={"variant": "pca_ae", "pca_ae.n_components": 8, "score": "mse"},
                              metrics_dataframe=pd.DataFrame({"objective": [0.9], "score": ["topk"]}),
                              metrics={"objective": 0.9, "epoch": 1, "trial_id": "a"}, path="x/a", error=None)
    never = SimpleNamespace(config=None, metrics_dataframe=None, metrics={}, path="x/b", error=None)
    frame = results_frame([started, never])
    assert list(frame["trial_id"]) == ["a"] and frame["score"].iloc[0] == "topk"


def test_the_verdict_says_what_budget_the_seed_baselines_had():
    import pandas as pd

    from sweeps.leaderboard import search_verdict

    frame = pd.DataFrame({"trial_id": ["a", "b", "c"], "baseline": ["", "seed000", "seed003"],
                          "best_objective": [0.9, 0.5, 0.6], "tie_break": [0.0] * 3, "epochs": [4, 4, 4], "score": ["mse"] * 3,
                          "variant": ["conv_ae", "conv_ae", "linear_vae"], "status": ["OK"] * 3})
    cut = search_verdict(frame)
    assert "best seed baseline 0.6000 (cut to this sweep's budget: 4 epochs" in cut
    assert "their write-ups state 25-150 full passes; --space writeups runs them as written" in cut
    assert "the search beat all of them" in cut
    frame["epochs"] = [4, 25, 150]
    assert "best seed baseline 0.6000 (at their write-ups' stated budgets)" in search_verdict(frame)
    # The champion line names what kind of trial won: a start point is not a reference.
    frame["baseline"] = ["start:cutpaste", "seed000", "start:pca16"]
    assert "trial a, conv_ae, the start point start:cutpaste, val 0.9000" in search_verdict(frame)
    frame["best_objective"] = [0.5, 0.6, 0.9]
    assert "trial c, linear_vae, the pca16 reference, enqueued as a trial" in search_verdict(frame)


def test_promote_picks_a_trial_by_id_run_or_name_and_names_parent_when_it_finds_none():
    import pandas as pd
    import pytest

    from sweeps.promote import chosen_row
    from sweeps.runs import SweepNotFound

    frame = pd.DataFrame({"trial_id": ["a", "b"], "run_id": ["r1", "r2"], "baseline": ["", "start:knn5"],
                          "best_objective": [0.9, 0.5], "status": ["OK", "OK"]})
    assert [chosen_row(frame, t, "p")["trial_id"] for t in ("b", "r2", "start:knn5", None)] == ["b", "b", "b", "a"]
    # A trial of another sweep of the same experiment: the refusal says how to reach it.
    with pytest.raises(SweepNotFound, match=r"no trial 'zz' in sweep p; trials: a, b .*--parent PARENT_RUN_ID"):
        chosen_row(frame, "zz", "p")
