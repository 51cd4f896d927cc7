#!/usr/bin/env python
"""Hyperparameter search for autoencoder spill detection.

    python run_search.py                       # default: make data if absent, quick CPU sweep, leaderboard
    python run_search.py search --data DIR --space quick|full|seeds [...]
    python run_search.py make-data --out DIR [--scale F] [--seed N]
    python run_search.py list-models
    python run_search.py analyze --experiment NAME      # leaderboard, importance, plots -> parent run
    python run_search.py promote --experiment NAME [--trial ID] [--retrain] [--force]
    python run_search.py predict --model champion --images DIR --out scores.csv
    python run_search.py benchmark-search --budget-s 600 --repeats 5   # TPE vs random, baselines, references
    python run_search.py benchmark --data DIR --out throughput.csv      # seconds per epoch, three pipelines
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per checkpoint download otherwise
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" line per closed run otherwise
# Snapshot the experiment state often: after a kill -9, trials started since the last
# snapshot are lost to --resume and suggested again.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
# Tune's legacy reporter at verbose=0 prints nothing; the new one prints a config box and a
# TensorBoard hint whatever the verbosity. Our own lines (trainables.sweep.SweepProgress) report progress instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from anomaly_ae.selection import OBJECTIVES, SCORE_SELECTIONS  # noqa: E402  (light: numpy only)

# The policies of anomaly_ae.thresholds (kept literal: the parser must not import torch).
POLICY_CHOICES = ["tnr_target", "midpoint", "best_f1", "tpr_target", "min_anomaly", "normal_quantile"]
# Chosen by measurement on the default dataset: see README, "Selection under a test shift".
DEFAULT_OBJECTIVE = "clean"
DEFAULT_OBJECTIVE_WITH_SITE = "site"

REPO = Path(__file__).resolve().parent
DEFAULT_DATA = REPO / "data" / "default"
# The exports `run_search.py server` prints make every command (and every trial) use the server.
DEFAULT_TRACKING = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"
DEFAULT_STORAGE = REPO / "ray_results"


class UsageError(ValueError):
    """Bad command-line input, found before Ray starts."""


def at_least(cast, lo, name: str):
    """An argparse type: ``cast(text)``, refused below ``lo``."""
    def parse(text: str):
        value = cast(text)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {value}")
        return value
    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = at_least(int, 1, "positive_int")
non_negative_int = at_least(int, 0, "non_negative_int")
non_negative_float = at_least(float, 0, "non_negative_float")


def add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None,
                   help=f"dataset folder in the proliv layout (default: {DEFAULT_DATA}, generated if absent)")
    p.add_argument("--space", default="quick", help="search space preset: quick, full or seeds (default quick)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML trial config (e.g. a promoted best_config.yaml) enqueued as the first trial")
    p.add_argument("--num-samples", type=positive_int, default=18,
                   help="trials to run, the enqueued seed baselines and PCA start point included (default 18)")
    p.add_argument("--max-concurrent", type=positive_int, default=2, help="trials at once (default 2)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epoch budget per trial (space default)")
    p.add_argument("--steps-per-epoch", type=int, default=None,
                   help="batches per epoch, 0 = a full pass (space default: 0)")
    p.add_argument("--samples-per-epoch", type=int, default=None,
                   help="crops per epoch whatever the batch size, 0 = unused (space default: quick 768, else 0)")
    p.add_argument("--time-budget-s", type=non_negative_float, default=None, help="stop starting trials after this")
    p.add_argument("--cpus-per-trial", type=non_negative_float, default=1.0, help="CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=non_negative_float, default=0.0,
                   help="GPUs per trial, fractional allowed: 0.25 packs four trials on a GPU (default 0)")
    p.add_argument("--address", default=None, help="join a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT")
    p.add_argument("--storage-path", default=str(DEFAULT_STORAGE),
                   help="Ray results: local folder, shared NFS path or s3:// URI (default ./ray_results)")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite mlruns/mlflow.db)")
    p.add_argument("--experiment", default=None, help="experiment name for Ray and MLflow (default proliv-<space>)")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="keep the sweep's Optuna study in this database (postgresql://... on a cluster, "
                        "sqlite:///PATH beside the MLflow store on one machine), named after the sweep; "
                        "default: in the driver's memory and Ray's experiment state only")
    p.add_argument("--seed", type=int, default=0, help="sampler and trial seed (default 0)")
    p.add_argument("--no-baselines", action="store_true", help="do not enqueue the seed baselines")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted sweep --experiment from --storage-path (Tuner.restore)")
    p.add_argument("--tnr-target", type=float, default=0.95, help="TNR the objective is constrained to (default 0.95)")
    p.add_argument("--grace-period", type=positive_int, default=1, help="ASHA: epochs before a trial can be stopped")
    p.add_argument("--scale", type=float, default=1.0, help="scale of the generated default dataset (default 1)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of train/ held out as validation normals, never trained on (default 0.1)")
    p.add_argument("--val-spill-fraction", type=float, default=1.0,
                   help="fraction of proliv/ used as validation spills (default 1)")
    p.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                   help="asha stops weak trials early; fifo runs every trial to its budget (default asha)")
    p.add_argument("--score-selection", choices=list(SCORE_SELECTIONS), default="best",
                   help="best: judge each trial by its best score from one forward pass (fan-out); fixed: by the "
                        "score it sampled. Seed baselines always keep their own score (default best)")
    p.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                   help="clean: val TPR at TNR >= target; worst_of_shift: the lower of that and the same on "
                        "nuisance-perturbed val crops; site: val TPR at the threshold the site rule fixes on the "
                        f"site pool (default: {DEFAULT_OBJECTIVE_WITH_SITE} with a site pool, else {DEFAULT_OBJECTIVE})")
    add_site_args(p)
    p.add_argument("--warm-start", default=None, metavar="EXPERIMENT[,EXPERIMENT...]",
                   help="seed the study with the finished trials of these experiments' sweeps (default: earlier "
                        "sweeps of this space on the same dataset content in this tracking store)")
    p.add_argument("--no-warm-start", action="store_true", help="start the study empty")
    p.add_argument("--no-references", action="store_true", help="do not score the PCA and kNN reference detectors")
    p.add_argument("--keep-checkpoints", type=positive_int, default=None, metavar="N",
                   help="keep the weights (Ray checkpoint, MLflow model.pt) of the N best searched trials only; "
                        "seed baselines keep theirs (default: keep all)")
    p.add_argument("--max-failures", type=int, default=3,
                   help="retries of a failed trial (a lost node, an error), each from its last checkpoint; "
                        "-1 = unlimited (default 3)")


def unit_fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def risk(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def add_site_args(p: argparse.ArgumentParser, folder_help: str | None = None) -> None:
    p.add_argument("--site", type=Path, default=None,
                   help=folder_help or "site pool: unlabelled crops from where the detector will run (default: "
                                       "DATA/site/ when it exists)")
    p.add_argument("--site-max-spill-fraction", type=unit_fraction, default=None,
                   help="stated upper bound on the share of spills in the site pool (default 0.05)")
    p.add_argument("--site-delta", type=risk, default=None,
                   help="risk that the site threshold breaks its TNR promise (default 0.05)")
    p.add_argument("--site-known-spills", type=Path, default=None, metavar="FILE",
                   help="names of site crops a review found to be spills, one per line: they are left out of the "
                        "pool and the spill bound shrinks by as many (promote writes the crops to review)")


def add_store_args(p: argparse.ArgumentParser, experiment_required: bool = True) -> None:
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite mlruns/mlflow.db)")
    if experiment_required:
        p.add_argument("--experiment", required=True, help="the sweep's experiment name (e.g. proliv-quick)")
        p.add_argument("--parent", default=None, help="a sweep's parent run id (default: the latest sweep)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    search = sub.add_parser("search", help="run a sweep (the default command)",
                            description="Run a Ray Tune + Optuna + ASHA sweep tracked in MLflow.")
    add_search_args(search)
    make = sub.add_parser("make-data", help="write the procedural proliv-like dataset (or the digits set)",
                          description="Write the embedded default dataset in the real folder layout; with --kind "
                                      "digits, the real handwritten digits of scikit-learn in that layout.")
    make.add_argument("--out", type=Path, required=True, help="output folder")
    make.add_argument("--kind", choices=["proliv", "digits"], default="proliv",
                      help="proliv: the procedural default; digits: sklearn's scans, 0-7 normal, 8-9 spills")
    make.add_argument("--scale", type=float, default=1.0, help="multiply the real counts (default 1)")
    make.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    make.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")
    sub.add_parser("list-models", help="print the registered autoencoder variants",
                   description="Print every registered variant with its seed and tunable parameters.")
    analyze = sub.add_parser("analyze", help="report a sweep: leaderboard, parameter importance, plots",
                             description="Load a sweep from MLflow, print its report, and log report.md and the "
                                         "PNGs to the sweep's parent run under analysis/.")
    add_store_args(analyze)
    analyze.add_argument("--top", type=positive_int, default=10, help="trials in the leaderboard (default 10)")
    analyze.add_argument("--importance", choices=["ped_anova", "fanova"], default="ped_anova",
                         help="Optuna importance evaluator (default ped_anova)")
    promote = sub.add_parser("promote", help="evaluate the best trial once on test and make it the champion",
                             description="Fix the threshold on validation, evaluate once on test beside the seed "
                                         "baselines, register the model and set the alias 'champion'.")
    add_store_args(promote)
    promote.add_argument("--trial", default=None, help="trial id, run id, or enqueued name (seed000, start:knn5) to promote (default: the best)")
    promote.add_argument("--retrain", action="store_true",
                         help="retrain the config with full passes over the train split first, once per seed")
    promote.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds for --retrain (default 0 1 2)")
    promote.add_argument("--force", action="store_true", help="replace a champion with better test figures")
    promote.add_argument("--threshold-policy", choices=POLICY_CHOICES, default="tnr_target",
                         help="how the threshold is fixed on validation (default tnr_target: the sweep's objective, "
                              "TNR >= target on validation normals); the trial's own policy is shown beside it")
    promote.add_argument("--no-references", action="store_true", help="leave the PCA/kNN references out of the table")
    promote.add_argument("--ensemble", type=non_negative_int, default=3, metavar="K",
                         help="also combine the K best trials into one detector (rank-averaged scores), shown beside "
                              "the single champion (default 3; 0: none)")
    promote.add_argument("--ensemble-distinct", action="store_true",
                         help="the ensemble takes the best trial of each of K distinct variants")
    promote.add_argument("--ship", choices=["auto", "single", "ensemble"], default="auto",
                         help="what is registered: auto (default) ships the ensemble only when its validation "
                              "objective is above the single champion's; a --trial or --retrain ships that trial")
    promote.add_argument("--model-name", default="proliv-autoencoder", help="registered model name")
    promote.add_argument("--data", type=Path, default=None, help="dataset folder (default: the sweep's)")
    promote.add_argument("--config-out", type=Path, default=Path("best_config.yaml"),
                         help="where to write the promoted config (default ./best_config.yaml)")
    add_site_args(promote, "fix the shipped threshold on this site pool (default: the sweep's own, if it had one)")
    bench = sub.add_parser("benchmark-search", help="TPE against random sampling at equal wall-clock budget",
                           description="Run K sweeps with TPE and K with random sampling, interleaved, each at the "
                                       "same wall-clock budget with the seed baselines enqueued; print and plot the "
                                       "best-so-far against the baselines and the reference detectors; test the best "
                                       "trial of each; log it all to MLflow.")
    bench.add_argument("--data", type=Path, default=None, help=f"dataset folder (default {DEFAULT_DATA})")
    bench.add_argument("--budget-s", type=non_negative_float, default=None,
                       help="wall-clock seconds per sweep (required unless --summarize)")
    bench.add_argument("--repeats", type=positive_int, default=5, help="sweeps per sampler, seeds 0..K-1 (default 5)")
    bench.add_argument("--space", default="quick", help="search space preset (default quick)")
    bench.add_argument("--samplers", nargs="+", choices=["tpe", "random"], default=["tpe", "random"])
    bench.add_argument("--max-concurrent", type=positive_int, default=2, help="trials at once (default 2)")
    bench.add_argument("--objective", choices=list(OBJECTIVES), default=None,
                       help="each sweep's objective (default: the search command's default)")
    bench.add_argument("--prefix", default="benchmark-search", help="experiment name prefix (default benchmark-search)")
    bench.add_argument("--tracking-uri", default=DEFAULT_TRACKING, help="MLflow tracking URI")
    bench.add_argument("--storage-path", default=str(DEFAULT_STORAGE), help="Ray results folder")
    bench.add_argument("--log-dir", default=str(REPO / "logs" / "benchmark-search"), help="each sweep's output")
    bench.add_argument("--plot-out", type=Path, default=None, help="also write the anytime plot here")
    bench.add_argument("--summarize", default=None, metavar="PREFIX",
                       help="run no sweep: rebuild the table from the finished sweeps whose experiment name starts "
                            "with PREFIX (e.g. benchmark-search-20261125-181433)")
    thr = sub.add_parser("benchmark", help="seconds per training epoch: the project's, a bare loop's, a seed-style "
                                           "pipeline's",
                         description="Time one training epoch three ways, side by side in one process, for every "
                                     "variant at its defaults and each batch size: this harness's epoch, a bare loop on "
                                     "a ready tensor, and a seed-style PIL/torchvision/DataLoader pipeline. On the CPU, "
                                     "and on the GPU with trials per hour at fractional --gpus-per-trial when CUDA is "
                                     "present. Prints the ratios and writes a CSV.")
    thr.add_argument("--data", type=Path, default=None, help=f"dataset folder (default {DEFAULT_DATA})")
    thr.add_argument("--out", type=Path, required=True, help="CSV of seconds per epoch (and OUT-options/-gpu CSVs)")
    thr.add_argument("--variants", nargs="+", default=None, help="variants to time (default: every gradient-trained one)")
    thr.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[16, 128], help="default 16 128")
    thr.add_argument("--crops", type=positive_int, default=2000, help="train crops per epoch (default 2000)")
    thr.add_argument("--repeats", type=positive_int, default=3, help="timed epochs of each kind, interleaved (default 3)")
    thr.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers of the seed pipeline (default 0)")
    thr.add_argument("--sweep-samples", type=positive_int, default=16,
                     help="trials of each short GPU sweep (fractional packing; CUDA only; default 16)")
    knn = sub.add_parser("benchmark-knn", help="the knn variant's bank: memory, fit and query time by train size",
                         description="Fit the knn variant (knn5's settings, and with a 64-dim PCA projection) on "
                                     "random crops at each train size; print the bank's MB, the fit's seconds and the "
                                     "seconds to score the queries by exact search, with ratios to the smallest size.")
    knn.add_argument("--sizes", type=positive_int, nargs="+", default=[10_000, 100_000], help="default 10000 100000")
    knn.add_argument("--queries", type=positive_int, default=1000, help="crops scored per size (default 1000)")
    knn.add_argument("--out", type=Path, default=None, help="also write the table as CSV")
    server = sub.add_parser("server", help="the tracking server for a cluster: mlflow server on PostgreSQL, basic auth",
                            description="Upgrade the store's schema, size its connection pool from the sweep's "
                                        "concurrency, write the basic-auth config, print the client's export lines, "
                                        "then run `mlflow server` (artifacts proxied) in the foreground.")
    server.add_argument("--backend-store-uri", required=True,
                        help="postgresql://USER:PASSWORD@HOST:PORT/DB (or sqlite:///PATH on one machine)")
    server.add_argument("--artifacts-destination", required=True, help="folder or s3:// URI the server stores artifacts in")
    server.add_argument("--state-dir", type=Path, default=Path("mlflow-server"),
                        help="the auth config and generated secrets, kept private (default ./mlflow-server)")
    server.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1; 0.0.0.0 for a cluster)")
    server.add_argument("--port", type=positive_int, default=5000, help="default 5000")
    server.add_argument("--workers", type=positive_int, default=2, help="server worker processes (default 2)")
    server.add_argument("--concurrent-trials", type=positive_int, default=8,
                        help="trials that write at once (a sweep's --max-concurrent, summed over sweeps): sizes the "
                             "database connection pool (default 8)")
    server.add_argument("--allowed-hosts", default=None,
                        help="Host headers the server accepts, comma-separated (mlflow server's own default otherwise)")
    track = sub.add_parser("benchmark-tracking", help="load test of the tracking path: N writers as real trials",
                           description="N concurrent writer processes, each logging what a trial logs (params, "
                                       "about 30 metrics and one small artifact per epoch, a status change); prints "
                                       "writes per second, p50/p99 latency, errors, and whether every metric arrived "
                                       "exactly once (read back and counted).")
    track.add_argument("--tracking-uri", default=DEFAULT_TRACKING, help="MLflow tracking URI (a server: http://...)")
    track.add_argument("--writers", type=positive_int, default=8, help="concurrent writer processes (default 8)")
    track.add_argument("--epochs", type=positive_int, default=5, help="epochs each writer logs (default 5)")
    track.add_argument("--timeout-s", type=positive_int, default=900, help="give up on writers after this (default 900)")
    track.add_argument("--out", type=Path, default=None, help="also append the row to this CSV")
    predict = sub.add_parser("predict", help="score a folder of crops with a registered model",
                             description="Score every crop in a folder; writes name, score, label (1 = spill).")
    add_store_args(predict, experiment_required=False)
    predict.add_argument("--model", default="champion", help="alias or version number (default champion)")
    predict.add_argument("--model-name", default="proliv-autoencoder", help="registered model name")
    predict.add_argument("--images", type=Path, required=True, help="folder of .jpg/.jpeg/.png crops")
    predict.add_argument("--out", type=Path, required=True, help="CSV to write")
    predict.add_argument("--threshold-policy", choices=POLICY_CHOICES, default=None,
                         help="refix the threshold on the model's validation scores with this policy "
                              "(default: the registered threshold, fixed at promotion)")
    add_site_args(predict, "recalibrate the threshold by the site rule on this folder of unlabelled crops from the "
                           "conditions of --images (a new window of the site)")
    predict.add_argument("--alarm-level", type=risk, default=None,
                         help="p-value below which the drift alarm fires (default 0.01)")
    return parser


# ----------------------------------------------------------------- validation

def validate_search_args(args) -> dict:
    """Everything that can be wrong with the input, checked before Ray starts."""
    import yaml

    from anomaly_ae.config import ConfigError, validate_config
    from search_spaces import SPACES

    if args.space not in SPACES:
        raise UsageError(f"--space: unknown space {args.space!r}; valid: {', '.join(sorted(SPACES))}")
    if not 0.5 <= args.tnr_target <= 1.0:
        raise UsageError(f"--tnr-target: {args.tnr_target} is outside [0.5, 1]")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 0:
        raise UsageError(f"--steps-per-epoch: must be >= 0, got {args.steps_per_epoch}")
    if args.samples_per_epoch is not None and args.samples_per_epoch < 0:
        raise UsageError(f"--samples-per-epoch: must be >= 0, got {args.samples_per_epoch}")
    if args.steps_per_epoch and args.samples_per_epoch:
        raise UsageError("--steps-per-epoch and --samples-per-epoch both set an epoch's length; give one")
    if args.address and not (args.address == "auto" or args.address.startswith("ray://") or ":" in args.address):
        raise UsageError(f"--address: expected auto, HOST:PORT or ray://HOST:PORT, got {args.address!r}")
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction: must be in (0, 1), got {args.val_fraction}")
    if not 0.0 < args.val_spill_fraction <= 1.0:
        raise UsageError(f"--val-spill-fraction: must be in (0, 1], got {args.val_spill_fraction}")
    if args.gpus_per_trial > 0 and args.gpus_per_trial > 1 and args.gpus_per_trial != int(args.gpus_per_trial):
        raise UsageError(f"--gpus-per-trial: fractions must be < 1, got {args.gpus_per_trial}")
    if args.max_failures < -1:
        raise UsageError(f"--max-failures: must be >= -1 (-1 = unlimited), got {args.max_failures}")
    if args.warm_start and args.no_warm_start:
        raise UsageError("--warm-start and --no-warm-start contradict each other; give one")
    if args.resume and (args.warm_start or args.sampler != "tpe" or args.optuna_storage):
        raise UsageError("--resume continues the sweep's own searcher and study; --warm-start, --sampler and "
                         "--optuna-storage do not apply")
    if args.gpus_per_trial > 0 and not args.address:
        import torch

        # A local Ray sees only this machine's GPUs; without one, GPU trials would wait forever.
        if torch.cuda.device_count() == 0:
            raise UsageError(f"--gpus-per-trial {args.gpus_per_trial}: this machine has no CUDA GPU; "
                             "use 0, or --address to run on a cluster that has GPUs")
    config = None
    if args.config is not None:
        if not args.config.is_file():
            raise UsageError(f"--config: file not found: {args.config}")
        try:
            raw = yaml.safe_load(args.config.read_text())
        except yaml.YAMLError as exc:
            raise UsageError(f"--config: {args.config} is not valid YAML: {exc}") from exc
        try:
            config = validate_config(raw)
        except ConfigError as exc:
            raise UsageError(f"--config {args.config}: {exc}") from exc
    study_storage = None
    if args.optuna_storage:
        from anomaly_ae.study_storage import StudyStorageError, open_study_storage
        try:
            study_storage = open_study_storage(args.optuna_storage)
        except StudyStorageError as exc:
            raise UsageError(str(exc)) from exc
    return {"config": config, "study_storage": study_storage}


# ----------------------------------------------------------------- commands

def cmd_list_models(args) -> int:
    from anomaly_ae.models import list_models, model_spec

    for name in list_models():
        spec = model_spec(name)
        kind = "VAE" if spec.variational else "closed-form" if spec.closed_form else "AE"
        params = ", ".join(f"{k}={v!r}" for k, v in spec.params.items())
        print(f"{name:<22} seed {spec.seed:<9} {kind:<11} {params}")
    return 0


def cmd_make_data(args) -> int:
    from anomaly_ae.data import make_dataset

    tick = time.perf_counter()
    if args.kind == "digits":
        from anomaly_ae.data.digits import make_digits_dataset

        counts = make_digits_dataset(args.out, seed=args.seed, overwrite=args.overwrite)
    else:
        counts = make_dataset(args.out, scale=args.scale, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.out}: {counts} in {time.perf_counter() - tick:.1f}s")
    return 0


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_perceptual() -> bool:
    from anomaly_ae.losses import PerceptualWeightsMissing, find_perceptual_weights

    try:
        find_perceptual_weights("alexnet")
        return True
    except PerceptualWeightsMissing:
        print("note: no pretrained AlexNet weights on disk, so the perceptual loss/score and the seed004 "
              "baseline are left out (seed004_denoise runs instead); see README, 'Seed baselines'.", flush=True)
        return False


def resume_command(args, experiment: str) -> str:
    parts = ["python run_search.py search --resume", f"--experiment {shlex.quote(experiment)}"]
    if args.storage_path != str(DEFAULT_STORAGE):
        parts.append(f"--storage-path {shlex.quote(str(args.storage_path))}")
    if args.tracking_uri != DEFAULT_TRACKING:
        parts.append(f"--tracking-uri {shlex.quote(args.tracking_uri)}")
    if args.address:
        parts.append(f"--address {shlex.quote(args.address)}")
    return " ".join(parts)


def new_sweep(args, experiment: str, checked: dict):
    """Load the data, enqueue the baselines, score the references, create the parent run."""
    from anomaly_ae.data import load_proliv, make_dataset, make_splits

    data_dir = args.data
    if data_dir is None:
        data_dir = DEFAULT_DATA
        if not (data_dir / "train").is_dir():
            print(f"generating the default dataset in {data_dir} (scale {args.scale}) ...", flush=True)
            print(f"  {make_dataset(data_dir, scale=args.scale, seed=0, overwrite=True)}", flush=True)
    tick = time.perf_counter()
    data = load_proliv(data_dir, site=args.site, site_max_spill_fraction=site_bound(args),
                       site_delta=site_risk(args), site_known_spills=args.site_known_spills)
    splits = make_splits(data, args.val_fraction, args.val_spill_fraction, seed=0)
    site_note = f", {len(data.site)} site crops from {data.site.root}" if data.site is not None else ", no site pool"
    print(f"data: {data_dir} ({len(splits.train)} train, {len(splits.val_normal)} val normals, "
          f"{len(splits.val_spill)} val spills{site_note}; decoded/cached in {time.perf_counter() - tick:.1f}s)",
          flush=True)
    resolve_objective(args, data.site)
    perceptual = find_perceptual()
    points = []
    if checked["config"] is not None:
        from search_spaces import baseline_point
        points.append(baseline_point(checked["config"], perceptual))
    if not args.no_baselines and args.space != "seeds":
        from search_spaces import baseline_points
        points += baseline_points(perceptual)
    tags = {
        "space": args.space, "dataset_path": str(Path(data_dir).resolve()), "dataset_hash": data.content_hash,
        "git_commit": git_commit(), "command": " ".join(shlex.quote(a) for a in sys.argv),
        "num_samples": str(args.num_samples), "perceptual": str(int(perceptual)), "tnr_target": str(args.tnr_target),
        "n_val_normal": str(len(splits.val_normal)), "n_val_spill": str(len(splits.val_spill)),
        "val_normal_fraction": str(args.val_fraction), "val_spill_fraction": str(args.val_spill_fraction),
        "split_seed": "0", "ray_experiment_path": experiment_path_of(args, experiment),
        "objective": args.objective, "score_selection": args.score_selection, "sampler": args.sampler,
        "scheduler": args.scheduler, "seed": str(args.seed), "grace_period": str(args.grace_period),
        "labelled_hash": data.labelled_hash, **(data.site.describe() if data.site is not None else {}),
    }
    warm_trials = gather_warm_start(args, tags, perceptual)
    from anomaly_ae.tracking import SweepRun

    sweep = SweepRun.create(args.tracking_uri, experiment, tags)
    study = None
    if checked["study_storage"] is not None:
        from anomaly_ae.study_storage import StudyStorageError, claim_study_name, sweep_study_name
        from anomaly_ae.tracking_server import redact
        try:
            study = (checked["study_storage"], claim_study_name(checked["study_storage"],
                                                                 sweep_study_name(experiment, sweep.run_id)))
        except StudyStorageError as exc:
            sweep.end("FAILED")
            raise UsageError(str(exc)) from exc
        sweep.client.set_tag(sweep.run_id, "optuna_study", study[1])
        sweep.client.set_tag(sweep.run_id, "optuna_storage", redact(args.optuna_storage))
        print(f"optuna study {study[1]!r} in {redact(args.optuna_storage)} (optuna-dashboard "
              f"{redact(args.optuna_storage)} shows it)", flush=True)
    references = {}
    if not args.no_references:
        references = score_references(sweep, splits, args)
    from trainables.sweep import run_sweep

    return sweep, lambda: run_sweep(args, splits, sweep.tracking, points, perceptual, warm_trials, references, study)


def site_bound(args) -> float:
    return 0.05 if args.site_max_spill_fraction is None else args.site_max_spill_fraction


def site_risk(args) -> float:
    return 0.05 if args.site_delta is None else args.site_delta


def resolve_objective(args, site) -> None:
    """The objective, once the data shows whether there is a site pool; the site objective needs one,
    and one large enough for the site rule."""
    from anomaly_ae.thresholds import min_site_pool_size

    if args.objective is None:
        args.objective = DEFAULT_OBJECTIVE_WITH_SITE if site is not None else DEFAULT_OBJECTIVE
    if site is None:
        if args.objective == "site":
            raise UsageError("--objective site: there is no site pool (give --site DIR, or put crops in DATA/site/)")
        return
    need = min_site_pool_size(args.tnr_target, site.max_spill_fraction, site.delta)
    if len(site) < need:
        raise UsageError(f"--site: {site.root} holds {len(site)} crops; the site threshold needs at least {need} "
                         f"for TNR >= {args.tnr_target} with probability {1 - site.delta:g} at a spill bound of "
                         f"{site.max_spill_fraction:g}")


def score_references(sweep, splits, args) -> dict[str, float]:
    """Fit the reference detectors and log each as a run under the sweep's parent; returns their objectives."""
    from anomaly_ae.references import fit_references

    refs = fit_references(splits, args.tnr_target, args.objective)
    for ref in refs:
        metrics = {"objective": ref.objective, "val_auroc": ref.metrics["auroc"], "val_pauroc": ref.metrics["pauroc"],
                   "tpr_at_tnr": ref.metrics["tpr_at_tnr"], "threshold": ref.metrics["threshold"],
                   "fit_seconds": ref.fit_seconds}
        if "tpr_at_tnr_shift" in ref.metrics:
            metrics["objective_shift"] = ref.metrics["tpr_at_tnr_shift"]
        if "tpr_at_site" in ref.metrics:
            metrics.update(objective_site=ref.metrics["tpr_at_site"], site_margin=ref.metrics["site_margin"])
        metrics.update(objective_clean=ref.metrics["tpr_at_tnr"], val_margin=ref.metrics["val_margin"])
        sweep.log_reference(ref.name, ref.description, metrics)
    print("references: " + ", ".join(f"{r.name} {r.objective:.3f} ({r.fit_seconds:.1f}s)" for r in refs), flush=True)
    return {r.name: r.objective for r in refs}


