"""What a sweep is asked to do: ``SweepSpec``, a typed dataclass, validated before Ray starts.

The search command's options are generated from the dataclass's fields (name, type, default, help),
so the CLI and the spec cannot drift apart. Light on imports: parsing never loads torch or Ray.
"""
from __future__ import annotations

import logging
import argparse
import dataclasses
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_ae.data.site import DEFAULT_CALIBRATION_SHARE
from anomaly_ae.stats.metrics import TNR_TARGET
from anomaly_ae.stats.selection import DEFAULT_OBJECTIVE, OBJECTIVES, SCORE_SELECTIONS
from anomaly_ae.stats.thresholds import SITE_RISK, SITE_SPILL_BOUND

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "data" / "default"
# The exports `run_search.py server` prints make every command (and every trial) use the server.
DEFAULT_TRACKING = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlruns' / 'mlflow.db'}"
DEFAULT_STORAGE = REPO / "ray_results"


class SpecError(ValueError):
    """Bad input to a command, found before Ray starts; the message names the option."""


def configure_environment() -> None:
    """Ray, Tune and MLflow settings read when they start; set before the first import of either."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one per checkpoint download otherwise
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a "View run" line per closed run otherwise
    # Snapshot the experiment state often: after a kill -9, trials started since the last
    # snapshot are lost to --resume and suggested again.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    # Tune's legacy reporter at verbose=0 prints nothing; the new one prints a config box and a
    # TensorBoard hint whatever the verbosity. The sweep's own lines (sweeps.tuning.SweepProgress) report progress.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


# ----------------------------------------------------------------- argparse types

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


def add_site_arguments(p: argparse.ArgumentParser, folder_help: str | None = None, split: bool = True) -> None:
    """The site pool's options, shared by search, promote and predict (which chooses nothing: no ``split``)."""
    p.add_argument("--site", type=Path, default=None,
                   help=folder_help or "site pool: unlabelled crops from where the detector will run (default: "
                                       "DATA/site/ when it exists)")
    p.add_argument("--site-max-spill-fraction", type=unit_fraction, default=None,
                   help=f"stated upper bound on the share of spills in the site pool (default {SITE_SPILL_BOUND})")
    p.add_argument("--site-delta", type=risk, default=None,
                   help=f"risk that the site threshold breaks its TNR promise (default {SITE_RISK})")
    p.add_argument("--site-review", "--site-known-spills", dest="site_review", type=Path, default=None,
                   metavar="FILE", help="a review of site crops, as promote writes it (site_review.tsv, its verdict "
                   "column filled): crops marked spill are left out of the pool and the spill bound shrinks by as "
                   "many; crops marked normal stay. --site-known-spills is its old name (one spill's name a line, "
                   "still read)")
    if not split:
        return
    p.add_argument("--site-calibration-share", type=risk, default=None, metavar="SHARE",
                   help="share of the site pool that only fixes the shipped threshold; the rest scores trials and "
                        "promote's choices, so the crops that calibrate chose nothing (split by a hash of each "
                        f"crop's name; default {DEFAULT_CALIBRATION_SHARE}, or the sweep's)")


def option(help: str, **argparse_kwargs):
    """A spec field's CLI metadata: its help and any argparse keywords (type, choices, metavar)."""
    return {"help": help, **argparse_kwargs}


SITE_FIELDS = ("site", "site_max_spill_fraction", "site_delta", "site_review", "site_calibration_share")


# ----------------------------------------------------------------- the spec

