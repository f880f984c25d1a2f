"""The calibration of a model's probabilities over an evaluation: bins summed over images."""

from __future__ import annotations

import threading

import numpy as np
import torch

from inference.calibration import calibration_bins
from inference.predictor import Prediction


class CalibrationTally:
    """Calibration bins of the probability maps (``inference.calibration.calibration_bins``)
    summed over images, with the model's temperature and without it; safe to add to from
    several threads."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.calibrated = self.uncalibrated = 0.0
        self._lock = threading.Lock()

    def add(self, prediction: Prediction, truth: np.ndarray) -> None:
        logits = torch.from_numpy(prediction.logits)
        calibrated = calibration_bins(torch.sigmoid(logits).numpy(), truth)
        raw = calibration_bins(torch.sigmoid(logits * self.temperature).numpy(), truth)
        with self._lock:
            self.calibrated = self.calibrated + calibrated
            self.uncalibrated = self.uncalibrated + raw
