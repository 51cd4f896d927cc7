"""The training step: device-side random numbers and running loss, no host sync per step, bf16 and
channels_last as options, divergence still caught."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_ae.detector.config import validate_config
import anomaly_ae.detector.training as training
from anomaly_ae.detector.training import DivergedError, build_trial, train_one_epoch

PROJECT = Path(training.__file__).resolve().parent


def train_u8(n=96):
    return torch.from_numpy(np.random.default_rng(0).integers(0, 255, (n, 30, 48, 3), dtype=np.uint8))


def config(**kw):
    narrow = {} if "variant" in kw else {"conv_ae.base_width": 8}
    return validate_config({"variant": "conv_ae", **narrow, "batch_size": 8, "steps_per_epoch": 10,
                            "hflip": True, "shift_px": 2.0, "brightness_jitter": 0.1, "corruption_prob": 0.5,
                            "blur_sigma": 1.0, "normalisation": "per_crop", "seed": 3, **kw})


def test_the_generator_lives_on_the_trial_device():
    state = build_trial(config(), train_u8())
    assert state.generator.device == state.device


SYNTHETIC = {"corruption_prob": 0.0, "synthetic_fill": "mixed", "synthetic_mask": "perlin"}


@pytest.mark.parametrize("options", [{}, {"variant": "draem", "draem.base_width": 8, "draem.disc_width": 8, **SYNTHETIC},
                                     {"variant": "cutpaste", "cutpaste.base_width": 8, "score": "mahalanobis",
                                      **SYNTHETIC}], ids=["conv_ae", "draem", "cutpaste"])
def test_the_step_loop_never_syncs_the_host_per_step(monkeypatch, options):
    """Counts the host reads of a tensor (.item(), truth tests) made by the project's own code;
    the optimizer's own reads of its CPU step counters are not device syncs."""
    calls = {"item": 0, "bool": 0, "float": 0}
    real_item, real_bool, real_float = torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__

    def ours() -> bool:
        return sys._getframe(2).f_code.co_filename.startswith(str(PROJECT))

    def item(self):
        calls["item"] += ours()
        return real_item(self)

    def as_bool(self):
        calls["bool"] += ours()
        return real_bool(self)

    def as_float(self):
        calls["float"] += ours()
        return real_float(self)

    cfg, data = config(**options), train_u8()
    state = build_trial(cfg, data)
    monkeypatch.setattr(torch.Tensor, "item", item)
    monkeypatch.setattr(torch.Tensor, "__bool__", as_bool)
    monkeypatch.setattr(torch.Tensor, "__float__", as_float)
    loss = train_one_epoch(state, cfg, data)
    # 10 steps (with blur and per-crop standardisation; synthetic anomalies pasted, the feature density
    # fitted): one divergence check and one read of the mean loss, at the epoch's end.
    assert calls == {"item": 1, "bool": 1, "float": 0} and math.isfinite(loss)


def test_divergence_is_caught_at_the_next_check(monkeypatch):
    monkeypatch.setattr(training, "DIVERGENCE_CHECK_STEPS", 4)
    cfg, data = config(), train_u8()
    state = build_trial(cfg, data)
    with torch.no_grad():
        next(state.model.parameters()).fill_(float("nan"))
    with pytest.raises(DivergedError, match="step 4"):
        train_one_epoch(state, cfg, data)


@pytest.mark.parametrize("options", [{"precision": "bf16"}, {"channels_last": True},
                                     {"precision": "bf16", "channels_last": True}])
def test_bf16_and_channels_last_train_to_a_similar_loss(options):
    data = train_u8()
    losses = {}
    for name, cfg in (("fp32", config()), ("option", config(**options))):
        state = build_trial(cfg, data)
        losses[name] = [train_one_epoch(state, cfg, data) for _ in range(2)]
    assert all(math.isfinite(v) for v in losses["option"])
    assert losses["option"][-1] == pytest.approx(losses["fp32"][-1], rel=0.1)


def test_same_seed_same_loss_on_the_device_generator():
    data = train_u8()
    first, second = (train_one_epoch(build_trial(config(), data), config(), data) for _ in range(2))
    assert first == second
