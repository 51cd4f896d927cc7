"""`run_search.py benchmark`: seconds per training epoch, measured side by side in one process.

For each variant at its default parameters and each batch size, ways to run the same epoch (the same
model, loss, optimizer and number of crops), compared two by two on the same work:

- ``project`` against ``bare``, neither augmenting: this harness's epoch (``train_one_epoch``: uint8
  crops resident on the device, cast, resized and normalised there, running loss kept on the device)
  against a bare loop over a ready float tensor already at the model's size (forward, MSE, backward,
  step). The bare loop is the floor.
- ``project_augmented`` against ``seed_pipeline``, both with seed 000's augmentation (flips, a 1 degree
  rotation, brightness and contrast jitter of 0.01): the harness augments the batch on the device; the
  seed pipeline is what the write-ups did, a folder Dataset that opens each crop with PIL, per-image
  torchvision transforms, and a DataLoader.

The four are interleaved per repeat and the median is kept, so the ratios compare like with like on a
noisy machine. With CUDA, the same table on the GPU, and trials per hour of short real sweeps at
fractional ``--gpus-per-trial``.
"""
from __future__ import annotations

import logging
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from anomaly_ae.data.loading import decode_images, list_images
from anomaly_ae.detector.config import validate_config
from anomaly_ae.detector.training import build_optimizer, build_trial, train_one_epoch
from anomaly_ae.models import list_models, model_spec

logger = logging.getLogger(__name__)

COLUMNS = ["device", "variant", "batch_size", "crops", "project_s_per_epoch", "bare_s_per_epoch",
           "seed_pipeline_s_per_epoch", "project_augmented_s_per_epoch", "project_vs_bare", "seed_vs_project"]
GPU_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
# Seed 000's augmentation, as config keys of this harness.
AUGMENTATION = {"hflip": True, "vflip": True, "rotation_deg": 1.0, "brightness_jitter": 0.01, "contrast_jitter": 0.01}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    tick = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - tick


