"""analyze, promote and predict on a real tiny sweep with a real MLflow store."""
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.report import analyze
import run_search
from sweeps.promote import best_config, promote
from sweeps.runs import download_checkpoint, find_parent_run, load_sweep_data, sweep_frame

pytestmark = pytest.mark.integration


def test_analyze_frame_report_and_parent_artifacts(tiny_sweep):
    client = MlflowClient(tiny_sweep.uri)
    report = analyze(client, tiny_sweep.experiment)
    frame = report.frame
    assert len(frame) == 5
    assert set(frame["baseline"]) == {"start:knn5", "start:pca16", "seed000", "seed001", "seed002"}
    assert frame["best_objective"].is_monotonic_decreasing
    assert (frame["best_objective"] >= frame["final_objective"]).all()
    assert (frame["objective_lo"] <= frame["best_objective"]).all() and (frame["best_objective"] <= frame["objective_hi"]).all()
    assert set(frame["status"]) <= {"FINISHED", "KILLED"} and (frame["wall_s"] > 0).all()
    assert {"param.variant", "param.lr", "epochs"} <= set(frame.columns)
    assert "## Leaderboard" in report.markdown and "seed000" in report.markdown
    assert "ref:pca16" in report.markdown and "## Rung fidelity" in report.markdown
    logged = {a.path for a in client.list_artifacts(report.parent_run_id, "analysis")}
    assert "analysis/report.md" in logged and "analysis/objective_over_trials.png" in logged
    assert {f"analysis/{name}" for name in report.figures} <= logged


def test_analyze_cli_names_a_missing_experiment(tiny_sweep, capsys):
    assert run_search.main(["analyze", "--experiment", "nope", "--tracking-uri", tiny_sweep.uri]) == 2
    assert "no MLflow experiment 'nope'" in capsys.readouterr().err


def _validation_ranks(client, tiny_sweep):
    """Each trial's validation objective, the figure promote's champion gate compares."""
    frame = sweep_frame(client, find_parent_run(client, tiny_sweep.experiment))
    return {row["trial_id"]: download_checkpoint(client, row["run_id"], tiny_sweep.tmp / row["run_id"])["report"]["objective"]
            for _, row in frame.iterrows()}


def test_promote_champion_refusal_force_config_round_trip_and_predict(tiny_sweep, tmp_path, capsys):
    client = MlflowClient(tiny_sweep.uri)
    ranks = _validation_ranks(client, tiny_sweep)
    better, worse = max(ranks, key=ranks.get), min(ranks, key=ranks.get)
    assert ranks[better] > ranks[worse], ranks
    common = ["--experiment", tiny_sweep.experiment, "--tracking-uri", tiny_sweep.uri, "--model-name", "itest-model"]

    config_out = tmp_path / "best_config.yaml"
    assert run_search.main(["promote", *common, "--trial", better, "--config-out", str(config_out)]) == 0
    out = capsys.readouterr().out
    # The promoted trial and every other seed baseline, side by side, on test.
    assert "test_tpr" in out and "test_tnr" in out
    assert sum(name in out for name in ("seed000", "seed001", "seed002")) == 3
    champion = client.get_model_version_by_alias("itest-model", "champion")
    assert champion.tags["trial_id"] == better
    assert float(champion.tags["val_objective"]) == pytest.approx(ranks[better], abs=1e-6)
    assert "fixed on validation normals" in champion.description and "fixed on the site pool" in champion.description

    # best_config.yaml round-trips through `search --config`.
    from cli_parser import build_parser
    from sweeps.spec import SweepSpec

    config = SweepSpec.from_namespace(build_parser().parse_args(["search", "--config", str(config_out)])).trial_config()
    assert config == {**config, **yaml.safe_load(config_out.read_text())}
    assert "baseline" not in yaml.safe_load(config_out.read_text())

    # A candidate worse on validation does not replace the champion without --force; test decides nothing.
    assert run_search.main(["promote", *common, "--trial", worse, "--config-out", str(tmp_path / "w.yaml")]) == 3
    assert "better validation objective" in (err := capsys.readouterr().err) and "pass --force" in err
    assert client.get_model_version_by_alias("itest-model", "champion").version == champion.version
    assert not (tmp_path / "w.yaml").exists()
    assert run_search.main(["promote", *common, "--trial", worse, "--force"]) == 0
    # Without --config-out, what promote writes goes to the sweep's own folder, and the path is printed.
    folder = tiny_sweep.tmp / "ray" / tiny_sweep.experiment / "promote"
    assert f"wrote {folder / 'best_config.yaml'}" in capsys.readouterr().out
    assert (folder / "best_config.yaml").exists() and (folder / "site_review.tsv").exists()
    assert client.get_model_version_by_alias("itest-model", "champion").tags["trial_id"] == worse


