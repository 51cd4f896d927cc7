import optuna
import pytest

from anomaly_ae.detector.config import ConfigError, model_params, validate_config
from anomaly_ae.models import list_models
from search_spaces import SPACES, baseline_points, config_from_params, get_space
from search_spaces.baselines import SEED_BASELINES, START_POINTS, baseline_configs, match_baseline


def test_defaults_fill_and_validate():
    cfg = validate_config({})
    assert cfg["variant"] == "conv_ae" and cfg["tnr_target"] == 0.95


@pytest.mark.parametrize("raw,field", [
    ({"lr": -1.0}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"variant": "nope"}, "variant"),
    ({"nonsense_key": 1}, "nonsense_key"),
    ({"conv_ae.depth": "3"}, "conv_ae.depth"),
    ({"variant": "conv_ae", "unet_ae.skips": True}, "unet_ae.skips"),
    ({"conv_ae.widht": 3}, "conv_ae.widht"),
    ({"score": "elbo"}, "score"),
    ({"normalisation": "dataset", "conv_ae.out_activation": "sigmoid"}, "normalisation"),
    ({"topk.fraction": 0}, "topk.fraction"),
    ({"samples_per_epoch": 64, "steps_per_epoch": 2}, "samples_per_epoch"),
])
def test_bad_values_name_the_field(raw, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_config(raw)


@pytest.mark.parametrize("key", ["val_normal_fraction", "val_spill_fraction", "split_seed"])
def test_split_keys_are_refused_by_name(key):
    """The split is the sweep's: a trial config that sets it would be validated and then ignored."""
    with pytest.raises(ConfigError, match=rf"^{key}: not a trial setting"):
        validate_config({key: 0.5})
    assert key not in validate_config({})


def test_output_activation_follows_normalisation():
    assert model_params(validate_config({"normalisation": "dataset"}))["out_activation"] == "identity"
    assert model_params(validate_config({"normalisation": "minus_one_one"}))["out_activation"] == "tanh"


def test_a_variant_is_one_file_and_one_decorator(monkeypatch):
    """A throwaway variant registered with its searched parameters is proposed by the space, with them
    and nothing else, and its config validates: nothing outside its decorator had to change."""
    import torch.nn as nn

    import anomaly_ae.models.registry as registry
    from anomaly_ae.models import register_model

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("throwaway_ae", space={"hidden": ("cat", [4, 8]), "gain": ("float", 0.5, 2.0)})
    def throwaway(in_channels, height, width, hidden=8, gain=1.0, out_activation="identity"):
        return nn.Identity()

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"variant": "throwaway_ae"})
    trial = study.ask()
    constants = get_space("quick")(trial)
    assert {k for k in trial.params if k.startswith("throwaway_ae.")} == {"throwaway_ae.hidden", "throwaway_ae.gain"}
    assert validate_config(config_from_params({**trial.params, **constants}))["variant"] == "throwaway_ae"


def test_the_registry_refuses_a_space_that_does_not_fit_the_builder():
    from anomaly_ae.models.registry import check_space

    with pytest.raises(TypeError, match="'depht' is not one of its parameters"):
        check_space("x", {"depht": ("int", 1, 3)}, {"depth": 2})
    with pytest.raises(TypeError, match="default of 'depth' is not among"):
        check_space("x", {"depth": ("cat", [1, 3])}, {"depth": 2})
    with pytest.raises(TypeError, match="kind"):
        check_space("x", {"depth": ("range", 1, 3)}, {"depth": 2})


@pytest.mark.parametrize("space", sorted(SPACES))
def test_variant_params_appear_only_with_their_variant(space):
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10))
    fn = get_space(space)
    seen = set()
    for _ in range(60):
        trial = study.ask()
        constants = fn(trial)
        cfg = validate_config(config_from_params({**trial.params, **constants}))
        seen.add(cfg["variant"])
        for key in {**trial.params, **constants}:
            prefix = key.split(".")[0]
            if prefix in list_models():
                assert prefix == cfg["variant"], (key, cfg["variant"])
        study.tell(trial, 0.5)
    assert len(seen) >= 4


def test_baselines_enqueue_exactly():
    """points_to_evaluate reproduce each seed's stated config (budget aside)."""
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for point in baseline_points():
        study.enqueue_trial(point)
    fn = get_space("quick")
    # The reference start points first (they take seconds), then the seed baselines, then the slow
    # synthetic-anomaly families' start points.
    names = ["start:knn5", "start:pca16", *sorted(baseline_configs(False)), "start:cutpaste", "start:cutpaste_batch8",
             "start:draem"]
    stated = {**SEED_BASELINES, **START_POINTS}
    for name in names:
        trial = study.ask()
        constants = fn(trial)  # before reading trial.params: the space fills them
        cfg = validate_config(config_from_params({**trial.params, **constants}))
        assert match_baseline(cfg, False) == name
        for key, value in stated[name].items():
            if key not in ("epochs", "threshold_policy"):
                assert cfg[key] == value, (name, key)
        study.tell(trial, 0.1)
    assert len(baseline_points()) == len(names)