def gather_warm_start(args, tags: dict, perceptual: bool):
    """Finished trials of earlier sweeps that fit this sweep's space, as Optuna trials."""
    if args.no_warm_start:
        return []
    from mlflow.tracking import MlflowClient

    from analysis.sweep_runs import earlier_observations
    from search_spaces import frozen_trials, get_space

    experiments = args.warm_start.split(",") if args.warm_start else None
    observations, sweeps = earlier_observations(MlflowClient(args.tracking_uri), tags, experiments)
    if not observations:
        if experiments:
            print(f"warm start: no finished trials in {', '.join(experiments)} on this dataset", flush=True)
        return []
    space = get_space(args.space, perceptual, args.epochs, args.steps_per_epoch, args.samples_per_epoch,
                      args.score_selection, args.objective)
    trials, skipped = frozen_trials(space, observations)
    print(f"warm start: {len(trials)} trials from {sweeps} earlier sweep(s)"
          + (f"; {skipped} skipped (no longer fit the space)" if skipped else ""), flush=True)
    return trials


def experiment_path_of(args, experiment: str) -> str:
    return f"{str(args.storage_path).rstrip('/')}/{experiment}"


def resumed_sweep(args, experiment: str):
    """Reopen the interrupted sweep's parent run; its dataset must be unchanged."""
    from mlflow.tracking import MlflowClient

    from ray import tune

    from analysis.sweep_runs import find_parent_run, load_sweep_data
    from anomaly_ae.tracking import SweepRun
    from trainables.sweep import resume_sweep

    if not tune.Tuner.can_restore(experiment_path_of(args, experiment)):
        raise UsageError(f"--resume: no Ray experiment state at {experiment_path_of(args, experiment)} "
                         f"(check --storage-path and --experiment)")
    client = MlflowClient(args.tracking_uri)
    parent = find_parent_run(client, experiment)
    args.space = parent.data.tags.get("space", args.space)
    args.num_samples = int(parent.data.tags.get("num_samples", args.num_samples))
    args.objective = parent.data.tags.get("objective", DEFAULT_OBJECTIVE)
    _, splits = load_sweep_data(parent, args.data)
    # Runs the interruption cut off are marked KILLED; a resumed trial reopens its own run.
    sweep, closed = SweepRun.reopen(args.tracking_uri, parent)
    study = parent.data.tags.get("optuna_study")
    print(f"resuming sweep {experiment!r} (parent run {parent.info.run_id}); {closed} interrupted run(s) "
          f"marked KILLED" + (f"; optuna study {study!r} in {parent.data.tags['optuna_storage']} continues"
                              if study else ""), flush=True)
    return sweep, lambda: resume_sweep(args, splits, sweep.tracking, experiment_path_of(args, experiment))


