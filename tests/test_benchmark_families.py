"""The families benchmark's memory figure: what autograd keeps for backward, per training step."""
import torch

from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.training import build_trial
from benchmarks.families import saved_for_backward_mb

CONFIGS = {"conv_ae": {"variant": "conv_ae"},
           "cutpaste": {"variant": "cutpaste", "score": "mahalanobis", "cutpaste.base_width": 8},
           "draem": {"variant": "draem", "score": "map_max"}}


def saved(name, batch):
    train = torch.randint(0, 256, (64, 32, 48, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = validate_config({**CONFIGS[name], "batch_size": 32})
    return saved_for_backward_mb(build_trial(cfg, train, torch.device("cpu")), cfg, train, batch)


def test_the_memory_kept_for_backward_grows_with_the_batch_and_the_network():
    # Activations scale with the batch; the weights autograd also keeps (for the gradient of each
    # convolution's input) do not, and they are at most every parameter in float32.
    sizes = {batch: saved("conv_ae", batch) for batch in (16, 32, 64)}
    per_16 = sizes[32] - sizes[16]
    assert abs((sizes[64] - sizes[32]) - 2 * per_16) < 0.01 * per_16
    weights = sizes[16] - per_16
    cfg = validate_config(CONFIGS["conv_ae"])
    params = sum(p.numel() for p in build_trial(cfg, torch.zeros(8, 32, 48, 3, dtype=torch.uint8)).model.parameters())
    assert 0 < weights <= params * 4 / 2**20
    large = sizes[32]
    # By hand, a lower bound: conv_ae keeps at least its 3-channel input batch of 32 crops in float32.
    assert large > 32 * 3 * 32 * 48 * 4 / 2**20
    # draem runs a reconstruction network and a segmenting U-Net on the same crops: it keeps more.
    assert saved("draem", 32) > large and saved("cutpaste", 16) > 0
