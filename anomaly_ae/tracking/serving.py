"""The promoted detector as an MLflow pyfunc model, and scoring a folder of crops with it.

The registered model is logged as code (``detector_model.py``); its artifacts are the trial's
``model.pt`` (weights, config, preprocessing, validation score distributions; tensors and plain
types only), or one ``memberN.pt`` per member of an ensemble (``anomaly_ae.detector.ensemble``), and ``detector.json`` (the score type, the threshold, the decode size, and the
calibration scores the threshold was fixed on: the site pool's, or the validation normals'). ``predict``
takes uint8 crops (N, H, W, 3) at the decode size and returns one row per crop.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from anomaly_ae.detector.testing import calibration_record
from anomaly_ae.stats.thresholds import SITE_RISK, SITE_SPILL_BOUND

DETECTOR_FILE = "detector.json"


class ProlivDetector(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from anomaly_ae.detector.checkpoints import load_checkpoint, load_trained

        self.detector = json.loads(Path(context.artifacts["detector"]).read_text())
        members = sorted((k for k in context.artifacts if k.startswith("member")), key=lambda k: int(k[6:]))
        self.ensemble = None
        if members:
            from anomaly_ae.detector.ensemble import Ensemble, val_scores_of

            payloads = [load_checkpoint(context.artifacts[k]) for k in members]
            self.ensemble = Ensemble(payloads)
            self.val_scores = {split: {"ensemble": v} for split, v in val_scores_of(payloads).items()}
        else:
            payload = load_checkpoint(context.artifacts["checkpoint"])
            self.cfg = payload["config"]
            self.val_scores = payload["val_scores"]
            self.state = load_trained(payload)
        # Detectors registered before site calibration were fixed on validation normals.
        self.detector.setdefault("calibration", calibration_record(self.val_scores["normal"][self.detector["score"]]))

    def use_policy(self, policy: str) -> None:
        """Refix the threshold on the stored validation scores with another policy."""
        from anomaly_ae.stats.thresholds import select_threshold

        score = self.detector["score"]
        normal, spill = self.val_scores["normal"][score], self.val_scores["spill"][score]
        self.detector = {**self.detector, "policy": policy, "threshold": select_threshold(
            policy, normal, spill, self.detector["tnr_target"]),
            "calibration": calibration_record(normal)}

    def calibrate_on_site(self, pool) -> None:
        """Refix the threshold by the site rule on a new window of site crops (a ``SitePool``)."""
        from anomaly_ae.stats.thresholds import site_threshold

        scores = self.score(pool.images)
        threshold = site_threshold(scores, self.detector["tnr_target"], pool.spill_bound, pool.delta)
        self.detector = {**self.detector, "policy": "site", "threshold": threshold,
                         "calibration": calibration_record(scores, pool.describe())}

    def score(self, images) -> np.ndarray:
        from anomaly_ae.detector.validation import score_images

        images = np.asarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 crops shaped (N, H, W, 3), got {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(images))
        if self.ensemble is not None:
            return self.ensemble.score(images)
        scores, _ = score_images(self.state, self.cfg, images)
        return scores[self.detector["score"]]

    def drift(self, scores: np.ndarray, max_spill_fraction: float | None = None, level: float | None = None) -> dict:
        """The drift alarm for a batch of this detector's scores (``anomaly_ae.stats.drift``)."""
        from anomaly_ae.stats.drift import ALARM_LEVEL, drift_check

        cal = self.detector["calibration"]
        bound = float(cal.get("site_max_spill_fraction", SITE_SPILL_BOUND)) if max_spill_fraction is None else max_spill_fraction
        return drift_check(scores, cal["scores"], self.detector["threshold"], self.detector["tnr_target"], bound,
                           ALARM_LEVEL if level is None else level)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        s = self.score(model_input)
        return pd.DataFrame({"score": s, "label": (s > self.detector["threshold"]).astype(int)})


def score_folder(model, folder: Path, decode_size: tuple[int, int]) -> pd.DataFrame:
    """Decode every crop in ``folder`` (named errors for bad files) and score it: name, score, label."""
    from anomaly_ae.data.loading import decode_images, list_images

    paths = list_images(Path(folder))
    frame = model.predict(decode_images(paths, decode_size))
    frame.insert(0, "name", [p.name for p in paths])
    return frame


class PredictionError(ValueError):
    """A bad predict request (a model that cannot be loaded, contradictory options), named by option."""


@dataclass
class Prediction:
    """A scored folder: the frame written, the detector it was scored with, its drift check."""

    frame: pd.DataFrame
    detector: dict
    drift: dict
    recalibrated_on: dict | None = None  # the site window the threshold was refixed on: crops, delta, bound


def predict_folder(tracking_uri: str, model_name: str, model: str, images: Path, out: Path,
                   threshold_policy: str | None = None, site: Path | None = None,
                   site_max_spill_fraction: float | None = None, site_delta: float | None = None,
                   site_review: Path | None = None, alarm_level: float | None = None) -> Prediction:
    """Score ``images`` with a registered detector (alias or version ``model``), write ``out``, check drift,
    and log the check as a run under the detector's promotion run."""
    import time

    from mlflow.tracking import MlflowClient

    from anomaly_ae.tracking.mlflow_runs import log_prediction

    if site is not None and threshold_policy:
        raise PredictionError("--site and --threshold-policy both refix the threshold; give one")
    if site_review is not None and site is None:
        raise PredictionError("--site-review: reviews crops of a --site window; give --site DIR too")
    ref = f"models:/{model_name}/{model}" if model.isdigit() else f"models:/{model_name}@{model}"
    mlflow.set_tracking_uri(tracking_uri)
    try:
        loaded = mlflow.pyfunc.load_model(ref)
    except mlflow.exceptions.MlflowException as exc:
        raise PredictionError(f"--model: cannot load {ref} from {tracking_uri}: {exc.message}") from exc
    detector_model = loaded.unwrap_python_model()
    if threshold_policy:
        detector_model.use_policy(threshold_policy)
    recalibrated_on = None
    if site is not None:
        from anomaly_ae.data import load_site_pool

        pool = load_site_pool(site, tuple(detector_model.detector["decode_size"]),
                              SITE_SPILL_BOUND if site_max_spill_fraction is None else site_max_spill_fraction,
                              SITE_RISK if site_delta is None else site_delta, site_review)
        detector_model.calibrate_on_site(pool)
        recalibrated_on = {"crops": len(pool), "delta": pool.delta, "max_spill_fraction": pool.spill_bound}
    detector = detector_model.detector
    frame = score_folder(loaded, images, tuple(detector["decode_size"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    check = detector_model.drift(frame["score"].to_numpy(), site_max_spill_fraction, alarm_level)
    client = MlflowClient(tracking_uri)
    version = (client.get_model_version(model_name, model) if model.isdigit()
               else client.get_model_version_by_alias(model_name, model))
    log_prediction(tracking_uri, version, f"predict·{images.name}·{time.strftime('%Y-%m-%d %H:%M')}",
                   params={"images": str(images.resolve()), "threshold": detector["threshold"],
                           "policy": detector["policy"], "calibration": detector["calibration"]["source"]},
                   metrics={k: float(v) for k, v in check.items()},
                   tags={"drift_alarm": int(check["alarm"]), "score_shift": int(check["shifted"])})
    return Prediction(frame, detector, check, recalibrated_on)
