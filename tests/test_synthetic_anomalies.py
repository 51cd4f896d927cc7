"""The synthetic-anomaly generator and the two families that learn from it (DRAEM- and CutPaste-style)."""
import numpy as np
import pytest
import torch

from anomaly_ae.detector.checkpoints import checkpoint_payload, load_checkpoint, load_trained, save_checkpoint
from anomaly_ae.detector.config import ConfigError, validate_config
from anomaly_ae.detector.losses import focal_loss
from anomaly_ae.detector.scores import compute_scores
from anomaly_ae.detector.synthetic_anomalies import SYNTHETIC_FILLS, SYNTHETIC_MASKS, AnomalyRecipe, masks, synthesize
from anomaly_ae.detector.validation import score_images, score_types_for, train_and_validate
from anomaly_ae.models.cutpaste import cutpaste, ledoit_wolf


def crops(n=256, seed=0):
    return torch.rand(n, 3, 32, 48, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("area", [(0.02, 0.05), (0.1, 0.3)])
def test_a_perlin_mask_covers_the_drawn_share_of_its_crop(area):
    recipe = AnomalyRecipe(mask="perlin", area_min=area[0], area_max=area[1], edge_sigma=0.0)
    covered = masks(recipe, 500, 32, 48, torch.Generator().manual_seed(0), "cpu").flatten(1).mean(1)
    pixel = 1 / (32 * 48)
    assert covered.min() >= area[0] - pixel and covered.max() <= area[1] + pixel
    # Drawn uniformly in the range: its mean sits in the middle.
    assert abs(covered.mean().item() - sum(area) / 2) < 0.1 * (area[1] - area[0]) + pixel


@pytest.mark.parametrize("shape", ["blob", "scar"])
def test_blob_and_scar_masks_never_exceed_the_drawn_share(shape):
    recipe = AnomalyRecipe(mask=shape, area_min=0.05, area_max=0.1, edge_sigma=0.0)
    covered = masks(recipe, 300, 32, 48, torch.Generator().manual_seed(1), "cpu").flatten(1).mean(1)
    # An ellipse or a stroke is cut by the crop's border, never grown; most are not cut to nothing.
    assert covered.max() <= 0.1 + 0.01 and (covered > 0).float().mean() > 0.9


def test_the_share_of_crops_with_an_anomaly_is_the_recipes():
    _, mask = synthesize(crops(2000), AnomalyRecipe(share=0.3), torch.Generator().manual_seed(0))
    hit = (mask.flatten(1).amax(1) > 0).float().mean().item()
    assert abs(hit - 0.3) < 3 * (0.3 * 0.7 / 2000) ** 0.5


@pytest.mark.parametrize("fill", SYNTHETIC_FILLS)
@pytest.mark.parametrize("shape", SYNTHETIC_MASKS)
def test_same_seed_same_anomalies_other_seed_others(fill, shape):
    x, recipe = crops(32), AnomalyRecipe(mask=shape, fill=fill)
    first = synthesize(x, recipe, torch.Generator().manual_seed(7))
    again = synthesize(x, recipe, torch.Generator().manual_seed(7))
    other = synthesize(x, recipe, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    # Unmasked pixels are the crop's own; the output stays an image.
    untouched = (first[1] == 0).expand_as(x)
    assert torch.equal(first[0][untouched], x[untouched]) and 0 <= first[0].min() and first[0].max() <= 1


def test_an_opaque_hard_colour_patch_is_the_colour_inside_its_mask():
    x = torch.full((64, 3, 16, 16), 0.5)
    recipe = AnomalyRecipe(fill="colour", opacity_min=1.0, edge_sigma=0.0, share=1.0)
    out, mask = synthesize(x, recipe, torch.Generator().manual_seed(0))
    inside = mask[:, 0] > 0
    for i in range(len(x)):
        colours = out[i][:, inside[i]]
        assert torch.allclose(colours, colours[:, :1].expand_as(colours))


def test_a_soft_edge_spreads_the_mask_and_keeps_its_mass():
    hard = AnomalyRecipe(edge_sigma=0.0, share=1.0)
    soft = AnomalyRecipe(edge_sigma=1.5, share=1.0)
    _, m_hard = synthesize(crops(64), hard, torch.Generator().manual_seed(3))
    _, m_soft = synthesize(crops(64), soft, torch.Generator().manual_seed(3))
    between = ((m_soft > 0.05) & (m_soft < 0.95)).float().sum() / ((m_hard > 0) & (m_hard < 1)).float().sum().clamp(1)
    assert between > 10
    assert abs(m_soft.sum() / m_hard.sum() - 1) < 0.1


@pytest.mark.parametrize("bad,field", [({"mask": "square"}, "synthetic_mask"), ({"fill": "paint"}, "synthetic_fill"),
                                       ({"area_min": 0.3, "area_max": 0.1}, "synthetic_area_min"),
                                       ({"edge_sigma": -1.0}, "synthetic_edge_sigma")])
def test_a_bad_recipe_is_refused_by_name(bad, field):
    with pytest.raises(ValueError, match=field):
        AnomalyRecipe(**bad)


def test_config_refuses_what_a_synthetic_family_cannot_use():
    with pytest.raises(ConfigError, match="corruption_prob"):
        validate_config({"variant": "draem", "corruption_prob": 0.2, "score": "map_max"})
    with pytest.raises(ConfigError, match="score: 'cutpaste' reconstructs nothing"):
        validate_config({"variant": "cutpaste", "score": "mse"})
    with pytest.raises(ConfigError, match="synthetic_area_min"):
        validate_config({"variant": "draem", "synthetic_area_min": 0.2, "synthetic_area_max": 0.1})
    with pytest.raises(ConfigError, match="map_max.*draem"):
        validate_config({"variant": "conv_ae", "score": "map_max"})


def test_ledoit_wolf_is_scikit_learns():
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 12)) @ rng.normal(size=(12, 12))
    mean, cov = ledoit_wolf(torch.from_numpy(x))
    theirs = LedoitWolf().fit(x)
    assert np.allclose(mean.numpy(), theirs.location_) and np.allclose(cov.numpy(), theirs.covariance_, atol=1e-10)


