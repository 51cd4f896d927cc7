"""The command line of run_search.py: every subcommand and its options. The search command's options
come from ``SweepSpec``'s fields."""
from __future__ import annotations

import argparse
from pathlib import Path

from anomaly_ae.data.shifted import KINDS as SHIFTED_KINDS
from anomaly_ae.data.textures import TEXTURES
from anomaly_ae.stats.selection import OBJECTIVES
from anomaly_ae.stats.thresholds import DEFAULT_SITE_CALIBRATION, SITE_CALIBRATIONS
from sweeps.spec import (
    DEFAULT_DATA, DEFAULT_STORAGE, DEFAULT_TRACKING, REPO, SweepSpec, add_site_arguments, non_negative_float,
    non_negative_int, positive_int, risk,
)

DESCRIPTION = """Hyperparameter search for autoencoder spill detection.

    python run_search.py                       # default: make data if absent, quick CPU sweep, leaderboard
    python run_search.py search --data DIR --space quick|full|seeds [...]
    python run_search.py analyze --experiment NAME      # leaderboard, importance, plots -> parent run
    python run_search.py promote --experiment NAME [--trial ID] [--retrain] [--force]
    python run_search.py predict --model champion --images DIR --out scores.csv
    python run_search.py server --backend-store-uri postgresql://... --artifacts-destination DIR
    python run_search.py make-data | list-models | calibrate | fidelity
    python run_search.py benchmark-search | benchmark | benchmark-knn | benchmark-tracking | benchmark-objectives |
                         benchmark-families
"""

# The policies of anomaly_ae.stats.thresholds (kept literal: the parser must not import torch).
POLICY_CHOICES = ["tnr_target", "midpoint", "best_f1", "tpr_target", "min_anomaly", "normal_quantile"]
# Those of anomaly_ae.detector.scores and benchmarks.calibrate, literal for the same reason.
SCORE_TYPES = ["mse", "l1", "ssim", "hybrid", "topk", "smooth_max", "centred_max", "elbo", "perceptual", "knn_mean",
               "knn_kth", "latent_knn", "latent_hybrid", "map_max", "map_topk", "mahalanobis"]
CALIBRATION_CONFIGS = ["seed000", "strong", "pca32"]


def add_store_args(p: argparse.ArgumentParser, experiment_required: bool = True) -> None:
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite mlruns/mlflow.db)")
    if experiment_required:
        p.add_argument("--experiment", required=True, help="the sweep's experiment name (e.g. proliv-quick)")
        p.add_argument("--parent", default=None, help="a sweep's parent run id (default: the latest sweep)")


def finished_sweep_options(parser: argparse.ArgumentParser) -> None:
    """What a benchmark over a finished sweep takes: which sweep, where, and where to write its table."""
    parser.add_argument("--experiment", required=True, help="the sweep's MLflow experiment")
    parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING, help="MLflow tracking URI")
    parser.add_argument("--data", type=Path, default=None, help="the sweep's dataset (default: where it ran)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV")


# Old spellings, kept for one release: each is rewritten to its new name with a note on stderr.
DEPRECATED_OPTIONS = {"--seeds": "--retrain-seeds"}


