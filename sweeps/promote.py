"""`run_search.py promote`: one honest test evaluation, then the MLflow registry alias `champion`.

The threshold is fixed on validation with the trial's policy and, when the sweep
has a site pool, on that pool by the site rule; the detector ships with the site
threshold then. Test is scored once, for the promoted trial and for the sweep's
seed baselines and references, side by side, at both thresholds.
"""
from __future__ import annotations

import logging
import json
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from anomaly_ae.data.site import split_description
from anomaly_ae.detector.checkpoints import checkpoint_payload, load_trained
from anomaly_ae.detector.testing import (
    calibrate_at_site, calibration_record, operating_report, report_at_policies, test_report,
)
from anomaly_ae.detector.validation import train_and_validate
from anomaly_ae.stats.thresholds import DEFAULT_SITE_CALIBRATION
from search_spaces.baselines import SEED_BASELINES
from sweeps.review import ReviewFiles, log_review, write_review_files
from sweeps.runs import SweepNotFound, download_checkpoint, find_parent_run, load_sweep_data, sweep_frame

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "proliv-autoencoder"
# promote combines this many of the best trials and ships the ensemble when validation prefers it:
# measured on the digits set and the default dataset (docs/results.md, "Distance detectors and the ensemble, measured").
DEFAULT_ENSEMBLE = 3
SHIP_CHOICES = ("auto", "single", "ensemble")
CHAMPION = "champion"
# Keys kept out of best_config.yaml: they describe where a config came from, not what it is.
NOT_REPRODUCED = ("baseline",)


class PromotionRefused(RuntimeError):
    """The current champion is better on test; --force overrides."""


@dataclass
class Candidate:
    name: str
    trial_id: str
    run_id: str
    payload: dict | None  # None for a reference detector, which has no checkpoint
    report: dict
    retrain_spread: dict = field(default_factory=dict)
    own_policy: str = "tnr_target"  # the threshold policy the trial (or its write-up) stated
    variant: str = ""
    score: str = ""
    val_objective: float = math.nan
    reused_from: str = ""  # a replayed trial: the earlier run that trained it (and holds its weights)

    @classmethod
    def of_trial(cls, name: str, trial_id: str, run_id: str, payload: dict, report: dict, **kw) -> "Candidate":
        cfg = payload["config"]
        return cls(name, trial_id, run_id, payload, report, variant=cfg["variant"], score=cfg["score"],
                   val_objective=float(payload["report"]["objective"]), **kw)

    @property
    def cfg(self) -> dict:
        return self.payload["config"]

    @property
    def members(self) -> list[dict]:
        """An ensemble's member payloads, best first; empty for a single trial."""
        return self.payload.get("members", []) if self.payload else []


def stated_policy(baseline: str, cfg: dict) -> str:
    """A seed baseline's own threshold policy (dropped when it was enqueued), else the config's."""
    return SEED_BASELINES[baseline]["threshold_policy"] if baseline in SEED_BASELINES else cfg["threshold_policy"]


def evaluate_once(payload: dict, splits, policies: tuple[str, ...] | None = None,
                  site_mode: str = DEFAULT_SITE_CALIBRATION) -> dict:
    """Rebuild the trained model; thresholds from its validation scores (and the site pool's calibration
    part, by ``site_mode``); one pass over test."""
    state = load_trained(payload)
    report = test_report(state, payload["config"], splits, payload["val_scores"], policies, site_mode)
    report.pop("test_scores")
    return report


def as_scorer(score_tensor):
    """A scorer of uint8 tensors as one of uint8 arrays."""
    return lambda u8: score_tensor(torch.from_numpy(np.ascontiguousarray(u8)))


