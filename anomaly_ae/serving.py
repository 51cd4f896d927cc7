"""The promoted detector as an MLflow pyfunc model, and scoring a folder of crops with it.

The registered model is logged as code (``detector_model.py``); its artifacts are the trial's
``model.pt`` (weights, config, preprocessing, validation score distributions; tensors and plain
types only) and ``detector.json`` (the score
type, the threshold fixed on validation, the decode size). ``predict`` takes
uint8 crops (N, H, W, 3) at the decode size and returns one row per crop.
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
        from anomaly_ae.training import load_trained

        payload = load_checkpoint(context.artifacts["checkpoint"])
        self.detector = json.loads(Path(context.artifacts["detector"]).read_text())
        self.cfg = payload["config"]
        self.val_scores = payload["val_scores"]
        self.state = load_trained(payload)

    def use_policy(self, policy: str) -> None:
        """Refix the threshold on the stored validation scores with another policy."""
        from anomaly_ae.thresholds import select_threshold

        score = self.detector["score"]
        self.detector = {**self.detector, "policy": policy, "threshold": select_threshold(
            policy, self.val_scores["normal"][score], self.val_scores["spill"][score], self.detector["tnr_target"])}

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        from anomaly_ae.training import score_images

        images = np.asarray(model_input, dtype=np.uint8)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 crops shaped (N, H, W, 3), got {images.shape}")
        scores, _ = score_images(self.state, self.cfg, torch.from_numpy(np.ascontiguousarray(images)))
        s = scores[self.detector["score"]]
        return pd.DataFrame({"score": s, "label": (s > self.detector["threshold"]).astype(int)})


def score_folder(model, folder: Path, decode_size: tuple[int, int]) -> pd.DataFrame:
    """Decode every crop in ``folder`` (named errors for bad files) and score it: name, score, label."""
    from anomaly_ae.data.loading import decode_images, list_images

    paths = list_images(Path(folder))
    frame = model.predict(decode_images(paths, decode_size))
    frame.insert(0, "name", [p.name for p in paths])
    return frame