def test_predict_scores_with_the_champion_and_checks_drift(tiny_sweep, tmp_path, capsys):
    """One row per crop, labels = score above the registered threshold; the drift check logged."""
    client = MlflowClient(tiny_sweep.uri)
    assert run_search.main(["promote", "--experiment", tiny_sweep.experiment, "--tracking-uri", tiny_sweep.uri,
                            "--model-name", "itest-predict", "--config-out", str(tmp_path / "b.yaml"),
                            "--no-references", "--force"]) == 0
    capsys.readouterr()
    csv = tmp_path / "scores.csv"
    images = tiny_sweep.data / "test" / "imgs"
    assert run_search.main(["predict", "--tracking-uri", tiny_sweep.uri, "--model-name", "itest-predict",
                            "--images", str(images), "--out", str(csv)]) == 0
    scores = pd.read_csv(csv)
    assert list(scores.columns) == ["name", "score", "label"]
    assert len(scores) == len(list(images.iterdir()))
    threshold = float(client.get_model_version_by_alias("itest-predict", "champion").tags["threshold"])
    assert ((scores["score"] > threshold).astype(int) == scores["label"]).all()
    # The drift check ran against the scores the threshold was fixed on (the site pool's) and was logged
    # under the promotion run.
    out = capsys.readouterr()
    version = client.get_model_version_by_alias("itest-predict", "champion")
    checks = client.search_runs([client.get_run(version.run_id).info.experiment_id], "tags.sweep = 'predict'")
    assert len(checks) == 1 and checks[0].data.tags["mlflow.parentRunId"] == version.run_id
    logged = checks[0].data.metrics
    assert {"drift/exceedance_p", "drift/shift_p", "drift/alarm", "drift/shifted"} <= set(logged)
    # What was printed is the branch the logged check took, and only that one.
    alarm, shifted = bool(logged["drift/alarm"]), bool(logged["drift/shifted"])
    assert ("WARNING drift alarm" in out.err) == alarm
    assert ("the scores sit above the calibration scores" in out.out + out.err) == shifted
    assert ("drift check: quiet" in out.out) == (not alarm and not shifted)
    assert checks[0].data.params["calibration"] == "site"

    # predict --site recalibrates on a new window of site crops: the site rule on this detector's scores there.
    from anomaly_ae.data import load_site_pool
    from anomaly_ae.stats.thresholds import site_threshold

    assert run_search.main(["predict", "--tracking-uri", tiny_sweep.uri, "--model-name", "itest-predict",
                            "--images", str(images), "--out", str(csv), "--site", str(tiny_sweep.data / "site")]) == 0
    printed = capsys.readouterr().out
    model = __import__("mlflow").pyfunc.load_model("models:/itest-predict@champion").unwrap_python_model()
    pool = load_site_pool(tiny_sweep.data / "site", tuple(model.detector["decode_size"]))
    expected = site_threshold(model.score(pool.images), 0.95, 0.05, 0.05)
    assert f"threshold {expected:.6g}" in printed and f"recalibrated on {len(pool)} site crops" in printed
    scores = pd.read_csv(csv)
    assert ((scores["score"] > expected).astype(int) == scores["label"]).all()
    # A window too small for the rule is refused with the size it needs.
    import shutil

    small = tmp_path / "small-window"
    small.mkdir()
    for p in sorted((tiny_sweep.data / "site").iterdir())[:30]:
        shutil.copy(p, small / p.name)
    assert run_search.main(["predict", "--tracking-uri", tiny_sweep.uri, "--model-name", "itest-predict",
                            "--images", str(images), "--out", str(csv), "--site", str(small)]) == 2
    assert "a site pool of 30 crops is too small" in capsys.readouterr().err
    missing = tmp_path / "no-crops"
    assert run_search.main(["predict", "--tracking-uri", tiny_sweep.uri, "--model-name", "itest-predict",
                            "--images", str(missing), "--out", str(csv)]) == 2
    assert f"missing folder: {missing}" in capsys.readouterr().err