def reference_candidates(splits, policy: str, tnr_target: float, objective: str,
                         site_mode: str = DEFAULT_SITE_CALIBRATION) -> list[Candidate]:
    """The reference detectors refitted on the sweep's train split and scored once on test."""
    from sweeps.references import fit_references

    out = []
    test = torch.from_numpy(np.ascontiguousarray(splits.test))
    for ref in fit_references(splits, tnr_target, objective):
        site = calibrate_at_site(as_scorer(ref.score), splits, tnr_target, site_mode)
        report = report_at_policies(ref.val_scores["normal"], ref.val_scores["spill"], ref.score(test),
                                    splits.test_labels, (policy,), tnr_target, site)
        out.append(Candidate(f"ref:{ref.name}", "-", "-", None, report, own_policy=policy,
                             variant=ref.description, score="-", val_objective=ref.objective))
    return out


def retrain(cfg: dict, splits, seeds: list[int], policies: tuple[str, ...],
            site_mode: str = DEFAULT_SITE_CALIBRATION) -> tuple[dict, dict]:
    """Retrain ``cfg`` with full passes over the train split for each seed, judged by its promoted score.

    Validation normals stay held out: the threshold is fixed on them. Returns the
    payload of the seed with the best validation objective and the spread.
    """
    runs = []
    for seed in seeds:
        run_cfg = {**cfg, "seed": seed, "steps_per_epoch": 0, "samples_per_epoch": 0, "score_selection": "fixed"}
        tick = time.perf_counter()
        losses = []
        state, metrics, val_scores, verdict = train_and_validate(run_cfg, splits,
                                                                 on_epoch=lambda _, loss: losses.append(loss))
        loss = losses[-1]
        main = metrics[run_cfg["score"]]
        report = {"objective": verdict["objective"], "threshold": main["threshold"], "val_auroc": main["auroc"]}
        payload = checkpoint_payload(state, run_cfg, val_scores, report)
        test = evaluate_once(payload, splits, policies, site_mode)
        runs.append((payload, test))
        logger.info(f"  retrain seed {seed}: loss {loss:.5f}, val objective {report['objective']:.4f}, "
                    f"test TPR {test['tpr']:.4f} TNR {test['tnr']:.4f} ({time.perf_counter() - tick:.0f}s)")
    spread = {}
    for key, values in (("val_objective", [p["report"]["objective"] for p, _ in runs]),
                        ("test_tpr", [t["tpr"] for _, t in runs]), ("test_tnr", [t["tnr"] for _, t in runs])):
        spread[f"{key}_by_seed"] = [float(v) for v in values]
        spread[f"{key}_mean"], spread[f"{key}_std"] = float(np.mean(values)), float(np.std(values))
    best_payload, best_test = max(runs, key=lambda r: r[0]["report"]["objective"])
    return best_payload, {"seeds": seeds, **spread, "chosen_seed": best_payload["config"]["seed"], "test": best_test}


def ensemble_gain(single: Candidate, ensemble: Candidate) -> dict:
    """``selection.detection_gain`` of the ensemble over the single champion, on their validation scores."""
    from anomaly_ae.detector.ensemble import judged_val_scores
    from anomaly_ae.stats.selection import detection_gain

    return detection_gain(*(judged_val_scores(c.payload, split) for c in (single, ensemble)
                            for split in ("normal", "spill")), single.cfg["tnr_target"])


def choose_shipped(single: Candidate, ensemble: Candidate | None, ship: str = "auto") -> Candidate:
    """auto: the ensemble only when its validation objective is above the single champion's *and* it flags
    significantly more validation spills (``ensemble_gain`` p < ``ENSEMBLE_EVIDENCE``): one model is
    simpler to run and to explain, and an ensemble chosen by a spill or two has won by chance; or as
    ``ship`` says."""
    from anomaly_ae.stats.selection import ENSEMBLE_EVIDENCE

    if ship not in SHIP_CHOICES:
        raise ValueError(f"ship: {ship!r} is not one of {list(SHIP_CHOICES)}")
    if ensemble is None or ship == "single":
        return single
    if ship == "ensemble":
        return ensemble
    if not ensemble.val_objective > single.val_objective:
        return single
    return ensemble if ensemble_gain(single, ensemble)["p"] < ENSEMBLE_EVIDENCE else single