def interleaved_medians(runs: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each callable: one warm-up each, then ``repeats`` rounds that run them in turn,
    so that a slow patch of a noisy machine hits all of them alike."""
    for fn in runs.values():  # warm-up: allocator, cuDNN autotuning, page cache
        timed(fn, device)
    times = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def epoch_config(variant: str, batch_size: int, **options) -> dict:
    """The variant at its defaults, for one full pass over the crops."""
    return validate_config({"variant": variant, "batch_size": batch_size, "steps_per_epoch": 0,
                            "samples_per_epoch": 0, "epochs": 1, **options})


class SeedStyleFolder(torch.utils.data.Dataset):
    """One PIL decode and per-image transforms per item, as in seed 000's notebook."""

    def __init__(self, paths: list[Path], size: tuple[int, int]):
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose([
            transforms.Resize(size), transforms.RandomRotation(AUGMENTATION["rotation_deg"]),
            transforms.RandomVerticalFlip(), transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=AUGMENTATION["brightness_jitter"],
                                   contrast=AUGMENTATION["contrast_jitter"]),
            transforms.ToTensor()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def measure_variant(variant: str, batch_size: int, paths: list[Path], train_u8: torch.Tensor,
                    device: torch.device, repeats: int, loader_workers: int) -> dict:
    cfg = epoch_config(variant, batch_size)
    state = build_trial(cfg, train_u8, device)
    cfg_aug = epoch_config(variant, batch_size, **AUGMENTATION)
    state_aug = build_trial(cfg_aug, train_u8, device)
    resident = train_u8.to(device)
    ready = state.preprocess.normalise(state.preprocess.to_unit(resident))  # the bare loop's input
    bare_model = build_trial(cfg, train_u8, device).model
    bare_opt = build_optimizer(cfg, bare_model.parameters())
    seed_model = build_trial(cfg, train_u8, device).model
    seed_opt = build_optimizer(cfg, seed_model.parameters())
    size = (state.preprocess.height, state.preprocess.width)
    loader = torch.utils.data.DataLoader(SeedStyleFolder(paths, size), batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=loader_workers)
    steps = len(train_u8) // batch_size

    def bare():
        bare_model.train()
        order = torch.randperm(len(ready), device=device)
        for s in range(steps):
            x = ready[order[s * batch_size:(s + 1) * batch_size]]
            loss = F.mse_loss(bare_model(x).recon, x)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()

    def seed_pipeline():
        seed_model.train()
        for x in loader:
            x = x.to(device)
            loss = F.mse_loss(seed_model(x).recon, x)
            seed_opt.zero_grad(set_to_none=True)
            loss.backward()
            seed_opt.step()

    runs = {"project": lambda: train_one_epoch(state, cfg, resident), "bare": bare,
            "project_augmented": lambda: train_one_epoch(state_aug, cfg_aug, resident), "seed_pipeline": seed_pipeline}
    med = interleaved_medians(runs, device, repeats)
    return {"device": device.type, "variant": variant, "batch_size": batch_size, "crops": steps * batch_size,
            "project_s_per_epoch": med["project"], "bare_s_per_epoch": med["bare"],
            "seed_pipeline_s_per_epoch": med["seed_pipeline"],
            "project_augmented_s_per_epoch": med["project_augmented"], "project_vs_bare": med["project"] / med["bare"],
            "seed_vs_project": med["seed_pipeline"] / med["project_augmented"]}


def measure_options(variant: str, batch_size: int, train_u8: torch.Tensor, device: torch.device,
                    repeats: int) -> list[dict]:
    """The project's epoch under each execution option (bf16 autocast, channels_last), side by side."""
    options = {"fp32": {}, "bf16": {"precision": "bf16"}, "channels_last": {"channels_last": True},
               "bf16+channels_last": {"precision": "bf16", "channels_last": True}}
    resident = train_u8.to(device)
    runs = {}
    for name, extra in options.items():
        cfg = epoch_config(variant, batch_size, **extra)
        runs[name] = (lambda s=build_trial(cfg, train_u8, device), c=cfg: train_one_epoch(s, c, resident))
    med = interleaved_medians(runs, device, repeats)
    return [{"device": device.type, "variant": variant, "batch_size": batch_size, "option": name,
             "s_per_epoch": t, "vs_fp32": t / med["fp32"]} for name, t in med.items()]


def sweep_rate(data: Path, gpus_per_trial: float, num_samples: int, work: Path) -> dict:
    """Trials per hour of a short real sweep at ``gpus_per_trial``, and the trials' peak GPU memory."""
    experiment = f"throughput-gpu-{gpus_per_trial:g}"
    concurrent = max(1, int(round(1 / gpus_per_trial)))
    cmd = [sys.executable, str(Path(__file__).resolve().parents[1] / "run_search.py"), "search", "--data", str(data),
           "--num-samples", str(num_samples), "--epochs", "3", "--max-concurrent", str(concurrent),
           "--gpus-per-trial", str(gpus_per_trial), "--cpus-per-trial", "1", "--no-baselines", "--no-references",
           "--no-warm-start", "--experiment", experiment, "--storage-path", str(work / "ray"),
           "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}"]
    tick = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise RuntimeError(f"sweep at --gpus-per-trial {gpus_per_trial} failed:\n{done.stdout[-2000:]}")
    peaks = []
    for result in (work / "ray" / experiment).glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        peaks += [r["gpu_peak_mem_mb"] for r in rows if "gpu_peak_mem_mb" in r]
    return {"gpus_per_trial": gpus_per_trial, "concurrent": concurrent, "trials": num_samples, "wall_s": wall,
            "trials_per_hour": num_samples / wall * 3600, "peak_gpu_mem_mb": max(peaks, default=float("nan"))}


def benchmark(data: Path, variants: list[str] | None, batch_sizes: list[int], crops: int, repeats: int,
              loader_workers: int, sweep_samples: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(epochs table, execution-options table, GPU packing table; the last is empty without CUDA)."""
    paths = list_images(Path(data) / "train")[:crops]
    if not paths:
        raise ValueError(f"--data: no crops in {Path(data) / 'train'}")
    from PIL import Image

    with Image.open(paths[0]) as first:  # decoded at the crops' own size, as a sweep does
        width, height = first.size
    train_u8 = torch.from_numpy(decode_images(paths, (height, width)))
    gradient = [v for v in (variants or list_models()) if not model_spec(v).closed_form]
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows, options = [], []
    for device in devices:
        for variant in gradient:
            for bs in batch_sizes:
                row = measure_variant(variant, bs, paths, train_u8, device, repeats, loader_workers)
                logger.info(f"{device.type:<4} {variant:<20} batch {bs:>4}: project {row['project_s_per_epoch']:.3f}s, "
                            f"bare {row['bare_s_per_epoch']:.3f}s ({row['project_vs_bare']:.2f}x); augmented: project "
                            f"{row['project_augmented_s_per_epoch']:.3f}s, seed pipeline "
                            f"{row['seed_pipeline_s_per_epoch']:.3f}s ({row['seed_vs_project']:.1f}x the project)")
                rows.append(row)
        options += measure_options(gradient[0], max(batch_sizes), train_u8, device, repeats)
    packing = []
    if torch.cuda.is_available():
        with tempfile.TemporaryDirectory() as tmp:
            for fraction in GPU_FRACTIONS:
                packing.append(sweep_rate(Path(data), fraction, sweep_samples, Path(tmp)))
                logger.info(f"gpu sweep at {fraction:g} GPU/trial: {packing[-1]['trials_per_hour']:.0f} trials/h, "
                            f"peak {packing[-1]['peak_gpu_mem_mb']:.0f} MB per trial")
    return pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(options), pd.DataFrame(packing)


def summary_lines(epochs: pd.DataFrame) -> list[str]:
    lines = []
    for device, group in epochs.groupby("device"):
        lines.append(f"{device}: project/bare median {group['project_vs_bare'].median():.2f}x "
                     f"(max {group['project_vs_bare'].max():.2f}x); seed pipeline/project (both augmenting) median "
                     f"{group['seed_vs_project'].median():.1f}x (min {group['seed_vs_project'].min():.1f}x), "
                     f"over {len(group)} variant x batch-size pairs")
    return lines


def timed_variants(variants: list[str] | None) -> list[str] | None:
    """``variants`` checked: registered, and gradient-trained (a closed-form fit has no epoch to time)."""
    from sweeps.spec import SpecError

    unknown = sorted(set(variants or []) - set(list_models()))
    if unknown:
        raise SpecError(f"--variants: unknown {', '.join(unknown)}; valid: {', '.join(list_models())}")
    closed = [v for v in variants or [] if model_spec(v).closed_form]
    if closed:
        raise SpecError(f"--variants: {', '.join(closed)} is fitted in closed form; there is no epoch to time")
    return variants


def write_tables(out: Path, epochs: pd.DataFrame, options: pd.DataFrame, packing: pd.DataFrame) -> list[Path]:
    """OUT (seconds per epoch), OUT-options and, with CUDA, OUT-gpu; returns the paths written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    written = [out, out.with_name(out.stem + "-options.csv")]
    epochs.to_csv(written[0], index=False)
    options.to_csv(written[1], index=False)
    if not packing.empty:
        written.append(out.with_name(out.stem + "-gpu.csv"))
        packing.to_csv(written[2], index=False)
    return written


def report_lines(epochs: pd.DataFrame, options: pd.DataFrame, packing: pd.DataFrame, written: list[Path]) -> list[str]:
    """What `benchmark` prints: both tables, the ratios' summary, the GPU packing (or why it is absent)."""
    lines = ["", epochs.to_string(index=False, float_format=lambda v: f"{v:.3f}"), "",
             options.to_string(index=False, float_format=lambda v: f"{v:.3f}"), *summary_lines(epochs)]
    if packing.empty:
        lines.append("no CUDA device: GPU epochs and fractional-GPU packing not measured")
    else:
        lines.append(packing.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    return lines + [f"wrote {', '.join(map(str, written))}"]