def test_promote_retrain_reports_spread(tiny_sweep, tmp_path):
    client = MlflowClient(tiny_sweep.uri)
    result = promote(client, tiny_sweep.uri, tiny_sweep.experiment, retrain_seeds=[0, 1], force=True,
                     model_name="itest-retrain", config_out=tmp_path / "best.yaml")
    spread = result.promoted.retrain_spread
    assert spread["seeds"] == [0, 1] and spread["chosen_seed"] in (0, 1)
    # Two seeds: the kept one is the better on validation, and the spread is over both seeds' test figures.
    val, tpr = spread["val_objective_by_seed"], spread["test_tpr_by_seed"]
    assert len(val) == len(tpr) == 2 and spread["chosen_seed"] == [0, 1][int(val[1] > val[0])]
    assert spread["test_tpr_std"] == pytest.approx(abs(tpr[0] - tpr[1]) / 2)
    assert result.promoted.report["tpr"] == pytest.approx(tpr[spread["chosen_seed"]])
    assert result.promoted.cfg["steps_per_epoch"] == result.promoted.cfg["samples_per_epoch"] == 0
    assert best_config(result.promoted.cfg)["seed"] == spread["chosen_seed"]


def _served_scores(tiny_sweep, tmp_path, model_name: str) -> tuple[pd.DataFrame, float]:
    csv = tmp_path / f"{model_name}.csv"
    assert run_search.main(["predict", "--tracking-uri", tiny_sweep.uri, "--model-name", model_name,
                            "--images", str(tiny_sweep.data / "test" / "imgs"), "--out", str(csv)]) == 0
    version = MlflowClient(tiny_sweep.uri).get_model_version_by_alias(model_name, "champion")
    return pd.read_csv(csv), float(version.tags["threshold"])


def test_a_knn_start_point_and_an_ensemble_are_registered_and_served(tiny_sweep, tmp_path, capsys):
    common = ["--experiment", tiny_sweep.experiment, "--tracking-uri", tiny_sweep.uri, "--force"]
    # The knn5 reference's start point, by its name: its bank ships inside the registered model.
    assert run_search.main(["promote", *common, "--trial", "start:knn5", "--model-name", "itest-knn",
                            "--config-out", str(tmp_path / "knn.yaml")]) == 0
    assert "promoted trial" in capsys.readouterr().out
    scores, threshold = _served_scores(tiny_sweep, tmp_path, "itest-knn")
    assert np.isfinite(scores["score"]).all() and (scores["score"] >= 0).all()
    assert ((scores["score"] > threshold).astype(int) == scores["label"]).all()
    assert yaml.safe_load((tmp_path / "knn.yaml").read_text())["variant"] == "knn"

    # The two best trials as one detector, shipped on request and printed beside the single champion.
    assert run_search.main(["promote", *common, "--ensemble", "2", "--ship", "ensemble", "--model-name", "itest-ens",
                            "--config-out", str(tmp_path / "ens.yaml")]) == 0
    out = capsys.readouterr().out
    assert "promoted (ensemble of 2)" in out and "single champion" in out and "ref:knn5" in out
    version = MlflowClient(tiny_sweep.uri).get_model_version_by_alias("itest-ens", "champion")
    assert version.tags["score"] == "ensemble" and version.tags["trial_id"].count("+") == 1
    scores, threshold = _served_scores(tiny_sweep, tmp_path, "itest-ens")
    # Mean tail surprises on the members' own validation normals: >= 0, and not tied.
    assert (scores["score"] >= 0).all() and scores["score"].nunique() > len(scores) // 2
    assert ((scores["score"] > threshold).astype(int) == scores["label"]).all()
    assert run_search.main(["promote", *common, "--ensemble", "0", "--ensemble-distinct"]) == 2


def test_promote_ships_the_ensemble_only_on_evidence_from_validation():
    from sweeps.promote import Candidate, choose_shipped, ensemble_gain

    normals = np.arange(100.0)  # each detector's threshold at TNR 0.95 sits at 95

    def candidate(name, flagged: int, objective: float, score="mse"):
        spills = np.array([200.0] * flagged + [0.0] * (20 - flagged))
        payload = {"config": {"score": score, "tnr_target": 0.95},
                   "val_scores": {"normal": {score: normals}, "spill": {score: spills}}}
        return Candidate(name, name, name, payload, {}, val_objective=objective)

    single = candidate("single", 10, 0.50)
    tied = candidate("tied", 10, 0.50, "ensemble")
    by_one = candidate("by-one", 11, 0.55, "ensemble")  # one spill more: p = 0.5
    by_five = candidate("by-five", 15, 0.75, "ensemble")  # five more, none lost: p = 0.5 ** 5
    assert ensemble_gain(single, by_five) == {"gained": 5, "lost": 0, "p": pytest.approx(0.03125)}
    assert choose_shipped(single, None) is single
    assert choose_shipped(single, tied) is single  # a tie ships the single trial
    assert choose_shipped(single, by_one) is single  # above on the objective, but by chance
    assert choose_shipped(single, by_five) is by_five
    assert choose_shipped(single, by_five, "single") is single and choose_shipped(single, tied, "ensemble") is tied
    with pytest.raises(ValueError, match="ship: 'both'"):
        choose_shipped(single, by_five, "both")