LIBRARY_LOGGERS = ("ray", "mlflow", "optuna", "alembic")


def route_library_logs(path: Path) -> Path:
    """Send Ray's, MLflow's, Optuna's and Alembic's log lines to ``path`` instead of the terminal.

    Their notices (token auth, database creation, "new study") are for debugging, not progress.
    """
    import logging

    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # On the root logger: ray.init() empties the "ray" logger's own handlers.
    logging.getLogger().addHandler(handler)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(logging.INFO)
    return path


def cmd_search(args) -> int:
    checked = validate_search_args(args)
    experiment = args.experiment or f"proliv-{args.space}"
    # Each library installs its own handler when first imported; import them before rerouting.
    import mlflow  # noqa: F401
    import optuna
    import ray  # noqa: F401

    optuna.logging.disable_default_handler()
    log_path = route_library_logs(REPO / "logs" / f"search-{experiment}.log")
    sweep, fit = resumed_sweep(args, experiment) if args.resume else new_sweep(args, experiment, checked)
    from trainables.sweep import was_interrupted

    try:
        results = fit()
    except BaseException as exc:
        sweep.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    if was_interrupted(results, args.num_samples, args.time_budget_s):
        closed = sweep.end("KILLED")
        print(f"\ninterrupted: {len(results)} trial(s) recorded, {closed} run(s) marked KILLED. Resume with:\n"
              f"  {resume_command(args, experiment)}", flush=True)
        return 130

    from analysis.leaderboard import format_leaderboard, leaderboard_rows, results_frame, latent_cost_line, search_verdict, summary_metrics
    from analysis.sweep_runs import reference_frame
    frame = results_frame(results)
    references = reference_frame(sweep.client, sweep.client.get_run(sweep.run_id))
    sweep.summarise(leaderboard_rows(frame, len(frame), references), summary_metrics(frame))
    # Trials the time budget cut off ran as told: they end FINISHED, like those ASHA stopped.
    sweep.end("FINISHED", "FINISHED", "time_budget" if args.time_budget_s else "sweep_end")
    print()
    print(format_leaderboard(frame, references=references))
    print(search_verdict(frame, references))
    if latent_cost_line(frame):
        print(latent_cost_line(frame))
    print(f"\nMLflow experiment {experiment!r}, parent run {sweep.run_id}")
    # This sweep's runs, best objective first, with the telling columns (a view kept in the experiment).
    runs_page = sweep.runs_page
    if args.tracking_uri.startswith(("http://", "https://")):
        print(f"the sweep's runs:  {args.tracking_uri.rstrip('/')}/{runs_page}")
    else:
        print(f"library logs (Ray, MLflow, Optuna): {log_path}")
        print(f"open the UI:  mlflow ui --backend-store-uri {args.tracking_uri}")
        print(f"  then the sweep's runs:  http://127.0.0.1:5000/{runs_page}")
    return 0


