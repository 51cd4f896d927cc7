"""The registered champion served over REST by `mlflow models serve`, as the README says to run it."""
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from anomaly_ae.data import load_proliv
import run_search
from services import free_port, http_json, stop, wait_until

pytestmark = pytest.mark.integration


def test_the_champion_answers_invocations_with_a_score_and_a_label_per_crop(tiny_sweep, tmp_path):
    assert run_search.main(["promote", "--experiment", tiny_sweep.experiment, "--tracking-uri", tiny_sweep.uri,
                            "--model-name", "serve-test", "--config-out", str(tmp_path / "best.yaml"),
                            "--no-references", "--force"]) == 0
    version = MlflowClient(tiny_sweep.uri).get_model_version_by_alias("serve-test", "champion")
    threshold = float(version.tags["threshold"])
    port = free_port()
    # The server starts uvicorn from the venv's bin/: without it on PATH it exits with 127.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tiny_sweep.uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             "models:/serve-test@champion", "--env-manager", "local", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready():
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as resp:
                    return resp.status == 200
            except OSError:  # not up yet
                return False

        wait_until(ready, 180, f"mlflow models serve at {url}", proc, tmp_path / "serve.log")
        # What it takes: uint8 crops at the detector's decode size, (N, H, W, 3), as a tensor input.
        crops = load_proliv(tiny_sweep.data, cache_dir=tmp_path / "cache").test[:4]
        answer = http_json(f"{url}/invocations", {"inputs": crops.tolist()})
        rows = answer["predictions"]
        assert len(rows) == 4 and all(set(row) == {"score", "label"} for row in rows)
        assert [row["label"] for row in rows] == [int(row["score"] > threshold) for row in rows]
    finally:
        stop(proc)