def test_predict_names_an_unknown_model(tiny_sweep, tmp_path, capsys):
    code = run_search.main(["predict", "--tracking-uri", tiny_sweep.uri, "--model-name", "no-such-model",
                            "--images", str(tmp_path), "--out", str(tmp_path / "s.csv")])
    assert code == 2
    assert "no-such-model" in capsys.readouterr().err


def test_promote_uses_the_tnr_target_threshold_by_default(tiny_sweep, tmp_path):
    from anomaly_ae.stats.metrics import tnr_threshold

    client = MlflowClient(tiny_sweep.uri)
    frame = sweep_frame(client, find_parent_run(client, tiny_sweep.experiment))
    seed001 = frame[frame["baseline"] == "seed001"].iloc[0]  # its write-up used min_anomaly
    result = promote(client, tiny_sweep.uri, tiny_sweep.experiment, trial=seed001["trial_id"], force=True,
                     model_name="itest-policy", config_out=tmp_path / "b.yaml")
    report, payload = result.promoted.report, result.promoted.payload
    assert report["policy"] == "tnr_target"
    score = payload["config"]["score"]
    assert report["threshold"] == tnr_threshold(payload["val_scores"]["normal"][score], 0.95)
    row = result.table.iloc[0]
    assert row["policy"] == "tnr_target" and row["own_policy"] == "min_anomaly"
    assert row["own_test_tpr"] == report["by_policy"]["min_anomaly"]["tpr"]
    # With a site pool the detector ships with the site threshold, and its version records the pool.
    from anomaly_ae.stats.thresholds import site_threshold

    version = client.get_model_version_by_alias("itest-policy", "champion")
    parent = find_parent_run(client, tiny_sweep.experiment)
    _, splits = load_sweep_data(parent, None)
    site, calibration = report["site"], splits.site_calibration
    # The shipped threshold comes from the pool's calibration part, which chose nothing.
    assert site["threshold"] == site_threshold(site["calibration"]["scores"], 0.95, 0.05, 0.05)
    assert len(site["calibration"]["scores"]) == len(calibration)
    assert not set(calibration.names) & set(splits.site_selection.names)
    assert float(version.tags["threshold"]) == pytest.approx(site["threshold"])
    assert version.tags["threshold_source"] == "site"
    assert version.tags["site_hash"] == calibration.content_hash == parent.data.tags["site_calibration_hash"]
    assert version.tags["site_selection_hash"] == splits.site_selection.content_hash
    assert version.tags["site_size"] == version.tags["site_calibration_size"] == str(len(calibration))
    assert version.tags["site_max_spill_fraction"] == "0.05" and version.tags["site_delta"] == "0.05"
    assert version.tags["site_calibration_share"] == "0.5"
    assert row["site_tnr"] == site["tnr"] and row["test_tnr"] == report["tnr"]  # both rows, side by side
    assert {"ref:pca16", "ref:knn5"} <= set(result.table["config"])
    assert result.table["site_tpr"].notna().all()  # the references and baselines at the site threshold too