def cmd_analyze(args) -> int:
    from mlflow.tracking import MlflowClient

    from analysis.report import REPORT_DIR, analyze

    report = analyze(MlflowClient(args.tracking_uri), args.experiment, args.parent, args.top, args.importance)
    print(report.markdown)
    print(f"logged {REPORT_DIR}/report.md and {len(report.figures)} PNGs to parent run {report.parent_run_id}")
    return 0


def cmd_promote(args) -> int:
    from mlflow.tracking import MlflowClient

    from analysis.promote import PromotionRefused, format_comparison, promote

    if (args.ensemble_distinct or args.ship == "ensemble") and not args.ensemble:
        print("--ensemble-distinct and --ship ensemble need --ensemble K > 0", file=sys.stderr)
        return 2
    try:
        result = promote(MlflowClient(args.tracking_uri), args.tracking_uri, args.experiment, args.trial,
                         args.seeds if args.retrain else [], args.force, args.model_name, args.data, args.config_out,
                         args.parent, args.threshold_policy, not args.no_references, site_dir=args.site,
                         site_max_spill_fraction=args.site_max_spill_fraction, site_delta=args.site_delta,
                         site_known_spills=args.site_known_spills, ensemble=args.ensemble,
                         ensemble_distinct=args.ensemble_distinct, ship=args.ship)
    except PromotionRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 3
    from analysis.promote import operating_line

    p = result.promoted
    print(f"promoted trial {p.trial_id} ({p.variant}, score {p.score}); test figures beside the "
          f"sweep's seed baselines and the reference detectors: test_* at the threshold fixed on validation with "
          f"{args.threshold_policy}, site_* at the threshold the site rule fixes on the site pool (own_*: at each "
          f"one's own stated policy; oracle_tpr_at_tnr: the TPR a threshold fixed on test itself would give at the "
          f"TNR target, for reference only):")
    print(format_comparison(result.table))
    if p.retrain_spread:
        s = p.retrain_spread
        print(f"retrain spread over seeds {s['seeds']}: test TPR {s['test_tpr_mean']:.4f} ± {s['test_tpr_std']:.4f}, "
              f"TNR {s['test_tnr_mean']:.4f} ± {s['test_tnr_std']:.4f}")
    print(f"  validation threshold: {operating_line(p.report)}")
    if "site" in p.report:
        print(f"  site threshold:       {operating_line(p.report['site'])}  <- shipped")
    if result.review_path is not None:
        print(f"wrote {result.review_path}: the site crops above the shipped threshold, highest first. Spills among "
              f"them use false-alarm slots the rule must assume are normals'; list the ones a review confirms in a "
              f"file and promote again with --site-known-spills FILE")
    print(f"registered {args.model_name} version {result.version.version} with alias 'champion' "
          f"(models:/{args.model_name}@champion)")
    print(f"wrote {result.config_path} (reproduce with: python run_search.py search --config {result.config_path})")
    return 0