@dataclass(frozen=True)
class SweepSpec:
    """A sweep's settings, as the search command takes them (``--num-samples`` is ``num_samples``)."""

    data: Path | None = field(default=None, metadata=option(
        f"dataset folder in the proliv layout (default: {DEFAULT_DATA}, generated if absent)", type=Path))
    space: str = field(default="quick", metadata=option("search space preset: quick, full or writeups (the write-up baselines at their stated budgets; default quick)"))
    config: Path | None = field(default=None, metadata=option(
        "YAML trial config (e.g. a promoted best_config.yaml) enqueued as the first trial", type=Path))
    num_samples: int = field(default=18, metadata=option(
        "trials to run, the enqueued seed baselines and PCA start point included (default 18)", type=positive_int))
    max_concurrent: int = field(default=2, metadata=option("trials at once (default 2)", type=positive_int))
    epochs: int | None = field(default=None, metadata=option(
        "epoch budget per trial (space default)", type=positive_int))
    steps_per_epoch: int | None = field(default=None, metadata=option(
        "batches per epoch, 0 = a full pass (space default: 0)", type=int))
    samples_per_epoch: int | None = field(default=None, metadata=option(
        "crops per epoch whatever the batch size, 0 = unused (space default: quick 768, else 0)", type=int))
    time_budget_s: float | None = field(default=None, metadata=option(
        "stop starting trials after this", type=non_negative_float))
    cpus_per_trial: float = field(default=1.0, metadata=option("CPUs per trial (default 1)", type=non_negative_float))
    gpus_per_trial: float = field(default=0.0, metadata=option(
        "GPUs per trial, fractional allowed: 0.25 packs four trials on a GPU (default 0)", type=non_negative_float))
    address: str | None = field(default=None, metadata=option(
        "join a running Ray cluster: auto, HOST:PORT or ray://HOST:PORT"))
    storage_path: str = field(default=str(DEFAULT_STORAGE), metadata=option(
        "Ray results: local folder, shared NFS path or s3:// URI (default ./ray_results)"))
    tracking_uri: str = field(default=DEFAULT_TRACKING, metadata=option(
        "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite mlruns/mlflow.db)"))
    experiment: str | None = field(default=None, metadata=option(
        "experiment name for Ray and MLflow (default proliv-<space>)"))
    optuna_storage: str | None = field(default=None, metadata=option(
        "keep the sweep's Optuna study in this database (postgresql://... on a cluster, sqlite:///PATH beside "
        "the MLflow store on one machine), named after the sweep; default: in the driver's memory and Ray's "
        "experiment state only", metavar="URL"))
    seed: int = field(default=0, metadata=option("sampler and trial seed (default 0)", type=int))
    no_baselines: bool = field(default=False, metadata=option("do not enqueue the seed baselines"))
    rerun_baselines: bool = field(default=False, metadata=option(
        "train the seed baselines and start points again, even where a finished run of the same config, seed, "
        "budget and dataset is in the tracking store (default: link that run instead)"))
    resume: bool = field(default=False, metadata=option(
        "continue the interrupted sweep --experiment from --storage-path (Tuner.restore)"))
    tnr_target: float = field(default=TNR_TARGET, metadata=option(
        f"TNR the objective is constrained to (default {TNR_TARGET})", type=float))
    grace_period: int = field(default=1, metadata=option(
        "ASHA: epochs before a trial can be stopped", type=positive_int))
    scale: float = field(default=1.0, metadata=option(
        "scale of the generated default dataset (default 1)", type=float))
    val_fraction: float = field(default=0.1, metadata=option(
        "fraction of train/ held out as validation normals, never trained on (default 0.1)", type=float))
    val_spill_fraction: float = field(default=1.0, metadata=option(
        "fraction of proliv/ used as validation spills (default 1)", type=float))
    sampler: str = field(default="tpe", metadata=option("Optuna sampler (default tpe)", choices=["tpe", "random"]))
    scheduler: str = field(default="asha", metadata=option(
        "asha stops weak trials early; fifo runs every trial to its budget (default asha)", choices=["asha", "fifo"]))
    score_selection: str = field(default="best", metadata=option(
        "best: judge each trial by its best score from one forward pass (fan-out); fixed: by the score it "
        "sampled. Seed baselines always keep their own score (default best)", choices=list(SCORE_SELECTIONS)))
    objective: str = field(default=DEFAULT_OBJECTIVE, metadata=option(
        "clean: val TPR at TNR >= target; worst_of_shift: the lower of that and the same on nuisance-perturbed "
        "val crops; site: val TPR at the threshold the site rule fixes on the site pool's selection part; "
        "site_matched: the same for val spills carried to the site's light; site_blend: the mean of clean and "
        "site_matched (default "
        f"{DEFAULT_OBJECTIVE}, with or without a site pool: docs/results.md §10)", choices=list(OBJECTIVES)))
    site: Path | None = None
    site_max_spill_fraction: float | None = None
    site_delta: float | None = None
    site_review: Path | None = None
    site_calibration_share: float | None = None
    warm_start: str | None = field(default=None, metadata=option(
        "seed the study with the finished trials of these experiments' sweeps (default: earlier sweeps of this "
        "space on the same dataset content in this tracking store)", metavar="EXPERIMENT[,EXPERIMENT...]"))
    no_warm_start: bool = field(default=False, metadata=option("start the study empty"))
    no_references: bool = field(default=False, metadata=option("do not score the PCA and kNN reference detectors"))
    keep_checkpoints: int | None = field(default=None, metadata=option(
        "keep the weights (Ray checkpoint, MLflow model.pt) of the N best searched trials only; seed baselines "
        "keep theirs (default: keep all)", type=positive_int, metavar="N"))
    max_failures: int = field(default=3, metadata=option(
        "retries of a failed trial (a lost node, an error), each from its last checkpoint; -1 = unlimited "
        "(default 3)", type=int))

    # ------------------------------------------------------------- the CLI, generated

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            if f.name in SITE_FIELDS:
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.type == "bool":
                parser.add_argument(flag, action="store_true", help=f.metadata["help"])
            else:
                parser.add_argument(flag, default=f.default, **f.metadata)
        add_site_arguments(parser)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "SweepSpec":
        from search_spaces import DEPRECATED_SPACES

        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
        if values["space"] in DEPRECATED_SPACES:
            new = DEPRECATED_SPACES[values["space"]]
            logger.warning(f"note: --space {values['space']} is deprecated; it is now --space {new}")
            values["space"] = new
        return cls(**values)

    @classmethod
    def of(cls, **values) -> "SweepSpec":
        """A spec from keyword values; an unknown key is refused by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpecError(f"unknown sweep setting(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**values)

    # ------------------------------------------------------------- derived values

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"proliv-{self.space}"

    @property
    def experiment_path(self) -> str:
        return f"{str(self.storage_path).rstrip('/')}/{self.experiment_name}"

    @property
    def site_bound(self) -> float:
        return SITE_SPILL_BOUND if self.site_max_spill_fraction is None else self.site_max_spill_fraction

    @property
    def site_risk(self) -> float:
        return SITE_RISK if self.site_delta is None else self.site_delta

    @property
    def site_share(self) -> float:
        return DEFAULT_CALIBRATION_SHARE if self.site_calibration_share is None else self.site_calibration_share

    def search_space(self, perceptual: bool):
        """The define-by-run space this spec searches (search_spaces.get_space)."""
        from search_spaces import get_space

        return get_space(self.space, perceptual, self.epochs, self.steps_per_epoch, self.samples_per_epoch,
                         self.score_selection, self.objective)

    def replace(self, **changes) -> "SweepSpec":
        return dataclasses.replace(self, **changes)

    def resume_command(self) -> str:
        parts = ["python run_search.py search --resume", f"--experiment {shlex.quote(self.experiment_name)}"]
        if self.storage_path != str(DEFAULT_STORAGE):
            parts.append(f"--storage-path {shlex.quote(str(self.storage_path))}")
        if self.tracking_uri != DEFAULT_TRACKING:
            parts.append(f"--tracking-uri {shlex.quote(self.tracking_uri)}")
        if self.address:
            parts.append(f"--address {shlex.quote(self.address)}")
        return " ".join(parts)

    # ------------------------------------------------------------- validation

    def validate(self) -> None:
        """Everything that can be wrong with the values alone, checked before Ray starts."""
        from search_spaces import SPACES

        if self.space not in SPACES:
            raise SpecError(f"--space: unknown space {self.space!r}; valid: {', '.join(sorted(SPACES))}")
        if not 0.5 <= self.tnr_target <= 1.0:
            raise SpecError(f"--tnr-target: {self.tnr_target} is outside [0.5, 1]")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 0:
            raise SpecError(f"--steps-per-epoch: must be >= 0, got {self.steps_per_epoch}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 0:
            raise SpecError(f"--samples-per-epoch: must be >= 0, got {self.samples_per_epoch}")
        if self.steps_per_epoch and self.samples_per_epoch:
            raise SpecError("--steps-per-epoch and --samples-per-epoch both set an epoch's length; give one")
        if self.address and not (self.address == "auto" or self.address.startswith("ray://") or ":" in self.address):
            raise SpecError(f"--address: expected auto, HOST:PORT or ray://HOST:PORT, got {self.address!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise SpecError(f"--val-fraction: must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.val_spill_fraction <= 1.0:
            raise SpecError(f"--val-spill-fraction: must be in (0, 1], got {self.val_spill_fraction}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise SpecError(f"--gpus-per-trial: fractions must be < 1, got {self.gpus_per_trial}")
        if self.max_failures < -1:
            raise SpecError(f"--max-failures: must be >= -1 (-1 = unlimited), got {self.max_failures}")
        if self.warm_start and self.no_warm_start:
            raise SpecError("--warm-start and --no-warm-start contradict each other; give one")
        if self.resume and (self.warm_start or self.sampler != "tpe" or self.optuna_storage):
            raise SpecError("--resume continues the sweep's own searcher and study; --warm-start, --sampler and "
                            "--optuna-storage do not apply")
        if self.gpus_per_trial > 0 and not self.address:
            import torch

            # A local Ray sees only this machine's GPUs; without one, GPU trials would wait forever.
            if torch.cuda.device_count() == 0:
                raise SpecError(f"--gpus-per-trial {self.gpus_per_trial}: this machine has no CUDA GPU; "
                                "use 0, or --address to run on a cluster that has GPUs")

    def trial_config(self) -> dict | None:
        """The validated ``--config`` file, or None."""
        import yaml

        from anomaly_ae.detector.config import ConfigError, validate_config

        if self.config is None:
            return None
        if not Path(self.config).is_file():
            raise SpecError(f"--config: file not found: {self.config}")
        try:
            raw = yaml.safe_load(Path(self.config).read_text())
        except yaml.YAMLError as exc:
            raise SpecError(f"--config: {self.config} is not valid YAML: {exc}") from exc
        try:
            return validate_config(raw)
        except ConfigError as exc:
            raise SpecError(f"--config {self.config}: {exc}") from exc


def ensure_dataset(data: Path | None, scale: float = 1.0) -> Path:
    """The dataset folder: ``data`` as given, or the embedded default, generated when absent."""
    if data is None:
        data = DEFAULT_DATA
        if not (data / "train").is_dir():
            from anomaly_ae.data import make_dataset

            logger.info(f"generating the default dataset in {data} (scale {scale}) ...")
            logger.info(f"  {make_dataset(data, scale=scale, seed=0, overwrite=True)}")
    if not (Path(data) / "train").is_dir():
        raise SpecError(f"--data: no train/ folder in {data}")
    return Path(data)
