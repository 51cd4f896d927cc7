"""Probe behind docs/results.md §15: one `start:cutpaste` detector trained at a chosen budget, seed and
learning rate, then scored with Gaussians fitted to different features of the same weights. Prints the
validation figures (what a choice may be made on) and the test AUROC (the measurement).

    python docs/probes/cutpaste_density.py DATA EPOCHS CROPS_PER_EPOCH [SEED] [LR] [BATCH]

(§16: the row "mean and spread of every stage" and BATCH 8 against the start point's 32.)
"""
import sys

import numpy as np
import torch

from anomaly_ae.data.loading import load_proliv, make_splits
from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.training import build_trial, model_input, train_one_epoch
from anomaly_ae.models.cutpaste import ledoit_wolf
from anomaly_ae.stats.metrics import auroc, tpr_at_tnr
from search_spaces.baselines import CUTPASTE_START

root, epochs, crops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
torch.set_num_threads(1)
splits = make_splits(load_proliv(root, (32, 48)))
cfg = validate_config({**CUTPASTE_START, "epochs": epochs, "samples_per_epoch": crops, "seed": seed,
                       **({"lr": float(sys.argv[5])} if len(sys.argv) > 5 else {}),
                       **({"batch_size": int(sys.argv[6])} if len(sys.argv) > 6 else {})})
train = torch.from_numpy(splits.train)
state = build_trial(cfg, train, torch.device("cpu"))
for _ in range(epochs):
    train_one_epoch(state, cfg, train)
state.model.eval()


@torch.inference_mode()
def stage_maps(u8):
    """Each encoder stage's feature map, (n, C, h, w), for uint8 crops."""
    out = None
    for i in range(0, len(u8), 512):
        h = model_input(state, cfg, state.preprocess.to_unit(torch.from_numpy(u8[i:i + 512])))
        maps = []
        for stage in state.model.encoder:
            h = stage(h)
            maps.append(h)
        out = maps if out is None else [torch.cat([a, b]) for a, b in zip(out, maps)]
    return [m.double() for m in out]


def gaussian(rows):
    mean, cov = ledoit_wolf(rows)
    return mean, torch.linalg.pinv(cov, hermitian=True)


def distance(rows, fit):
    centred = rows - fit[0]
    return ((centred @ fit[1]) * centred).sum(-1).clamp_min(0).sqrt()


sets = {"val_normal": splits.val_normal, "val_spill": splits.val_spill, "test": splits.test}
bank = stage_maps(splits.train[:2000])
maps = {name: stage_maps(u8) for name, u8 in sets.items()}
labels = np.asarray(splits.test_labels).astype(bool)


def report(name, scores):
    tpr = tpr_at_tnr(scores["val_normal"], scores["val_spill"], 0.95)[0]
    print(f"{name:38s} val TPR@TNR0.95 {tpr:.3f}  val AUROC {auroc(scores['val_normal'], scores['val_spill']):.3f}  "
          f"test AUROC {auroc(scores['test'][~labels], scores['test'][labels]):.3f}")


def pooled(stage_list, which):
    return torch.cat([stage_list[k].mean((2, 3)) for k in which], 1)


def moments(stage_list):
    return torch.cat([m.mean((2, 3)) for m in stage_list] + [m.std((2, 3), correction=0) for m in stage_list], 1)


last = len(bank) - 1
for label, which in (("last stage (before §15)", [last]), ("every stage (§15)", list(range(len(bank))))):
    fit = gaussian(pooled(bank, which))
    report(label, {name: distance(pooled(m, which), fit).numpy() for name, m in maps.items()})
fit = gaussian(moments(bank))
report("mean and spread of every stage (§16)", {name: distance(moments(m), fit).numpy() for name, m in maps.items()})
for k in range(len(bank)):
    # Per location, one Gaussian shared by every position (a texture is stationary); max over positions.
    rows = bank[k].permute(0, 2, 3, 1).reshape(-1, bank[k].shape[1])
    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:60000]]
    fit = gaussian(rows)
    report(f"stage {k} per location, max", {name: distance(m[k].permute(0, 2, 3, 1), fit).flatten(1).amax(1).numpy()
                                          for name, m in maps.items()})