def fitted_cutpaste(density_features: str, seed: int = 0):
    torch.manual_seed(seed)
    model = cutpaste(3, 32, 48, base_width=8, depth=3, density_features=density_features).eval()
    with torch.no_grad():
        model.fit_density(model(crops(64, seed=1)).latent)
    return model


def test_the_cutpaste_density_reads_every_stage_pooled():
    moments, stages, last = fitted_cutpaste("moments"), fitted_cutpaste("stages"), fitted_cutpaste("last")
    x = crops(8, seed=2)
    with torch.no_grad():
        # The same weights (same seed), three densities: widths 2 * (8+16+32), 8+16+32 and the last stage's 32.
        assert moments(x).latent.shape == (8, 112) and stages(x).latent.shape == (8, 56)
        assert last(x).latent.shape == (8, 32)
        assert torch.equal(moments(x).latent[:, :56], stages(x).latent)
        assert torch.equal(stages(x).latent[:, -32:], last(x).latent)
        # the classifier reads the last stage's mean whatever the density
        assert torch.equal(moments(x).class_logits, last(x).class_logits)
        # By hand: the distance of each stage's mean and standard deviation to the fitted Gaussian.
        h, pooled, spread = x, [], []
        for stage in moments.encoder:
            h = stage(h)
            flat = h.flatten(2)
            pooled.append(flat.mean(2))
            spread.append(((flat - flat.mean(2, keepdim=True)) ** 2).mean(2).sqrt())
        centred = torch.cat(pooled + spread, 1) - moments.feature_mean
        by_hand = ((centred @ moments.precision) * centred).sum(1).sqrt()
        assert torch.allclose(moments(x).mahalanobis, by_hand, rtol=1e-4)
        assert not torch.allclose(moments(x).mahalanobis, stages(x).mahalanobis, rtol=1e-2)


@pytest.mark.parametrize("saved", ["last", "stages"])
def test_cutpaste_weights_saved_with_an_earlier_density_load_and_score_as_they_did(saved):
    old = fitted_cutpaste(saved)
    model = cutpaste(3, 32, 48, base_width=8, depth=3)  # today's default: mean and spread of every stage
    assert model.density_features == "moments"
    model.load_state_dict(old.state_dict())
    model.eval()
    x = crops(8, seed=3)
    with torch.no_grad():
        assert model.density_features == saved and torch.equal(model(x).mahalanobis, old(x).mahalanobis)


def test_focal_loss_by_hand():
    logits, target = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    p = torch.sigmoid(logits)
    by_hand = [-(1 - p[0]) ** 2 * torch.log(p[0]), -p[1] ** 2 * torch.log(1 - p[1]), -p[2] ** 2 * torch.log(1 - p[2])]
    assert torch.allclose(focal_loss(logits, target), torch.stack(by_hand).mean())
    assert torch.allclose(focal_loss(logits, target, gamma=0.0),
                          torch.nn.functional.binary_cross_entropy_with_logits(logits, target))


