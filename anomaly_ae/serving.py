"""The promoted detector as an MLflow pyfunc model, and scoring a folder of crops with it.

The registered model is logged as code (``detector_model.py``); its artifacts are the trial's
``model.pt`` (weights, config, preprocessing, validation score distributions; tensors and plain
types only), or one ``memberN.pt`` per member of an ensemble (``anomaly_ae.ensemble``), and ``detector.json`` (the score type, the threshold, the decode size, and the
calibration scores the threshold was fixed on: the site pool's, or the validation normals'). ``predict``
takes uint8 crops (N, H, W, 3) at the decode size and returns one row per crop.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

DETECTOR_FILE = "detector.json"


class ProlivDetector(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from anomaly_ae.checkpoints import load_checkpoint
        from anomaly_ae.checkpoints import load_trained

        self.detector = json.loads(Path(context.artifacts["detector"]).read_text())
        members = sorted((k for k in context.artifacts if k.startswith("member")), key=lambda k: int(k[6:]))
        self.ensemble = None
        if members:
            from anomaly_ae.ensemble import Ensemble, val_scores_of

            payloads = [load_checkpoint(context.artifacts[k]) for k in members]
            self.ensemble = Ensemble(payloads)
            self.val_scores = {split: {"ensemble": v} for split, v in val_scores_of(payloads).items()}
        else:
            payload = load_checkpoint(context.artifacts["checkpoint"])
            self.cfg = payload["config"]
            self.val_scores = payload["val_scores"]
            self.state = load_trained(payload)
        # Detectors registered before site calibration were fixed on validation normals.
        self.detector.setdefault("calibration", {
            "source": "validation", "scores": self.val_scores["normal"][self.detector["score"]].tolist()})

    def use_policy(self, policy: str) -> None:
        """Refix the threshold on the stored validation scores with another policy."""
        from anomaly_ae.thresholds import select_threshold

        score = self.detector["score"]
        normal, spill = self.val_scores["normal"][score], self.val_scores["spill"][score]
        self.detector = {**self.detector, "policy": policy, "threshold": select_threshold(
            policy, normal, spill, self.detector["tnr_target"]),
            "calibration": {"source": "validation", "scores": normal.tolist()}}

    def calibrate_on_site(self, pool) -> None:
        """Refix the threshold by the site rule on a new window of site crops (a ``SitePool``)."""
        from anomaly_ae.thresholds import site_threshold

        scores = self.score(pool.images)
        threshold = site_threshold(scores, self.detector["tnr_target"], pool.max_spill_fraction, pool.delta)
        self.detector = {**self.detector, "policy": "site", "threshold": threshold,
                         "calibration": {"source": "site", "scores": scores.tolist(), **pool.describe()}}

    def score(self, images) -> np.ndarray:
        from anomaly_ae.validation import score_images

        images = np.asarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 crops shaped (N, H, W, 3), got {images.shape}")
        images = torch.from_numpy(np.ascontiguousarray(images))
        if self.ensemble is not None:
            return self.ensemble.score(images)
        scores, _ = score_images(self.state, self.cfg, images)
        return scores[self.detector["score"]]

    def drift(self, scores: np.ndarray, max_spill_fraction: float | None = None, level: float | None = None) -> dict:
        """The drift alarm for a batch of this detector's scores (``anomaly_ae.drift``)."""
        from anomaly_ae.drift import ALARM_LEVEL, drift_check

        cal = self.detector["calibration"]
        bound = float(cal.get("site_max_spill_fraction", 0.05)) if max_spill_fraction is None else max_spill_fraction
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
