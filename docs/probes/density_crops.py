"""Probe behind docs/results.md §16: how many train crops `cutpaste`'s Gaussian is fitted on. One
`start:cutpaste` detector trained at the quick budget (batch size as given), then its mean-and-spread
features fitted on 1,024 train crops (the latent bank's draw, as the harness fitted it before) and on up
to 2,048, 4,096 and all of them. Prints the validation figures (what a choice may be made on) and the
test AUROC (the measurement).

    python docs/probes/density_crops.py DATA [SEED] [BATCH]
"""
import sys

import numpy as np
import torch

from anomaly_ae.data.loading import load_proliv, make_splits
from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.latent_bank import bank_indices
from anomaly_ae.detector.training import build_trial, model_input, train_one_epoch
from anomaly_ae.stats.metrics import auroc, tpr_at_tnr
from search_spaces.baselines import CUTPASTE_START

root = sys.argv[1]
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
torch.set_num_threads(1)
splits = make_splits(load_proliv(root, (32, 48)))
cfg = validate_config({**CUTPASTE_START, "epochs": 4, "samples_per_epoch": 768, "seed": seed,
                       **({"batch_size": int(sys.argv[3])} if len(sys.argv) > 3 else {})})
train = torch.from_numpy(splits.train)
state = build_trial(cfg, train, torch.device("cpu"))
for _ in range(cfg["epochs"]):
    train_one_epoch(state, cfg, train)
model = state.model.eval()


@torch.inference_mode()
def features(u8):
    return torch.cat([model(model_input(state, cfg, state.preprocess.to_unit(torch.from_numpy(u8[i:i + 512])))).latent
                      for i in range(0, len(u8), 512)])


sets = {"val_normal": splits.val_normal, "val_spill": splits.val_spill, "test": splits.test}
rows = {name: features(u8) for name, u8 in sets.items()}
labels = np.asarray(splits.test_labels).astype(bool)
n = len(splits.train)
draws = {"1,024 (the latent bank's draw)": bank_indices(n, seed)[0]}
order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
for size in (2048, 4096, n):
    if size <= n:
        draws[f"{size:,}" + (" (all)" if size == n else "")] = order[:size]
def distance(f):
    centred = f - model.feature_mean
    return ((centred @ model.precision) * centred).sum(1).clamp_min(0).sqrt().numpy()


for label, idx in draws.items():
    model.fit_density(features(splits.train[idx.numpy()]))
    s = {name: distance(r) for name, r in rows.items()}
    tpr = tpr_at_tnr(s["val_normal"], s["val_spill"], 0.95)[0]
    print(f"fitted on {label:32s} val TPR@TNR0.95 {tpr:.3f}  val AUROC {auroc(s['val_normal'], s['val_spill']):.3f}  "
          f"test AUROC {auroc(s['test'][~labels], s['test'][labels]):.3f}", flush=True)