def test_writeups_space_gives_only_baselines_at_their_stated_budgets():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fn = get_space("writeups")
    seen = set()
    for _ in range(8):
        trial = study.ask()
        constants = fn(trial)  # before reading trial.params: the space fills them
        cfg = validate_config(config_from_params({**trial.params, **constants}))
        name = match_baseline(cfg, False)
        assert name is not None and cfg["epochs"] == SEED_BASELINES[name]["epochs"]
        assert cfg["steps_per_epoch"] == cfg["samples_per_epoch"] == 0  # full passes, as written
        seen.add(name)
        study.tell(trial, 0.1)
    assert len(seen) > 1
    assert get_space("writeups", epochs=3)(study.ask())["epochs"] == 3  # --epochs still overrides


def test_old_option_spellings_still_work_with_a_note(capsys):
    import argparse

    from cli_parser import renamed_options
    from sweeps.spec import SweepSpec

    argv, notes = renamed_options(["promote", "--seeds", "0", "1", "--retrain"])
    assert argv == ["promote", "--retrain-seeds", "0", "1", "--retrain"] and notes == [
        "note: --seeds is deprecated; it is now --retrain-seeds"]
    parser = argparse.ArgumentParser()
    SweepSpec.add_arguments(parser)
    assert SweepSpec.from_namespace(parser.parse_args(["--space", "seeds"])).space == "writeups"


def test_unknown_space_named():
    with pytest.raises(KeyError, match="unknown search space 'huge'"):
        get_space("huge")


@pytest.mark.parametrize("batch_size,samples,steps", [(16, 64, 4), (16, 50, 4), (512, 64, 1), (8, 0, 12)])
def test_epoch_length_in_samples_is_batch_independent(tiny_splits, batch_size, samples, steps):
    """samples_per_epoch fixes the crops per epoch; 0 falls back to a full pass (here 100 crops)."""
    import torch

    from anomaly_ae.detector.training import build_trial, train_one_epoch

    cfg = validate_config({"conv_ae.base_width": 8, "batch_size": batch_size, "samples_per_epoch": samples,
                           "optimizer": "adam"})
    train = torch.from_numpy(tiny_splits.train[:100].copy())
    state = build_trial(cfg, train, torch.device("cpu"))
    train_one_epoch(state, cfg, train)
    adam_steps = {int(s["step"]) for s in state.optimizer.state.values()}
    assert adam_steps == {steps}


def test_quick_space_budget_is_in_samples():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    constants = get_space("quick")(trial)
    cfg = validate_config({**config_from_params(trial.params), **constants})
    assert cfg["samples_per_epoch"] == 768 and cfg["steps_per_epoch"] == 0
    steps_given = get_space("quick", steps_per_epoch=3)(study.ask())
    assert steps_given["steps_per_epoch"] == 3 and steps_given["samples_per_epoch"] == 0


def test_the_parsers_literal_choices_are_the_librarys():
    import cli_parser
    from anomaly_ae.detector.scores import SCORE_TYPES
    from anomaly_ae.stats.thresholds import THRESHOLD_POLICIES
    from benchmarks.calibrate import CALIBRATION_CONFIGS

    assert cli_parser.POLICY_CHOICES == list(THRESHOLD_POLICIES)
    assert cli_parser.SCORE_TYPES == list(SCORE_TYPES)
    assert cli_parser.CALIBRATION_CONFIGS == list(CALIBRATION_CONFIGS)


def test_warm_start_replay_keeps_fitting_trials_and_counts_the_rest():
    from search_spaces import baseline_points, frozen_trials, get_space

    space = get_space("quick")
    points = baseline_points()
    gone = {**points[0], "variant": "retired_ae"}
    out_of_range = {**points[2], "lr": 5.0}  # points[2]: seed000 (after the two reference start points)
    trials, skipped = frozen_trials(space, [(p, 0.5) for p in points] + [(gone, 0.1), (out_of_range, 0.2)])
    assert len(trials) == len(points) and skipped == 2
    assert trials[0].params["variant"] == points[0]["variant"] and trials[0].value == 0.5
    # Only what the space suggests is kept (constants and config fields are not parameters).
    assert "epochs" not in trials[0].params and set(trials[0].params) == set(trials[0].distributions)


def test_the_search_options_are_the_sweep_specs_fields():
    """The parser is generated from SweepSpec: no option without a field, defaults equal, unknown keys refused."""
    import dataclasses

    from cli_parser import build_parser
    from sweeps.spec import SpecError, SweepSpec

    parsed = build_parser().parse_args(["search"])
    assert SweepSpec.from_namespace(parsed) == SweepSpec()
    assert set(vars(parsed)) - {"command"} == {f.name for f in dataclasses.fields(SweepSpec)}
    spec = SweepSpec.from_namespace(build_parser().parse_args(["search", "--num-samples", "7", "--rerun-baselines"]))
    assert spec.num_samples == 7 and spec.rerun_baselines and spec.experiment_name == "proliv-quick"
    with pytest.raises(SpecError, match="unknown sweep setting.*num_sample"):
        SweepSpec.of(num_sample=7)
    with pytest.raises(SpecError, match="--val-fraction"):
        SweepSpec(val_fraction=1.5).validate()


def test_a_config_recorded_by_an_earlier_version_still_reads():
    """Runs and checkpoints from before the split keys were retired hold them; reading those back drops them."""
    from anomaly_ae.detector.config import stored_config

    old = {"variant": "conv_ae", "val_normal_fraction": 0.1, "val_spill_fraction": 1.0, "split_seed": 0}
    assert stored_config(old) == validate_config({"variant": "conv_ae"})