def test_the_review_file_is_read_as_written_and_rounds_accumulate(tiny_sweep, tmp_path):
    """The calibration crops above the shipped threshold, highest first, in a file read as written."""
    client = MlflowClient(tiny_sweep.uri)
    parent = find_parent_run(client, tiny_sweep.experiment)
    frame = sweep_frame(client, parent)
    seed001 = frame[frame["baseline"] == "seed001"].iloc[0]
    # The tiny pool's default calibration part (~80 crops) flags next to nothing; a larger share and risk do.
    from anomaly_ae.data.site import read_review

    review_args = dict(trial=seed001["trial_id"], force=True, model_name="itest-review", site_calibration_share=0.8,
                       site_delta=0.25, config_out=tmp_path / "review" / "b.yaml")
    result = promote(client, tiny_sweep.uri, tiny_sweep.experiment, **review_args)
    version = client.get_model_version_by_alias("itest-review", "champion")
    _, splits = load_sweep_data(parent, None, delta=0.25, calibration_share=0.8)
    site, calibration = result.promoted.report["site"], splits.site_calibration
    assert version.tags["site_calibration_share"] == "0.8" and len(site["calibration"]["scores"]) == len(calibration)
    flagged = {n for n, s in zip(calibration.names, site["calibration"]["scores"]) if s > site["threshold"]}
    table = result.review.table
    assert table == tmp_path / "review" / "site_review.tsv"
    written = read_review(table, calibration.names, calibration.root)
    # Every crop above the threshold, then the next ones down: 40 in all, highest first, nothing decided.
    assert flagged <= set(written.verdicts) and len(written.verdicts) == max(40, len(flagged))
    assert set(written.verdicts.values()) == {""}
    scores = [written.scores[n] for n in written.verdicts]
    assert scores == sorted(scores, reverse=True)
    logged = {a.path for a in client.list_artifacts(version.run_id, "review")}
    assert {"review/site_review.tsv", "review/site_review.html"} <= logged
    assert len(client.list_artifacts(version.run_id, "review/top")) == 16
    # Accepted as written: nothing marked, nothing leaves the pool.
    unmarked = promote(client, tiny_sweep.uri, tiny_sweep.experiment, site_review=table, **review_args)
    assert unmarked.promoted.report["site"]["calibration"]["site_size"] == str(len(calibration))
    # A round: the top crop marked spill leaves the pool, the next marked normal stays; the next file
    # carries both verdicts.
    lines = table.read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if not line.startswith("#") and not line.startswith("name")]
    spill, normal = lines[rows[0]].split("\t")[0], lines[rows[1]].split("\t")[0]
    lines[rows[0]] += "spill"
    lines[rows[1]] += "normal"
    table.write_text("\n".join(lines) + "\n")
    reviewed = promote(client, tiny_sweep.uri, tiny_sweep.experiment, site_review=table, **review_args)
    kept = reviewed.promoted.report["site"]["calibration"]
    assert kept["site_size"] == str(len(calibration) - 1)
    assert kept["site_review_spills"] == "1" and kept["site_review_normals"] == "1"
    tags = client.get_model_version_by_alias("itest-review", "champion").tags
    assert tags["site_review_spills"] == "1" and tags["site_size"] == str(len(calibration) - 1)
    next_round = read_review(reviewed.review.table, calibration.names + [spill], calibration.root)
    assert next_round.verdicts[spill] == "spill" and next_round.verdicts[normal] == "normal"


def test_promote_ships_the_matched_site_calibration_on_request(tiny_sweep, tmp_path):
    import torch

    from anomaly_ae.detector.checkpoints import load_trained
    from anomaly_ae.stats.thresholds import matched_site_threshold
    from anomaly_ae.detector.validation import score_images

    client = MlflowClient(tiny_sweep.uri)
    parent = find_parent_run(client, tiny_sweep.experiment)
    result = promote(client, tiny_sweep.uri, tiny_sweep.experiment, trial="seed000", force=True,
                     model_name="itest-matched", site_calibration="matched", references=False, baselines=False,
                     ensemble=0, config_out=tmp_path / "m.yaml")
    site = result.promoted.report["site"]
    calibration = site["calibration"]
    assert calibration["site_calibration_mode"] == "matched"
    assert int(calibration["site_rank"]) <= int(calibration["site_free_rank"])
    # The threshold is the rule's on this detector's scores of the calibration part and the carried crops.
    _, splits = load_sweep_data(parent, None)
    payload = result.promoted.payload
    state, cfg = load_trained(payload), payload["config"]

    def score(u8):
        return score_images(state, cfg, torch.from_numpy(np.ascontiguousarray(u8)))[0][cfg["score"]]

    expected, details = matched_site_threshold(score(splits.site_calibration.images), score(splits.val_normal_matched),
                                               score(splits.val_spill_matched), 0.95, 0.05, 0.05)
    assert site["threshold"] == pytest.approx(expected) and calibration["site_rank"] == details["site_rank"]
    tags = client.get_model_version_by_alias("itest-matched", "champion").tags
    assert tags["site_calibration_mode"] == "matched" and tags["site_spill_estimate"] == details["site_spill_estimate"]


def test_the_champion_gate_compares_validation_objectives_on_the_same_terms():
    from sweeps.promote import comparable_key

    assert comparable_key("d", "clean", "s") == {"dataset_hash": "d", "objective": "clean"}
    for objective in ("site", "site_matched", "site_blend"):
        assert comparable_key("d", objective, "s") == {"dataset_hash": "d", "objective": objective,
                                                       "site_selection_hash": "s"}