def ensemble_members(frame: pd.DataFrame, k: int, distinct: bool = False) -> pd.DataFrame:
    """The k best finished trials of a ranked sweep frame (with ``distinct``, the best of k variants)."""
    ok = frame[frame["best_objective"].notna() & (frame["status"] != "DIVERGED")]
    if distinct:
        ok = ok.drop_duplicates("variant")
    if len(ok) < k:
        raise SweepNotFound(f"--ensemble {k}: the sweep has only {len(ok)} finished "
                            f"{'variants' if distinct else 'trials'} to combine")
    return ok.head(k)


def ensemble_candidate(payloads: list[dict], rows: pd.DataFrame, splits, policy: str, objective: str,
                       site_mode: str = DEFAULT_SITE_CALIBRATION) -> Candidate:
    """The members as one detector: their tail surprises averaged, thresholded like a single score, and judged
    on validation by the sweep's objective like a trial."""
    from anomaly_ae.detector.ensemble import Ensemble, val_scores_of
    from anomaly_ae.stats.selection import score_objective
    from anomaly_ae.detector.validation import SiteInput, score_summary, site_metrics

    tnr = payloads[0]["config"]["tnr_target"]
    ensemble = Ensemble(payloads)
    val = val_scores_of(payloads)
    metrics, site = score_summary(val["normal"], val["spill"], tnr), None
    if splits.site_selection is not None:  # judged on the part that chooses, calibrated on the other
        score = as_scorer(ensemble.score)
        site = calibrate_at_site(score, splits, tnr, site_mode)
        metrics.update(site_metrics(score(splits.site_selection.images), val["spill"], tnr, SiteInput.of(splits),
                                    score(splits.val_spill_matched)))
    report = report_at_policies(val["normal"], val["spill"],
                                ensemble.score(torch.from_numpy(np.ascontiguousarray(splits.test))),
                                splits.test_labels, (policy,), tnr, site)
    payload = {"config": {**payloads[0]["config"], "score": "ensemble", "threshold_policy": policy},
               "val_scores": {split: {"ensemble": v} for split, v in val.items()}, "members": payloads}
    return Candidate(f"promoted (ensemble of {len(payloads)})", "+".join(rows["trial_id"]), ",".join(rows["run_id"]),
                     payload, report, own_policy=policy, variant="+".join(rows["variant"]), score="ensemble",
                     # worst_of_shift needs perturbed crops no ensemble is scored on: no figure then.
                     val_objective=math.nan if objective == "worst_of_shift" else score_objective(metrics, objective))


def _ci(interval) -> str:
    return f"{interval[0]:.3f}-{interval[1]:.3f}"


def comparison_table(candidates: list[Candidate]) -> pd.DataFrame:
    """Test figures at the promotion's validation policy and, when a site pool fixed one, at the site
    threshold, side by side; and at each candidate's own stated policy."""
    rows = []
    for c in candidates:
        r = c.report
        own = r.get("by_policy", {}).get(c.own_policy, r)
        row = {
            "config": c.name, "trial_id": c.trial_id, "reused_from": c.reused_from[:8] or "-",
            "variant": c.variant, "score": c.score,
            "policy": r["policy"], "val_objective": c.val_objective,
            "test_tpr": r["tpr"], "tpr_ci": _ci(r["tpr_ci"]), "test_tnr": r["tnr"], "tnr_ci": _ci(r["tnr_ci"]),
            "TP": r["tp"], "FP": r["fp"], "TN": r["tn"], "FN": r["fn"], "test_auroc": r["auroc"],
            "threshold": r["threshold"], "oracle_tpr_at_tnr": r["oracle_tpr_at_tnr"],
            "own_policy": c.own_policy, "own_test_tpr": own["tpr"], "own_test_tnr": own["tnr"],
        }
        if "site" in r:
            site = r["site"]
            row.update({"site_tpr": site["tpr"], "site_tpr_ci": _ci(site["tpr_ci"]), "site_tnr": site["tnr"],
                        "site_tnr_ci": _ci(site["tnr_ci"]), "site_threshold": site["threshold"]})
        rows.append(row)
    return pd.DataFrame(rows)


