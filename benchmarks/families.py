"""Do the families that learn from synthetic anomalies beat the pixel families? One sweep's best trial of
each family, by the sweep's own validation ranking, shipped as promote ships it and tested once; then the
cost of an epoch of each against ``conv_ae``, measured side by side.

The test figures decide nothing in the harness: they are the measurement the families are judged by.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from anomaly_ae.models import list_models, model_spec

PIXEL = "pixel"  # every family that compares pixels, or latents learnt only to reconstruct


def family_of(variant: str) -> str:
    """A synthetic-anomaly family is its own group; every other variant is a pixel family."""
    return variant if model_spec(variant).synthetic else PIXEL


def family_table(client, experiment: str, data_dir: Path | None = None) -> pd.DataFrame:
    from sweeps.promote import evaluate_once
    from sweeps.runs import download_checkpoint, find_parent_run, load_sweep_data, sweep_frame

    parent = find_parent_run(client, experiment)
    frame = sweep_frame(client, parent)  # best validation objective first
    frame = frame[frame["status"] != "DIVERGED"].assign(family=lambda f: f["variant"].map(family_of))
    _, splits = load_sweep_data(parent, data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, group in frame.groupby("family", sort=True):
            best = group.iloc[0]
            payload = download_checkpoint(client, best["run_id"], Path(tmp) / best["run_id"])
            report = evaluate_once(payload, splits)
            shipped = report.get("site", report)
            rows.append({"family": family, "trials": len(group), "trial_id": best["trial_id"],
                         "variant": best["variant"], "score": payload["config"]["score"],
                         "baseline": best["baseline"], "val_objective": best["best_objective"],
                         "test_auroc": report["auroc"], "threshold": shipped.get("policy", "site"),
                         "test_tpr": shipped["tpr"], "test_tnr": shipped["tnr"]})
    table = pd.DataFrame(rows)
    pixel = table.loc[table["family"] == PIXEL, "test_auroc"]
    table["auroc_vs_pixel"] = table["test_auroc"] - (pixel.iloc[0] if len(pixel) else float("nan"))
    return table


def saved_for_backward_mb(state, cfg: dict, train_u8: torch.Tensor, batch: int = 32) -> float:
    """Megabytes autograd keeps for the backward pass of one training step of ``batch`` crops, each storage
    counted once: the part of training memory that grows with the batch, and the same on any device, so
    it is measured where no GPU is (a GPU's peak adds the weights, the optimiser's state and its cache)."""
    from anomaly_ae.detector.training import step_loss, synthetic_step_loss

    storages = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[(storage.data_ptr(), str(tensor.device))] = storage.nbytes()
        return tensor

    state.model.train()
    clean = state.preprocess.to_unit(train_u8[:batch].to(state.device))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        if model_spec(cfg["variant"]).synthetic:
            synthetic_step_loss(state, cfg, clean)
        else:
            step_loss(state, cfg, clean, clean)
    return sum(storages.values()) / 2**20


def epoch_costs(train_u8: torch.Tensor, variants: list[str], crops: int = 768, repeats: int = 3) -> pd.DataFrame:
    """Seconds per epoch of ``crops`` crops, parameters and the memory kept for backward of each variant at
    its defaults, interleaved so that a slow patch of the machine hits them alike; ratios against the
    first (``conv_ae``)."""
    from anomaly_ae.detector.config import validate_config
    from anomaly_ae.detector.training import build_trial, train_one_epoch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    states, times, memory = {}, {v: [] for v in variants}, {}
    for variant in variants:
        spec = model_spec(variant)
        cfg = validate_config({"variant": variant, "samples_per_epoch": crops, "batch_size": 32,
                               "score": spec.extra_scores[0] if not spec.residual_scores else "mse"})
        states[variant] = (build_trial(cfg, train_u8.to(device), device), cfg)
    for round_ in range(repeats + 1):  # the first round warms up
        for variant, (state, cfg) in states.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            tick = time.perf_counter()
            train_one_epoch(state, cfg, train_u8.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
                memory[variant] = torch.cuda.max_memory_allocated() / 2**20
            if round_:
                times[variant].append(time.perf_counter() - tick)
    base = statistics.median(times[variants[0]])
    return pd.DataFrame([{
        "device": device.type, "variant": v, "crops": crops, "s_per_epoch": statistics.median(times[v]),
        f"vs_{variants[0]}": statistics.median(times[v]) / base,
        "params_m": sum(p.numel() for p in states[v][0].model.parameters()) / 1e6,
        "saved_mb_batch32": saved_for_backward_mb(*states[v], train_u8),
        "peak_gpu_mb": memory.get(v, float("nan"))} for v in variants])


def table_lines(table: pd.DataFrame, costs: pd.DataFrame | None, experiment: str) -> list[str]:
    lines = [f"sweep {experiment}: the best trial of each family by validation, tested once at the shipped threshold",
             table.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    if costs is not None:
        lines += ["", "cost of an epoch (interleaved medians)" + ("" if (costs["device"] == "cuda").any()
                                                                  else "; no CUDA device: GPU memory not measured"),
                  costs.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
    return lines


SYNTHETIC_FAMILIES = tuple(v for v in list_models() if model_spec(v).synthetic)