def cmd_predict(args) -> int:
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from anomaly_ae.drift import drift_lines
    from anomaly_ae.serving import score_folder
    from anomaly_ae.tracking import log_prediction

    if args.site is not None and args.threshold_policy:
        raise UsageError("--site and --threshold-policy both refix the threshold; give one")
    if args.site_known_spills is not None and args.site is None:
        raise UsageError("--site-known-spills: names crops of a --site window; give --site DIR too")
    ref = f"models:/{args.model_name}/{args.model}" if args.model.isdigit() else f"models:/{args.model_name}@{args.model}"
    mlflow.set_tracking_uri(args.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(ref)
    except mlflow.exceptions.MlflowException as exc:
        raise UsageError(f"--model: cannot load {ref} from {args.tracking_uri}: {exc.message}") from exc
    detector_model = model.unwrap_python_model()
    if args.threshold_policy:
        detector_model.use_policy(args.threshold_policy)
    if args.site is not None:
        from anomaly_ae.data import load_site_pool

        pool = load_site_pool(args.site, tuple(detector_model.detector["decode_size"]), site_bound(args),
                              site_risk(args), args.site_known_spills)
        detector_model.calibrate_on_site(pool)
        print(f"recalibrated on {len(pool)} site crops from {args.site}: threshold "
              f"{detector_model.detector['threshold']:.6g} (TNR >= {detector_model.detector['tnr_target']} "
              f"with probability {1 - pool.delta:g}, spill bound {pool.max_spill_fraction:g})")
    detector = detector_model.detector
    frame = score_folder(model, args.images, tuple(detector["decode_size"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(f"wrote {args.out}: {len(frame)} crops, {int(frame['label'].sum())} flagged as spills "
          f"(score {detector['score']} > threshold {detector['threshold']:.6g}, policy {detector['policy']})")
    check = detector_model.drift(frame["score"].to_numpy(), args.site_max_spill_fraction, args.alarm_level)
    for line in drift_lines(check):
        print(line, file=sys.stderr if check["alarm"] else sys.stdout)
    client = MlflowClient(args.tracking_uri)
    version = (client.get_model_version(args.model_name, args.model) if args.model.isdigit()
               else client.get_model_version_by_alias(args.model_name, args.model))
    log_prediction(args.tracking_uri, version, f"predict·{args.images.name}·{time.strftime('%Y-%m-%d %H:%M')}",
                   params={"images": str(args.images.resolve()), "threshold": detector["threshold"],
                           "policy": detector["policy"], "calibration": detector["calibration"]["source"]},
                   metrics={k: float(v) for k, v in check.items()},
                   tags={"drift_alarm": int(check["alarm"]), "score_shift": int(check["shifted"])})
    return 0


def cmd_benchmark_search(args) -> int:
    from analysis.benchmark_search import benchmark_search, summarize, summary_lines

    if args.summarize:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(args.tracking_uri)
        names = sorted((e.name for e in client.search_experiments() if e.name.startswith(args.summarize)),
                       key=lambda n: (int(n.rsplit("-", 1)[1]), n))
        if not names:
            raise UsageError(f"--summarize: no experiment starts with {args.summarize!r} in {args.tracking_uri}")
        table = summarize(client, args, names, args.summarize.rsplit("-", 1)[-1])
        return print_benchmark(table, summary_lines)
    if args.budget_s is None:
        raise UsageError("--budget-s: give the wall-clock seconds per sweep (or --summarize PREFIX)")
    if args.data is None:
        args.data = DEFAULT_DATA
        if not (args.data / "train").is_dir():
            from anomaly_ae.data import make_dataset
            make_dataset(args.data, seed=0, overwrite=True)
    if not (Path(args.data) / "train").is_dir():
        raise UsageError(f"--data: no train/ folder in {args.data}")
    print(f"benchmark-search: {args.repeats} x {'/'.join(args.samplers)} sweeps of {args.budget_s:.0f}s on "
          f"{args.data} (space {args.space}); each sweep's output in {args.log_dir}", flush=True)
    return print_benchmark(benchmark_search(args), summary_lines)


def cmd_server(args) -> int:
    from anomaly_ae.tracking_server import ServerConfigError, ServerSpec, client_exports, prepare_server, redact

    spec = ServerSpec(args.backend_store_uri, args.artifacts_destination, args.state_dir, args.host, args.port,
                      args.workers, args.concurrent_trials, args.allowed_hosts)
    try:
        command, env, pool, password = prepare_server(spec)
    except ServerConfigError as exc:
        raise UsageError(str(exc)) from exc
    print(f"schema upgraded: {redact(spec.backend_store_uri)}")
    print(pool.line())
    print(f"basic auth: admin user 'admin', config {spec.state_dir / 'basic_auth.ini'}; artifacts proxied to "
          f"{spec.artifacts_destination}")
    print("on every client (search, promote, predict; the trials get them through Ray):")
    print("\n".join(f"  {line}" for line in client_exports(spec, password)))
    print(f"starting: mlflow server on {spec.url} (Ctrl-C stops it)", flush=True)
    os.execve(command[0], command, env)  # the server takes this process: signals reach it directly


def cmd_benchmark_tracking(args) -> int:
    from analysis.benchmark_tracking import benchmark_tracking, summary_table
    from anomaly_ae.tracking_server import redact

    print(f"benchmark-tracking: {args.writers} writers x {args.epochs} epochs against {redact(args.tracking_uri)}",
          flush=True)
    row = benchmark_tracking(args.tracking_uri, args.writers, args.epochs, args.timeout_s)
    table = summary_table(row)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    for error in row["first_errors"]:
        print(f"  error: {error}", file=sys.stderr)
    if args.out is not None:
        table.assign(tracking_uri=redact(args.tracking_uri)).to_csv(args.out, mode="a", index=False,
                                                                     header=not args.out.exists())
    return 0 if row["errors"] == 0 and row["exactly_once"] else 1


def cmd_benchmark_knn(args) -> int:
    from analysis.benchmark_knn import benchmark_knn

    table = benchmark_knn(args.sizes, args.queries)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.out is not None:
        table.to_csv(args.out, index=False)
    return 0


def cmd_benchmark(args) -> int:
    from anomaly_ae.models import list_models, model_spec

    unknown = sorted(set(args.variants or []) - set(list_models()))
    if unknown:
        raise UsageError(f"--variants: unknown {', '.join(unknown)}; valid: {', '.join(list_models())}")
    closed = [v for v in args.variants or [] if model_spec(v).closed_form]
    if closed:
        raise UsageError(f"--variants: {', '.join(closed)} is fitted in closed form; there is no epoch to time")
    data = args.data or DEFAULT_DATA
    if args.data is None and not (data / "train").is_dir():
        from anomaly_ae.data import make_dataset
        make_dataset(data, seed=0, overwrite=True)
    if not (Path(data) / "train").is_dir():
        raise UsageError(f"--data: no train/ folder in {data}")
    from analysis.benchmark_throughput import benchmark, summary_lines

    epochs, options, packing = benchmark(data, args.variants, args.batch_sizes, args.crops, args.repeats,
                                         args.loader_workers, args.sweep_samples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    epochs.to_csv(args.out, index=False)
    options_path = args.out.with_name(args.out.stem + "-options.csv")
    options.to_csv(options_path, index=False)
    print()
    print(epochs.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    print(options.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\n".join(summary_lines(epochs)))
    written = [str(args.out), str(options_path)]
    if not packing.empty:
        gpu_path = args.out.with_name(args.out.stem + "-gpu.csv")
        packing.to_csv(gpu_path, index=False)
        print(packing.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        written.append(str(gpu_path))
    else:
        print("no CUDA device: GPU epochs and fractional-GPU packing not measured")
    print(f"wrote {', '.join(written)}")
    return 0


def print_benchmark(table, summary_lines) -> int:
    if table.empty:
        print("error: no sweep finished", file=sys.stderr)
        return 1
    cols = ["sampler", "seed", "trials", "best_searched", "best_variant", "best_score", "best_baseline",
            "baseline_bar", "pca16", "knn5", "beat_all", "selection_bias_mean", "test_tpr", "test_tnr", "test_auroc",
            "val_threshold_test_tpr", "val_threshold_test_tnr"]
    print(table[[c for c in cols if c in table]].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("\n".join(summary_lines(table)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["search", *argv]
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, FileExistsError, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        from analysis.sweep_runs import SweepNotFound
        from anomaly_ae.checkpoints import UntrustedCheckpoint
        from anomaly_ae.data import DatasetError
        from anomaly_ae.thresholds import SitePoolTooSmall
        if isinstance(exc, (DatasetError, SweepNotFound, UntrustedCheckpoint, SitePoolTooSmall)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


COMMANDS = {"search": cmd_search, "make-data": cmd_make_data, "list-models": cmd_list_models,
            "analyze": cmd_analyze, "promote": cmd_promote, "predict": cmd_predict,
            "benchmark-search": cmd_benchmark_search, "benchmark": cmd_benchmark, "benchmark-knn": cmd_benchmark_knn,
            "server": cmd_server, "benchmark-tracking": cmd_benchmark_tracking}


if __name__ == "__main__":
    sys.exit(main())
