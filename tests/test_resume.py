"""A sweep killed with kill -9 and resumed: its trials, its MLflow runs and its Optuna study go on.

The CI test keeps the study in PostgreSQL and checks that the resumed searcher is the same TPE with
the same history; the slow one also interrupts the resumed sweep with SIGINT and resumes it again."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from services import unexpected_statuses

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration


def start(args: list[str], log: Path) -> subprocess.Popen:
    # Own session, so that kill -9 reaches the driver and the local Ray it started.
    return subprocess.Popen([sys.executable, str(REPO / "run_search.py"), *args], cwd=REPO, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {text!r}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"no {text!r} within {timeout}s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def trial_runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "trial_id" in r.data.tags], [r for r in runs if r.data.tags.get("sweep") == "parent"]


def test_kill_9_then_resume_keeps_the_study_in_postgres_and_its_tpe_history(tiny_data_dir, tmp_path, postgres):
    import optuna

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = postgres.create_database("resume_study")
    common = ["--experiment", "resume-pg", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    # No enqueued points, so that every trial is one the sampler proposes. Seed 4: TPE's random startup
    # draws light variants (small conv AEs at 32x32 and 32x48), so the test stays short.
    first = start(["search", "--data", str(tiny_data_dir), "--num-samples", "5", "--epochs", "1",
                   "--samples-per-epoch", "64", "--max-concurrent", "2", "--val-fraction", "0.2", "--no-baselines",
                   "--no-references", "--no-warm-start", "--seed", "4", "--optuna-storage", storage, *common],
                  tmp_path / "first.log")
    wait_for(tmp_path / "first.log", " 1/5]", first)
    finished_at = time.time()
    # Killed at the first experiment-state snapshot after that trial (TUNE_GLOBAL_CHECKPOINT_S=5), so that
    # the restored searcher knows it, and before a third trial can finish.
    states = tmp_path / "ray" / "resume-pg"
    deadline = time.monotonic() + 30
    while not any(f.stat().st_mtime > finished_at for f in states.glob("experiment_state-*.json")):
        assert time.monotonic() < deadline, "no experiment-state snapshot after the first trial"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    client = MlflowClient(uri)
    _, parents = trial_runs(client, "resume-pg")
    name = parents[0].data.tags["optuna_study"]
    at_kill = optuna.load_study(study_name=name, storage=storage).trials
    before = {t.number: t for t in at_kill if t.state == optuna.trial.TrialState.COMPLETE}
    assert before, "no trial finished before the kill"
    assert len(at_kill) < 5, "every trial was asked before the kill: none is left to the restored sampler"

    resumed = start(["search", "--resume", *common], tmp_path / "second.log")
    assert resumed.wait(300) == 0, (tmp_path / "second.log").read_text()[-3000:]

    study = optuna.load_study(study_name=name, storage=storage)
    after = {t.number: t for t in study.trials}
    for number, trial in before.items():  # the trials from before the kill are still in it, unchanged
        assert after[number].state == trial.state and after[number].value == trial.value
        assert after[number].params == trial.params
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    later = [t for t in complete if t.number not in {t.number for t in at_kill}]
    assert later, "no trial was proposed after the resume"
    for trial in later:  # proposed by the restored TPE, which had seen the trials from before the kill
        assert trial.user_attrs["sampler"] == "TPESampler"
        assert trial.user_attrs["history"] >= len(before)
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    runs, parents = trial_runs(client, "resume-pg")
    assert parents[0].info.status == "FINISHED" and parents[0].data.tags["optuna_study"] == name
    # The study agrees with MLflow: every trial of the sweep is there, once.
    assert sorted(t.user_attrs["ray_trial_id"] for t in complete) == sorted({r.data.tags["trial_id"] for r in runs})
    assert len(complete) == 5


# slow: minutes of real processes; CI's suite must stay under 10 minutes (README, "Tests": what CI runs)
@pytest.mark.slow
def test_kill_9_then_resume_keeps_finished_trials_and_closes_runs(tiny_data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = ["--experiment", "resume-test", "--tracking-uri", uri, "--storage-path", str(tmp_path / "ray")]
    sweep = ["search", "--data", str(tiny_data_dir), "--num-samples", "4", "--epochs", "3",
             "--samples-per-epoch", "512", "--max-concurrent", "1", "--val-fraction", "0.2", *common]
    client = MlflowClient(uri)

    first = start(sweep, tmp_path / "first.log")
    wait_for(tmp_path / "first.log", " 1/4]", first)
    time.sleep(6)  # past the next experiment-state snapshot (TUNE_GLOBAL_CHECKPOINT_S=5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(30)
    runs, parents = trial_runs(client, "resume-test")
    finished_before = {r.data.tags["trial_id"] for r in runs if r.info.status == "FINISHED"}
    assert finished_before, "no trial finished before the kill"
    assert [p.info.status for p in parents] == ["RUNNING"]  # what a dead driver leaves behind

    # Resume, then stop it with Ctrl-C (SIGINT): it stops gracefully and prints the resume command.
    second = start(["search", "--resume", *common], tmp_path / "second.log")
    wait_for(tmp_path / "second.log", "resuming sweep", second)
    # The resume closed what the kill left RUNNING; a RUNNING trial run now is one this process started,
    # so at least that trial is unfinished when the Ctrl-C lands.
    deadline = time.monotonic() + 120
    while not any(r.info.status == "RUNNING" for r in trial_runs(client, "resume-test")[0]):
        assert second.poll() is None and time.monotonic() < deadline, (tmp_path / "second.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(second.pid, signal.SIGINT)
    assert second.wait(120) == 130, (tmp_path / "second.log").read_text()[-3000:]
    out = (tmp_path / "second.log").read_text()
    assert "Resume with:" in out and "--resume --experiment resume-test" in out
    assert client.get_run(parents[0].info.run_id).info.status == "KILLED"

    third = start(["search", "--resume", *common], tmp_path / "third.log")
    assert third.wait(300) == 0, (tmp_path / "third.log").read_text()[-3000:]
    out = (tmp_path / "third.log").read_text()
    assert "Leaderboard" in out
    assert " 4/4]" in out and " 1/4]" not in out  # the trial count goes on from the restored trials

    runs, parents = trial_runs(client, "resume-test")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["resumed"] in ("1", "2")
    # A run the kill or the Ctrl-C cut off is KILLED and its trial reran; nothing else may end otherwise.
    assert unexpected_statuses(runs, ("FINISHED", "KILLED")) == []
    by_trial = {}
    for r in runs:
        by_trial.setdefault(r.data.tags["trial_id"], []).append(r)
    assert len(by_trial) == 4  # the sweep completed num_samples trials
    for trial_id in finished_before:  # kept, not rerun: still exactly one run
        assert [r.info.status for r in by_trial[trial_id]] == ["FINISHED"]
    for trial_id, trial in by_trial.items():
        assert any(r.info.status in ("FINISHED", "KILLED") for r in trial)