def renamed_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """``argv`` with deprecated option names replaced, and one note per replacement."""
    out, notes = [], []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in DEPRECATED_OPTIONS:
            notes.append(f"note: {name} is deprecated; it is now {DEPRECATED_OPTIONS[name]}")
            arg = DEPRECATED_OPTIONS[name] + eq + value
        out.append(arg)
    return out, notes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    search = sub.add_parser("search", help="run a sweep (the default command)",
                            description="Run a Ray Tune + Optuna + ASHA sweep tracked in MLflow.")
    SweepSpec.add_arguments(search)
    make = sub.add_parser("make-data", help="write the procedural proliv-like dataset (or the digits set)",
                          description="Write the embedded default dataset in the real folder layout; with --kind "
                                      "digits, the real handwritten digits of scikit-learn in that layout.")
    make.add_argument("--out", type=Path, required=True, help="output folder")
    make.add_argument("--kind", choices=["proliv", "digits", *SHIFTED_KINDS, "textures"], default="proliv",
                      help="proliv: the procedural default; digits: sklearn's scans, 0-7 normal, 8-9 spills; "
                           "digits-shifted, photos-shifted: real images with test/ and a site pool under another "
                           "light and framing (anomaly_ae/data/shifted.py); textures: crops of a real texture "
                           "photograph with pasted photo pieces, scratches and stains (anomaly_ae/data/textures.py)")
    make.add_argument("--texture", choices=TEXTURES, default=TEXTURES[0],
                      help=f"the photograph of --kind textures (default {TEXTURES[0]})")
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
    promote.add_argument("--retrain-seeds", type=int, nargs="+", default=[0, 1, 2],
                         help="RNG seeds for --retrain, one retraining each (default 0 1 2)")
    promote.add_argument("--force", action="store_true",
                         help="replace a champion whose validation objective is better than this candidate's")
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
                              "objective is above the single champion's and it flags significantly more validation "
                              "spills (sign test, p < 0.05); a --trial or --retrain ships that trial")
    promote.add_argument("--model-name", default="proliv-autoencoder", help="registered model name")
    promote.add_argument("--data", type=Path, default=None, help="dataset folder (default: the sweep's)")
    promote.add_argument("--config-out", type=Path, default=None,
                         help="where to write the promoted config; the review files go beside it (default: "
                              "STORAGE/EXPERIMENT/promote/best_config.yaml, the sweep's own folder)")
    add_site_arguments(promote, "fix the shipped threshold on this site pool (default: the sweep's own, if it had one)")
    promote.add_argument("--site-calibration", choices=list(SITE_CALIBRATIONS), default=DEFAULT_SITE_CALIBRATION,
                         help="distribution_free: the site rule, which assumes every pool crop may be a spill scoring "
                              "just below the threshold; matched: also uses where the validation spills carried to "
                              "the site score and the pool's estimated spill share (assumptions in "
                              f"anomaly_ae/stats/thresholds.py, matched_site_threshold; default {DEFAULT_SITE_CALIBRATION})")
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
    objectives = sub.add_parser("benchmark-objectives", help="each objective's champion, shipped at the site, tested",
                                description="For a finished sweep with a site pool: the trial each objective (clean, "
                                            "site, site_matched) picks, its threshold fixed by the site rule on the "
                                            "pool's calibration part, its test TPR and TNR. Run it on a sweep with "
                                            "--sampler random --scheduler fifo, so the candidates do not depend on "
                                            "the objective.")
    finished_sweep_options(objectives)
    families = sub.add_parser("benchmark-families", help="each detector family's best trial, tested; epoch costs",
                              description="For a finished sweep: the best trial (by the sweep's validation ranking) "
                                          "of each synthetic-anomaly family (draem, cutpaste) and of the pixel "
                                          "families together, shipped as promote ships it, tested once: test AUROC "
                                          "and TPR/TNR at the shipped threshold; then seconds per epoch of each "
                                          "family against conv_ae, interleaved, with parameters and GPU memory.")
    finished_sweep_options(families)
    families.add_argument("--no-costs", action="store_true", help="skip the epoch timings")
    review = sub.add_parser("simulate-review", help="mark a generated pool's review file by the generator's own draw",
                            description="For measurements on the generated default dataset: mark the LIMIT "
                                        "highest-scored undecided crops of a site review file spill or normal as the "
                                        "generator drew them (what a person looking at each crop would mark).")
    review.add_argument("--review", type=Path, required=True, help="site_review.tsv as promote wrote it")
    review.add_argument("--out", type=Path, required=True, help="the marked file to write")
    review.add_argument("--seed", type=int, default=0, help="the generator seed of the dataset (default 0)")
    review.add_argument("--scale", type=float, default=1.0, help="the generator scale of the dataset (default 1)")
    review.add_argument("--limit", type=positive_int, default=40, help="crops to mark (default 40)")
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
    add_site_arguments(predict, "recalibrate the threshold by the site rule on this folder of unlabelled crops from the "
                           "conditions of --images (a new window of the site)", split=False)
    predict.add_argument("--alarm-level", type=risk, default=None,
                         help="p-value below which the drift alarm fires (default 0.01)")
    calibrate = sub.add_parser("calibrate", help="train named configs without Ray, then test each once",
                               description="Train each calibration config on the train split, fix its threshold on "
                                           "validation (and by the site rule on the site pool), evaluate once on "
                                           "test; one JSON line per config and score.")
    calibrate.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset folder (default {DEFAULT_DATA})")
    calibrate.add_argument("--configs", nargs="+", default=list(CALIBRATION_CONFIGS), choices=list(CALIBRATION_CONFIGS),
                           help="configs to train (default: all)")
    calibrate.add_argument("--epochs", type=positive_int, default=None, help="override every config's epochs")
    calibrate.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    calibrate.add_argument("--also-scores", nargs="*", default=[], choices=list(SCORE_TYPES),
                           help="also report these scores of the same trained model")
    calibrate.add_argument("--invariance", action="store_true",
                           help="train each config as it is and with each invariance option alone")
    fidelity = sub.add_parser("fidelity", help="rung fidelity pooled over sweeps: does an early rung rank like the end?",
                              description="Spearman correlation between each rung's objective and the final one, "
                                          "pooled over the sweeps whose experiment name starts with --prefix.")
    fidelity.add_argument("--tracking-uri", default=DEFAULT_TRACKING, help="MLflow tracking URI")
    fidelity.add_argument("--prefix", required=True, help="experiment name prefix, e.g. benchmark-search-20261125")
    return parser
