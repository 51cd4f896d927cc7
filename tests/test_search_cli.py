"""run_search.py: bad input refused before Ray starts; a real sweep end to end."""
import pytest
import ray
import torch

import run_search
from services import unexpected_statuses


@pytest.mark.parametrize("argv,field", [
    (["search", "--space", "huge"], "--space"),
    (["search", "--tnr-target", "1.5"], "--tnr-target"),
    (["search", "--address", "nowhere"], "--address"),
    (["search", "--config", "missing.yaml"], "--config"),
    (["search", "--steps-per-epoch", "-3"], "--steps-per-epoch"),
    (["search", "--gpus-per-trial", "1.5"], "--gpus-per-trial"),
])
def test_bad_cli_input_refused_before_ray(argv, field, capsys):
    assert run_search.main(argv) == 2
    assert field in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_trials_without_a_gpu_refused_before_ray(capsys):
    assert run_search.main(["search", "--gpus-per-trial", "0.25"]) == 2
    assert "--gpus-per-trial 0.25: this machine has no CUDA GPU" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_bad_config_file_key_named(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("variant: conv_ae\nconv_ae.depth: 3\nlearning_rate: 0.1\n")
    assert run_search.main(["search", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'learning_rate'" in err and str(cfg) in err
    assert not ray.is_initialized()


def test_bad_dataset_named_before_ray(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    assert run_search.main(["search", "--data", str(tmp_path)]) == 2
    assert f"empty folder: {tmp_path / 'train'}" in capsys.readouterr().err
    assert not ray.is_initialized()


def test_argparse_rejects_non_positive_samples(capsys):
    with pytest.raises(SystemExit):
        run_search.main(["search", "--num-samples", "0"])
    assert "--num-samples" in capsys.readouterr().err


def test_list_models_prints_registry(capsys):
    assert run_search.main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "conv_ae" in out and "memae" in out and "seed 003" in out


@pytest.mark.integration
def test_real_sweep_ray_optuna_asha_mlflow(tiny_sweep):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tiny_sweep.uri
    assert tiny_sweep.code == 0
    out = tiny_sweep.out
    assert "Leaderboard" in out and "seed000" in out and "mlflow ui --backend-store-uri" in out
    assert out.count("] ") >= 4  # one progress line per finished trial
    assert "references: pca16" in out and "val objective: best searched trial" in out
    assert "champion (what promote ships): trial" in out
    assert "latent-distance scores: " in out and "of their wall time" in out

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["itest"])
    parents = runs[runs["tags.sweep"] == "parent"]
    # Trial runs carry a trial_id; promotion runs (other tests) are nested under the parent too.
    children = runs[runs["tags.trial_id"].notna()]
    assert len(parents) == 1 and len(children) == 5
    assert set(children["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    experiment = MlflowClient(uri).get_experiment_by_name("itest")
    assert unexpected_statuses(MlflowClient(uri).search_runs([experiment.experiment_id])) == []
    assert parents["tags.dataset_hash"].iloc[0] and parents["tags.git_commit"].iloc[0]
    # The first trials are the enqueued reference start points and seed baselines; the references are runs too.
    assert set(children["tags.baseline"]) == {"start:knn5", "start:pca16", "seed000", "seed001", "seed002"}
    references = runs[runs["tags.reference"].notna()] if "tags.reference" in runs else runs[:0]
    assert set(references["tags.reference"]) == {"pca16", "knn5"}
    assert set(references["tags.mlflow.parentRunId"]) == {parents["run_id"].iloc[0]}
    assert children["metrics.objective"].between(0, 1).all()
    client = MlflowClient(uri)
    for run_id in children["run_id"]:
        names = {a.path for a in client.list_artifacts(run_id)}
        # MLflow keeps the best epoch's weights without optimizer state; Ray keeps what resume needs.
        assert {"model.pt", "reconstructions.png", "score_histogram.png", "roc.png"} <= names
        assert "checkpoint.pt" not in names
        history = client.get_metric_history(run_id, "objective")
        assert 1 <= len(history) <= 2
    # Ray kept checkpoints for retries and --resume only: a finished sweep has none left.
    assert not list((tiny_sweep.tmp / "ray").rglob("checkpoint.pt"))


@pytest.mark.integration
def test_the_sweep_tells_its_story_in_mlflow(tiny_sweep):
    """What a user sees in the UI, read through MlflowClient: names, statuses, the parent's summary."""
    from mlflow.tracking import MlflowClient

    from sweeps.runs import find_parent_run, sweep_frame

    client = MlflowClient(tiny_sweep.uri)
    parent = find_parent_run(client, "itest")
    assert parent.info.run_name.startswith("itest·quick·")
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    trials = [r for r in client.search_runs([exp.experiment_id], "tags.trial_id != ''")]
    assert len(trials) == 5
    for run in trials:
        tags = run.data.tags
        assert run.info.run_name.startswith(f"{tags['baseline']}·{tags['variant']}·") if tags["baseline"] else \
            run.info.run_name.startswith(f"{tags['variant']}·")
        if "stopped_by" in tags:
            assert run.info.status == "FINISHED" and int(tags["stopped_at_epoch"]) >= 1
        # Per-score figures sit in their own chart section; the objective stays in front.
        keys = set(run.data.metrics)
        assert "objective" in keys and "trial/epoch" in keys
        assert any(k.startswith("by_score/") and k.endswith("/tpr_at_tnr") for k in keys)
        assert not any(k.startswith("tpr_at_tnr_") for k in keys)
    best_so_far = client.get_metric_history(parent.info.run_id, "best_so_far")
    assert sorted(m.step for m in best_so_far) == [1, 2, 3, 4, 5]
    frame = sweep_frame(client, parent)
    top = frame["best_objective"].max()
    assert parent.data.metrics["best_objective"] == pytest.approx(top)
    assert max(best_so_far, key=lambda m: m.step).value == pytest.approx(top)
    assert {"reference_pca16_objective", "reference_knn5_objective", "trials_finished"} <= set(parent.data.metrics)
    # The tiny dataset has a site pool: the default objective stays clean (docs/results.md §10), the sweep
    # records the pool, every objective is logged, and the leaderboard shows them.
    assert parent.data.tags["objective"] == "clean" and int(parent.data.tags["site_size"]) == 160
    # Split in two: the trials were judged on the selection part only.
    tags = parent.data.tags
    assert int(tags["site_selection_size"]) + int(tags["site_calibration_size"]) == 160
    assert tags["site_calibration_share"] == "0.5" and tags["site_selection_hash"] != tags["site_calibration_hash"]
    assert frame[["objective_clean", "objective_site", "objective_site_matched", "objective_site_blend"]].notna().all().all()
    for run in trials:
        assert run.data.metrics["objective"] == run.data.metrics["val/objective_clean"]
        assert run.data.metrics["val/objective_site_blend"] == pytest.approx(
            (run.data.metrics["val/objective_clean"] + run.data.metrics["val/objective_site_matched"]) / 2)
    assert "objective_site" in tiny_sweep.out and "objective_clean" in tiny_sweep.out
    assert "leaderboard.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_benchmark_search_needs_a_budget_or_a_prefix(tmp_path, capsys):
    assert run_search.main(["benchmark-search", "--repeats", "1"]) == 2
    assert "--budget-s" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run_search.main(["benchmark-search", "--summarize", "nothing-here", "--tracking-uri", uri]) == 2
    assert "--summarize: no experiment starts with 'nothing-here'" in capsys.readouterr().err


def test_the_site_objective_needs_a_site_pool_large_enough(tmp_path, capsys):
    import shutil

    from anomaly_ae.data import make_dataset

    root = tmp_path / "d"
    make_dataset(root, scale=0.01, seed=3)
    args = ["search", "--data", str(root), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}",
            "--storage-path", str(tmp_path / "ray")]
    small = tmp_path / "small-pool"
    small.mkdir()
    for p in sorted((root / "site").iterdir())[:40]:
        shutil.copy(p, small / p.name)
    assert run_search.main([*args, "--site", str(small)]) == 2
    assert f"--site: {small} holds 40 crops, split into" in (err := capsys.readouterr().err)
    assert "the site threshold needs at least 62 in each" in err
    shutil.rmtree(root / "site")
    assert run_search.main([*args, "--objective", "site_matched"]) == 2
    assert "--objective site_matched: there is no site pool" in capsys.readouterr().err
    assert not (tmp_path / "ray").exists()  # refused before Ray started
