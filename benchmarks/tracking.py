"""Load test of the tracking path: N writer processes log what a trial logs, at once.

Each writer opens a run, logs its params, then per epoch one batch of ``METRICS_PER_EPOCH``
metrics and one small artifact, and ends the run FINISHED. Every call is timed, errors are counted
(after the MLflow client's own retries), and afterwards every metric is read back and counted: a
metric that is missing, or logged twice at a step, is a lost or duplicated write.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

METRICS_PER_EPOCH = 30
PARAMS = 24
ARTIFACT_BYTES = 2048


@dataclass
class WriterResult:
    index: int
    run_id: str | None
    latencies: list[float]
    errors: list[str]


def metric_names() -> list[str]:
    return [f"val/m{i:02d}" for i in range(METRICS_PER_EPOCH)]


def _timed(latencies: list, errors: list, what: str, call):
    tick = time.perf_counter()
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - counted, and the writer goes on as a trial would
        errors.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
        return None
    finally:
        latencies.append(time.perf_counter() - tick)


def _writer(index: int, uri: str, experiment_id: str, epochs: int, ready, go, results) -> None:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    latencies: list[float] = []
    errors: list[str] = []
    names = metric_names()
    payload = os.urandom(ARTIFACT_BYTES // 2).hex()
    ready.put(index)
    go.wait()
    run = _timed(latencies, errors, "create_run",
                 lambda: client.create_run(experiment_id, run_name=f"writer-{index:03d}", tags={"writer": str(index)}))
    run_id = run.info.run_id if run is not None else None
    if run_id is not None:
        params = [Param(f"p{i:02d}", str(i * index)) for i in range(PARAMS)]
        _timed(latencies, errors, "params", lambda: client.log_batch(run_id, params=params))
        with tempfile.TemporaryDirectory() as tmp:
            for epoch in range(epochs):
                now = int(time.time() * 1000)
                metrics = [Metric(name, float(epoch + i / 100), now, epoch) for i, name in enumerate(names)]
                _timed(latencies, errors, f"metrics {epoch}", lambda: client.log_batch(run_id, metrics=metrics))
                path = os.path.join(tmp, f"epoch-{epoch:03d}.txt")
                with open(path, "w") as f:
                    f.write(payload)
                _timed(latencies, errors, f"artifact {epoch}", lambda: client.log_artifact(run_id, path, "epochs"))
        _timed(latencies, errors, "set_terminated", lambda: client.set_terminated(run_id, "FINISHED"))
    results.put(WriterResult(index, run_id, latencies, errors))


def count_arrivals(client, run_id: str, epochs: int) -> tuple[int, int, int]:
    """(metric points missing, metric points duplicated, artifacts missing) of one writer's run."""
    missing = duplicated = 0
    for name in metric_names():
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        counts = np.bincount(steps, minlength=epochs) if steps else np.zeros(epochs, int)
        missing += int((counts[:epochs] == 0).sum())
        duplicated += int(np.clip(counts - 1, 0, None).sum())
    listed = client.list_artifacts(run_id, "epochs")
    return missing, duplicated, epochs - len(listed)


def benchmark_tracking(uri: str, writers: int, epochs: int, timeout_s: float = 900) -> dict:
    """Run the load test; returns one row of figures."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = f"benchmark-tracking-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    experiment_id = client.create_experiment(experiment)
    # Each writer a fresh process with no client state of this one's; the fork server imports MLflow
    # once for all of them (N imports at once would take longer than a short run's writes).
    # MLflow's telemetry thread edits os.environ while requests read it: a client-side race that once
    # failed a write here (KeyError '_MLFLOW_TELEMETRY_SESSION_ID'). It is not the tracking path.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["mlflow.tracking", "mlflow.entities"])
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_writer, args=(i, uri, experiment_id, epochs, ready, go, results), daemon=True)
             for i in range(writers)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout_s
    for _ in procs:  # every writer imported and connected-ready, then all start together
        ready.get(timeout=max(1.0, deadline - time.monotonic()))
    start = time.perf_counter()
    go.set()
    done: list[WriterResult] = []
    while len(done) < writers and time.monotonic() < deadline:
        try:
            done.append(results.get(timeout=max(0.1, min(5.0, deadline - time.monotonic()))))
        except Exception:  # noqa: BLE001 - queue.Empty: a writer still writing
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    wall = time.perf_counter() - start
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    latencies = np.array([x for r in done for x in r.latencies]) if done else np.array([np.nan])
    errors = [e for r in done for e in r.errors] + ["writer never reported"] * (writers - len(done))
    calls = sum(len(r.latencies) for r in done)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:  # the read-back is not what is measured: do it in parallel
        arrivals = list(pool.map(lambda run_id: count_arrivals(client, run_id, epochs),
                                 [r.run_id for r in done if r.run_id is not None]))
    missing = sum(a[0] for a in arrivals) + METRICS_PER_EPOCH * epochs * (writers - len(arrivals))
    duplicated, artifacts_missing = sum(a[1] for a in arrivals), sum(a[2] for a in arrivals)
    finished = sum(1 for r in done if r.run_id and client.get_run(r.run_id).info.status == "FINISHED")
    return {"tracking_uri": uri, "experiment": experiment, "writers": writers, "epochs": epochs,
            "calls": calls, "wall_s": wall, "writes_per_s": (calls - len(errors)) / wall if wall else np.nan,
            "p50_ms": float(np.nanpercentile(latencies, 50) * 1000),
            "p99_ms": float(np.nanpercentile(latencies, 99) * 1000), "errors": len(errors),
            "metrics_expected": writers * epochs * METRICS_PER_EPOCH, "metrics_missing": missing,
            "metrics_duplicated": duplicated, "artifacts_missing": artifacts_missing, "runs_finished": finished,
            "exactly_once": missing == 0 and duplicated == 0 and artifacts_missing == 0,
            "first_errors": errors[:3]}


def summary_table(row: dict) -> pd.DataFrame:
    cols = ["writers", "epochs", "calls", "wall_s", "writes_per_s", "p50_ms", "p99_ms", "errors", "metrics_expected",
            "metrics_missing", "metrics_duplicated", "artifacts_missing", "runs_finished", "exactly_once"]
    return pd.DataFrame([{c: row[c] for c in cols}])