def test_map_scores_by_hand():
    logits = torch.full((2, 1, 10, 10), -20.0)
    logits[1, 0, 2:6, 2:6] = 20.0  # a 4x4 patch; its inner 2x2 is 4 % of the map
    x = torch.zeros(2, 3, 10, 10)
    scores = compute_scores(x, x, ["map_max", "map_topk"],
                            {"map_topk": {"fraction": 0.04, "sigma": 0.5}, "map_max": {"sigma": 0.5}},
                            anomaly_logits=logits)
    # At sigma 0.5 a pixel two away from the patch's edge weighs e^-8 of the centre: the inner 2x2 stays ~1.
    assert scores["map_topk"].tolist() == pytest.approx([0.0, 1.0], abs=1e-2)
    assert scores["map_max"].tolist() == pytest.approx([0.0, 1.0], abs=1e-2)
    # One confident pixel alone is smoothed away: a defect is a patch.
    lone = torch.full((1, 1, 10, 10), -20.0)
    lone[0, 0, 5, 5] = 20.0
    assert compute_scores(x[:1], x[:1], ["map_max"], {"map_max": {"sigma": 1.5}}, anomaly_logits=lone)["map_max"] < 0.1
    with pytest.raises(ValueError, match="draem"):
        compute_scores(x, x, ["map_max"])


FAMILIES = {"draem": {"score": "map_max", "draem.base_width": 8, "draem.disc_width": 8},
            "cutpaste": {"score": "mahalanobis", "cutpaste.base_width": 8}}


def test_the_cutpaste_density_is_fitted_on_a_seeded_draw_of_up_to_density_crops_train_crops(monkeypatch):
    from anomaly_ae.detector import training

    monkeypatch.setattr(training, "DENSITY_CROPS", 24)
    cfg = validate_config({"variant": "cutpaste", **FAMILIES["cutpaste"], "normalisation": "none", "epochs": 1,
                           "samples_per_epoch": 16, "batch_size": 16, "seed": 5})
    train_u8 = (crops(60, seed=4) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # as loaded: NHWC
    state = training.build_trial(cfg, train_u8, torch.device("cpu"))
    training.refresh_density(state, cfg, train_u8)
    features = {}
    with torch.no_grad():
        for name, idx in (("drawn", torch.randperm(60, generator=torch.Generator().manual_seed(5))[:24]),
                          ("all", torch.arange(60))):
            features[name] = state.model(training.model_input(state, cfg, state.preprocess.to_unit(train_u8[idx]))).latent
    def off(name):
        return (state.model.feature_mean - features[name].mean(0)).abs().max().item()

    assert off("drawn") < 1e-6 < 1e-4 < off("all")
    monkeypatch.setattr(training, "DENSITY_CROPS", 4096)  # more than there are: every crop
    training.refresh_density(state, cfg, train_u8)
    assert off("all") < 1e-6


@pytest.mark.parametrize("variant", sorted(FAMILIES))
def test_each_family_trains_scores_at_the_site_and_reloads_identically(variant, tiny_splits, tmp_path):
    cfg = validate_config({"variant": variant, **FAMILIES[variant], "epochs": 2, "samples_per_epoch": 64,
                           "batch_size": 16, "objective": "site", "score_selection": "best"})
    state, metrics, val_scores, verdict = train_and_validate(cfg, tiny_splits, torch.device("cpu"))
    # The site rule applies to its scores like any other's.
    judged = metrics[verdict["score"]]
    assert verdict["score"] in score_types_for(cfg)
    assert np.isfinite(judged["site_threshold"]) and 0 <= judged["tpr_at_site"] <= 1
    assert len(val_scores["site"][verdict["score"]]) == len(tiny_splits.site_selection.images)
    # Saved as tensors only, reloaded, and scored to the same numbers.
    path = save_checkpoint(tmp_path / "model.pt", checkpoint_payload(state, cfg, val_scores, {"epoch": 2}),
                           with_optimizer=False)
    reloaded = load_trained(load_checkpoint(path))
    crops_u8 = torch.from_numpy(np.ascontiguousarray(tiny_splits.val_spill))
    before, _ = score_images(state, cfg, crops_u8)
    after, _ = score_images(reloaded, cfg, crops_u8)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    if variant == "cutpaste":
        assert before["mahalanobis"].std() > 0  # the fitted density is in the checkpoint, not zeros


def test_the_space_proposes_a_recipe_only_to_the_synthetic_families():
    import optuna

    from search_spaces import config_from_params, get_space

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space, seen = get_space("quick"), {}
    for _ in range(120):
        trial = study.ask()
        constants = space(trial)
        cfg = validate_config(config_from_params({**trial.params, **constants}))
        synthetic = any(k.startswith("synthetic_") for k in trial.params)
        seen[cfg["variant"]] = synthetic
        assert synthetic == (cfg["variant"] in ("draem", "cutpaste")), cfg["variant"]
        assert ("corruption_prob" in trial.params) == (cfg["variant"] not in ("draem", "cutpaste", "pca_ae", "knn"))
        if cfg["variant"] == "cutpaste":
            assert cfg["score"] == "mahalanobis" and not any(k.startswith("loss") for k in trial.params)
        study.tell(trial, 0.5)
    assert seen.get("draem") is True and seen.get("cutpaste") is True
