"""Trials on a GPU. Skipped, with the reason, where torch sees no CUDA device (CI never has one);
run them on a GPU machine with `pytest -m gpu tests/test_gpu.py`."""
import shutil

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from anomaly_ae.detector.training import pick_device
import run_search
from services import tiny_sweep_args, unexpected_statuses
import trainables.autoencoder as trainable_module

pytestmark = [pytest.mark.gpu, pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")]


def test_one_trial_trains_on_the_gpu(tiny_splits, monkeypatch, tmp_path):
    reports = []

    def report(metrics, checkpoint=None):
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, tmp_path / f"c{len(reports)}")
        reports.append(metrics)

    monkeypatch.setattr(trainable_module.tune, "report", report)
    monkeypatch.setattr(trainable_module.tune, "get_checkpoint", lambda: None)
    trainable_module.train_autoencoder({"variant": "conv_ae", "epochs": 2, "steps_per_epoch": 4, "batch_size": 32,
                                        "hflip": True, "corruption_prob": 0.5, "precision": "bf16"},
                                       splits=tiny_splits)
    assert pick_device().type == "cuda"
    assert [r["epoch"] for r in reports] == [1, 2] and reports[-1]["gpu_peak_mem_mb"] > 0


def test_four_trials_packed_on_one_gpu(tiny_data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*tiny_sweep_args(tiny_data_dir, "gpu-pack", uri, tmp_path / "ray", samples=4),
            "--gpus-per-trial", "0.25", "--max-concurrent", "4", "--no-baselines", "--no-references"]
    assert run_search.main(args) == 0
    ray.shutdown()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("gpu-pack")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
    assert len(runs) == 4 and unexpected_statuses(runs) == []
    assert all(r.data.metrics.get("trial/gpu_peak_mem_mb", 0) > 0 for r in runs if r.data.tags["variant"] != "pca_ae")


def test_promote_runs_on_the_gpu(tiny_data_dir, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_search.main([*tiny_sweep_args(tiny_data_dir, "gpu-promote", uri, tmp_path / "ray", samples=2),
                            "--gpus-per-trial", "1", "--no-references"]) == 0
    ray.shutdown()
    assert run_search.main(["promote", "--experiment", "gpu-promote", "--tracking-uri", uri, "--retrain",
                            "--retrain-seeds", "0", "--config-out", str(tmp_path / "best.yaml")]) == 0
    assert MlflowClient(uri).get_model_version_by_alias("proliv-autoencoder", "champion")