def best_config(cfg: dict) -> dict:
    """The promoted config as `search --config` reads it (an ensemble's: its lead member's); a checkpoint
    of an earlier version may still hold the retired split keys, which search would refuse."""
    from anomaly_ae.detector.config import SWEEP_KEYS

    return {k: v for k, v in sorted(cfg.items()) if k not in NOT_REPRODUCED and k not in SWEEP_KEYS}


def write_best_config(cfg: dict, path: Path) -> Path:
    from anomaly_ae.detector.config import validate_config

    clean = best_config(cfg)
    validate_config(clean)  # what we write must be what search accepts
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("# promoted by run_search.py promote; use with: run_search.py search --config THIS\n"
                   + yaml.safe_dump(clean, sort_keys=True))
    tmp.replace(path)
    return path


def current_champion(client, model_name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def comparable_key(dataset_hash: str, objective: str, selection_hash: str) -> dict[str, str]:
    """What two detectors' validation objectives must share to be compared: the labelled data, the
    objective, and (for the site objectives) the pool part that scored them."""
    key = {"dataset_hash": dataset_hash, "objective": objective}
    return {**key, "site_selection_hash": selection_hash} if objective.startswith("site") else key


def champion_check(client, model_name: str, val_objective: float, key: dict[str, str]) -> str | None:
    """Why the current champion should stay, or None when the candidate may replace it.

    Validation decides, never test: the candidate must not have a lower validation objective than the
    champion, measured on the same data by the same objective (``comparable_key``). Test figures are
    printed, logged and tagged, and choose nothing."""
    champ = current_champion(client, model_name)
    if champ is None:
        return None
    tags = champ.tags
    if "val_objective" not in tags or any(tags.get(k, "") != v for k, v in key.items()):
        return None  # figures on other data, by another objective, are not comparable; the newer sweep wins
    theirs = float(tags["val_objective"])
    if theirs > val_objective:
        return (f"the current {CHAMPION} ({model_name} version {champ.version}, trial {tags.get('trial_id', '?')}) "
                f"has the better validation objective ({key['objective']}): {theirs:.4f} against this candidate's "
                f"{val_objective:.4f}; pass --force to replace it anyway")
    return None


def operating_line(report: dict) -> str:
    """One threshold's test figures with Clopper-Pearson intervals."""
    r = report
    return (f"TPR {r['tpr']:.4f} [{r['tpr_ci'][0]:.3f}, {r['tpr_ci'][1]:.3f}], TNR {r['tnr']:.4f} "
            f"[{r['tnr_ci'][0]:.3f}, {r['tnr_ci'][1]:.3f}], TP {r['tp']} FP {r['fp']} TN {r['tn']} FN {r['fn']}")


def report_markdown(promoted: Candidate, table: pd.DataFrame, experiment: str) -> str:
    from sweeps.leaderboard import markdown_table

    r = promoted.report
    lines = [f"Promoted from sweep `{experiment}`, trial `{promoted.trial_id}` ({promoted.variant}, "
             f"score {promoted.cfg['score']}).",
             f"Test at the threshold {r['threshold']:.6g} fixed on validation normals ({r['policy']}): "
             f"{operating_line(r)}, AUROC {r['auroc']:.4f}."]
    if "site" in r:
        cal = r["site"]["calibration"]
        lines.append(f"Test at the threshold {r['site']['threshold']:.6g} fixed on the site pool ({cal['site_size']} "
                     f"crops, hash {cal['site_hash'][:12]}, spill bound {cal['site_max_spill_fraction']}, "
                     f"delta {cal['site_delta']}): {operating_line(r['site'])}. The detector ships with this one.")
    lines.append("")
    if promoted.retrain_spread:
        s = promoted.retrain_spread
        lines += [f"Retrained with seeds {s['seeds']} (seed {s['chosen_seed']} kept, best on validation): "
                  f"val objective {s['val_objective_mean']:.4f} ± {s['val_objective_std']:.4f}, "
                  f"test TPR {s['test_tpr_mean']:.4f} ± {s['test_tpr_std']:.4f}, "
                  f"test TNR {s['test_tnr_mean']:.4f} ± {s['test_tnr_std']:.4f}.", ""]
    return "\n".join(lines + [markdown_table(table)]) + "\n"


def detector_spec(promoted: Candidate, decode_size: tuple[int, int]) -> dict:
    """detector.json: the score, the shipped threshold, and the calibration scores it was fixed on
    (what predict's drift alarm compares a batch with)."""
    r = promoted.report
    spec = {"score": promoted.cfg["score"], "tnr_target": promoted.cfg["tnr_target"],
            "decode_size": list(decode_size)}
    if promoted.members:
        spec["members"] = [{"trial_id": t, "variant": m["config"]["variant"], "score": m["config"]["score"]}
                           for t, m in zip(promoted.trial_id.split("+"), promoted.members)]
    if "site" in r:
        cal = r["site"]["calibration"]
        return {**spec, "threshold": r["site"]["threshold"], "policy": "site",
                "calibration": calibration_record(cal["scores"], cal)}
    normals = promoted.payload["val_scores"]["normal"][promoted.cfg["score"]]
    return {**spec, "threshold": r["threshold"], "policy": r["policy"], "calibration": calibration_record(normals)}


def register(tracking_uri: str, parent, promoted: Candidate, markdown: str, model_name: str,
             decode_size: tuple[int, int], key: dict[str, str], split: dict[str, str], config_path: Path):
    """Log the detector as a pyfunc model (from code) in a promotion run, register it, set the alias."""
    from anomaly_ae.detector.checkpoints import MODEL_FILE, save_checkpoint
    from anomaly_ae.tracking.serving import DETECTOR_FILE
    from anomaly_ae.tracking.mlflow_runs import register_detector

    r = operating_report(promoted.report)
    spec = detector_spec(promoted, decode_size)
    pool = {**{k: v for k, v in spec["calibration"].items() if k.startswith("site_")}, **split}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if promoted.members:  # one checkpoint per member, loaded by serving.ProlivDetector in order
            weights = {}
            for i, member in enumerate(promoted.members):
                weights[f"member{i}"] = str(save_checkpoint(folder / f"member{i}.pt", member, with_optimizer=False))
        else:
            weights = {"checkpoint": str(save_checkpoint(folder / MODEL_FILE, promoted.payload, with_optimizer=False))}
        (folder / DETECTOR_FILE).write_text(json.dumps(spec, indent=2))
        (folder / "test_report.md").write_text(markdown)
        return register_detector(
            tracking_uri, parent, name=f"promote·{promoted.trial_id}", trial_id=promoted.trial_id,
            params={"promoted_run_id": promoted.run_id, "score": promoted.cfg["score"], "threshold": r["threshold"],
                    "threshold_source": spec["calibration"]["source"], **pool},
            metrics={"val_objective": promoted.val_objective,
                     "test_tpr": r["tpr"], "test_tnr": r["tnr"], "test_auroc": promoted.report["auroc"],
                     "val_threshold_test_tpr": promoted.report["tpr"],
                     "val_threshold_test_tnr": promoted.report["tnr"]},
            files=[folder / "test_report.md", Path(config_path)], decode_size=tuple(decode_size),
            model_artifacts={**weights, "detector": str(folder / DETECTOR_FILE)},
            model_name=model_name, description=markdown, alias=CHAMPION, version_tags={
                "trial_id": promoted.trial_id, "source_run_id": promoted.run_id, **key,
                "val_objective": f"{promoted.val_objective:.6f}",
                "test_tpr": f"{r['tpr']:.6f}", "test_tnr": f"{r['tnr']:.6f}",
                "test_auroc": f"{promoted.report['auroc']:.6f}", "threshold": f"{r['threshold']:.9g}",
                "score": promoted.cfg["score"], "threshold_source": spec["calibration"]["source"], **pool})


@dataclass
class Promotion:
    promoted: Candidate
    table: pd.DataFrame
    version: object
    config_path: Path
    markdown: str
    review: ReviewFiles | None = None  # the site crops above the shipped threshold, for a person to mark


def promotion_folder(parent, experiment: str) -> Path:
    """Where promote writes by default: the sweep's own folder (beside Ray's results), whatever folder
    the command runs from, so that two sweeps' configs and review rounds never mix."""
    from sweeps.spec import DEFAULT_STORAGE

    return Path(parent.data.tags.get("storage_path") or DEFAULT_STORAGE) / experiment / "promote"


def promote(client, tracking_uri: str, experiment: str, trial: str | None = None, retrain_seeds: list[int] = (),
            force: bool = False, model_name: str = DEFAULT_MODEL_NAME, data_dir: Path | None = None,
            config_out: Path | None = None, parent_run_id: str | None = None,
            threshold_policy: str = "tnr_target", references: bool = True, baselines: bool = True,
            site_dir: Path | None = None, site_max_spill_fraction: float | None = None,
            site_delta: float | None = None, site_review: Path | None = None,
            site_calibration_share: float | None = None, site_calibration: str = DEFAULT_SITE_CALIBRATION,
            ensemble: int = DEFAULT_ENSEMBLE, ensemble_distinct: bool = False, ship: str = "auto") -> Promotion:
    """Evaluate the chosen trial once on test at ``threshold_policy`` (default: the sweep's objective,
    TNR >= target on validation normals) and at the site threshold when there is a site pool (the
    sweep's, or ``site_dir``), beside the baselines and references; register it.

    The K = ``ensemble`` best trials (of K variants with ``ensemble_distinct``) are also combined into one
    detector; ``ship`` says which is registered (``choose_shipped``). 0 builds no ensemble."""
    parent = find_parent_run(client, experiment, parent_run_id)
    config_out = promotion_folder(parent, experiment) / "best_config.yaml" if config_out is None else config_out
    objective = parent.data.tags.get("objective", "clean")
    frame = sweep_frame(client, parent)
    row = chosen_row(frame, trial, parent.info.run_id)
    data, splits = load_sweep_data(parent, data_dir, site_dir, site_max_spill_fraction, site_delta,
                                   site_review, site_calibration_share)
    # An ensemble is the sweep's top K: it competes with the best trial, not with a chosen one.
    wants_ensemble = ensemble and (ship == "ensemble" or (ship == "auto" and trial is None and not retrain_seeds))
    members = ensemble_rows(frame, ensemble, ensemble_distinct, required=ship == "ensemble") if wants_ensemble \
        else frame[:0]
    with tempfile.TemporaryDirectory() as tmp:
        payload = download_checkpoint(client, row["run_id"], Path(tmp))
        member_payloads = [download_checkpoint(client, m["run_id"], Path(tmp) / f"member-{m['run_id']}")
                           for _, m in members.iterrows()]
        compared = baseline_candidates(client, frame[(frame["baseline"] != "") & (frame["run_id"] != row["run_id"])]
                                       if baselines else frame[:0], splits, threshold_policy, site_calibration, Path(tmp))
    promoted = champion_candidate(row, payload, splits, retrain_seeds, threshold_policy, site_calibration)
    refs = reference_candidates(splits, threshold_policy, promoted.cfg["tnr_target"], objective,
                                site_calibration) if references else []
    other = []
    if len(members):
        combined = ensemble_candidate(member_payloads, members, splits, threshold_policy, objective, site_calibration)
        promoted, other = shipped_and_other(promoted, combined, ship, len(members))
    table = comparison_table([promoted, *other, *sorted(compared, key=lambda c: c.name), *refs])
    markdown = report_markdown(promoted, table, experiment)
    key = comparable_key(data.labelled_hash, objective,
                         splits.site_selection.content_hash if splits.site_selection is not None else "")
    reason = champion_check(client, model_name, promoted.val_objective, key)
    if reason and not force:
        raise PromotionRefused(reason)
    config_path = write_best_config(promoted.members[0]["config"] if promoted.members else promoted.cfg, config_out)
    split = {} if splits.site_selection is None else split_description(
        splits.site_selection, splits.site_calibration, data_share(parent, site_calibration_share))
    version = register(tracking_uri, parent, promoted, markdown, model_name, data.size, key, split, config_path)
    review = None
    if "site" in promoted.report:
        review = review_round(client, version, promoted, data.site, splits.site_calibration, Path(config_out).parent)
    return Promotion(promoted, table, version, config_path, markdown, review)


def chosen_row(frame: pd.DataFrame, trial: str | None, parent_run_id: str) -> pd.Series:
    """The trial to promote: ``trial`` (a trial id, a run id, or an enqueued name: seed000, start:knn5), or
    the sweep's best that did not diverge."""
    if trial is not None:
        chosen = frame[(frame["trial_id"] == trial) | (frame["run_id"] == trial) | (frame["baseline"] == trial)]
        if chosen.empty:
            raise SweepNotFound(f"--trial: no trial {trial!r} in sweep {parent_run_id}; "
                                f"trials: {', '.join(frame['trial_id'])} (a trial of an earlier sweep of this "
                                f"experiment? name that sweep with --parent PARENT_RUN_ID)")
        return chosen.iloc[0]
    ok = frame[frame["best_objective"].notna() & (frame["status"] != "DIVERGED")]
    if ok.empty:
        raise SweepNotFound(f"sweep {parent_run_id} has no trial with a finite objective")
    return ok.iloc[0]


def ensemble_rows(frame: pd.DataFrame, k: int, distinct: bool, required: bool) -> pd.DataFrame:
    """The ensemble's members; none (with a note) when the sweep has too few, unless ``required``."""
    try:
        return ensemble_members(frame, k, distinct)
    except SweepNotFound as exc:
        if required:
            raise
        logger.info(f"no ensemble: {exc}")
        return frame[:0]


def policies_for(threshold_policy: str, baseline: str, cfg: dict) -> tuple[str, ...]:
    """The promoted policy first, then the trial's own stated one when it differs."""
    own = stated_policy(baseline, cfg)
    return (threshold_policy,) if own == threshold_policy else (threshold_policy, own)


def baseline_candidates(client, rows: pd.DataFrame, splits, threshold_policy: str, site_calibration: str,
                        folder: Path) -> list[Candidate]:
    """The sweep's enqueued trials (seed baselines, start points), each tested once beside the champion."""
    out = []
    for _, b in rows.iterrows():
        try:
            payload = download_checkpoint(client, b["run_id"], folder / b["run_id"])
        except SweepNotFound as exc:
            logger.info(f"  baseline {b['baseline']} left out: {exc}")
            continue
        report = evaluate_once(payload, splits, policies_for(threshold_policy, b["baseline"], payload["config"]),
                               site_calibration)
        out.append(Candidate.of_trial(b["baseline"], b["trial_id"], b["run_id"], payload, report,
                                      own_policy=stated_policy(b["baseline"], payload["config"]),
                                      reused_from=b.get("reused_from", "")))
    return out


def champion_candidate(row: pd.Series, payload: dict, splits, retrain_seeds, threshold_policy: str,
                       site_calibration: str) -> Candidate:
    """The chosen trial, retrained per seed when asked, tested once; it runs at ``threshold_policy``."""
    policies = policies_for(threshold_policy, row["baseline"], payload["config"])
    own = stated_policy(row["baseline"], payload["config"])
    spread = {}
    if retrain_seeds:
        logger.info(f"retraining trial {row['trial_id']} with seeds {list(retrain_seeds)} ...")
        payload, spread = retrain(payload["config"], splits, list(retrain_seeds), policies, site_calibration)
        report = spread.pop("test")
    else:
        report = evaluate_once(payload, splits, policies, site_calibration)
    payload = {**payload, "config": {**payload["config"], "threshold_policy": threshold_policy}}
    name = f"promoted ({row['baseline']})" if row["baseline"] else "promoted"
    return Candidate.of_trial(name, row["trial_id"], row["run_id"], payload, report, retrain_spread=spread,
                              own_policy=own)


def shipped_and_other(single: Candidate, combined: Candidate, ship: str, k: int) -> tuple[Candidate, list[Candidate]]:
    """Which of the single champion and the ensemble ships (``choose_shipped``), and the other, renamed."""
    logger.info(f"combining the {k} best trials: {combined.trial_id.replace('+', ', ')}")
    shipped = choose_shipped(single, combined, ship)
    other = combined if shipped is single else single
    other.name = "single champion" if shipped is combined else f"ensemble of {k} (not shipped)"
    gain = ensemble_gain(single, combined)
    logger.info(f"the ensemble: validation objective {combined.val_objective:.4f} against the single champion's "
                f"{single.val_objective:.4f}; it flags {gain['gained']} validation spills the champion misses and "
                f"misses {gain['lost']} it flags (sign test p = {gain['p']:.3g}): the "
                f"{'ensemble' if shipped is combined else 'single champion'} ships")
    return shipped, [other]


def data_share(parent, override: float | None) -> float:
    from anomaly_ae.data.site import DEFAULT_CALIBRATION_SHARE

    return override if override is not None else float(
        parent.data.tags.get("site_calibration_share", DEFAULT_CALIBRATION_SHARE))


def review_round(client, version, promoted: Candidate, whole, calibration, folder: Path) -> ReviewFiles:
    """The next review round's file and page (earlier verdicts kept), logged to the promotion run."""
    from anomaly_ae.data.site import read_review

    site = promoted.report["site"]
    earlier = (read_review(whole.review_file, whole.names + list(whole.removed), whole.root)
               if whole.review_file else None)
    files = write_review_files(site["calibration"]["scores"], site["threshold"], calibration, earlier, folder,
                               f"Site review: {promoted.variant} ({promoted.score}), {version.name} "
                               f"version {version.version}")
    log_review(client, version.run_id, files, calibration)
    return files


def format_comparison(table: pd.DataFrame) -> str:
    cols = ["config", "trial_id", "variant", "score", "val_objective", "policy", "test_tpr", "tpr_ci", "test_tnr",
            "tnr_ci", "site_tpr", "site_tpr_ci", "site_tnr", "site_tnr_ci", "TP", "FP", "TN", "FN", "test_auroc",
            "threshold", "site_threshold", "oracle_tpr_at_tnr", "own_policy", "own_test_tpr", "own_test_tnr"]
    return table[[c for c in cols if c in table]].to_string(index=False, float_format=lambda v: f"{v:.4g}" if math.isfinite(v) else "-")


def promotion_lines(result: "Promotion", threshold_policy: str, model_name: str) -> list[str]:
    """What `promote` prints: the comparison on test, both operating points, what was registered."""
    p = result.promoted
    lines = [f"promoted trial {p.trial_id} ({p.variant}, score {p.score}); test figures beside the sweep's seed "
             f"baselines and the reference detectors: test_* at the threshold fixed on validation with "
             f"{threshold_policy}, site_* at the threshold the site rule fixes on the site pool (own_*: at each "
             f"one's own stated policy; oracle_tpr_at_tnr: the TPR a threshold fixed on test itself would give at "
             f"the TNR target, for reference only):", format_comparison(result.table)]
    if p.retrain_spread:
        s = p.retrain_spread
        lines.append(f"retrain spread over seeds {s['seeds']}: test TPR {s['test_tpr_mean']:.4f} ± "
                     f"{s['test_tpr_std']:.4f}, TNR {s['test_tnr_mean']:.4f} ± {s['test_tnr_std']:.4f}")
    lines.append(f"  validation threshold: {operating_line(p.report)}")
    if "site" in p.report:
        lines.append(f"  site threshold:       {operating_line(p.report['site'])}  <- shipped")
    if result.review is not None:
        lines.append(f"wrote {result.review.page} and {result.review.table}: the {len(result.review.rows)} highest-"
                     f"scored crops of the pool's calibration part ({result.review.above} above the shipped threshold, "
                     f"{result.review.undecided} not yet marked), to mark spill or normal (open the page, mark, save). "
                     f"Spills among them use false-alarm slots the rule must assume are normals'; promote again with "
                     f"--site-review {result.review.table} to take the marked spills out of the pool")
    lines.append(f"registered {model_name} version {result.version.version} with alias 'champion' "
                 f"(models:/{model_name}@champion)")
    lines.append(f"wrote {result.config_path} (reproduce with: python run_search.py search --config "
                 f"{result.config_path})")
    return lines
