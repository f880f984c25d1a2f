"""What a model learns about itself on held-out images, stored with it: a temperature that makes
its probabilities mean what they say, the quality estimate of :mod:`inference.quality`, the
quality below which a mask is flagged for review, and the dermoscopy check of
:mod:`inference.image_check`.

:func:`evaluation.fitting.fit_calibration` fits them: the temperature and the quality estimate on
held-out images with experts' masks (never on the images they will be reported on), the
dermoscopy check on the model's training images. ``scripts/calibrate.py`` runs it and writes
the result into the model file (checkpoint, safetensors or ONNX metadata), and ``train.py``
runs it on its validation split when it finishes, so that every way of predicting gives the
same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from inference.image_check import DermoscopyCheck
from inference.quality import QualityModel

# Review threshold of a model whose quality estimate was never fitted (the model's own expected
# Dice, which is optimistic).
UNFITTED_REVIEW_BELOW = 0.85
CALIBRATION_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


@dataclass(frozen=True)
class Calibration:
    """A model's calibration (see the module docstring).

    Attributes:
        temperature: the model's logits are divided by it before the sigmoid, ``> 0``.
        quality: the quality estimate.
        review_below: a quality below this flags the mask for review, in ``[0, 1]``.
        dermoscopy: the dermoscopy check, ``None`` when not fitted (every image passes).
        fitted_on: what it was fitted on, for people to read.
    """

    temperature: float = 1.0
    quality: QualityModel = field(default_factory=QualityModel.unfitted)
    review_below: float = UNFITTED_REVIEW_BELOW
    dermoscopy: DermoscopyCheck | None = None
    fitted_on: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for a model file."""
        return {"temperature": self.temperature, "quality": self.quality.to_dict(),
                "review_below": self.review_below,
                "dermoscopy": self.dermoscopy.to_dict() if self.dermoscopy else None,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Calibration:
        """What :meth:`to_dict` wrote; ``None`` (a model never calibrated) gives the
        defaults."""
        if not values:
            return cls()
        check = values.get("dermoscopy")
        return cls(float(values["temperature"]), QualityModel.from_dict(values["quality"]),
                   float(values["review_below"]),
                   DermoscopyCheck.from_dict(check) if check else None,
                   str(values.get("fitted_on", "")))


# ---------------------------------------------------------------- temperature and its effect


def fit_temperature(logits: np.ndarray, truth: np.ndarray) -> float:
    """The temperature ``T`` that minimises the binary cross-entropy of ``sigmoid(logits / T)``
    against ``truth`` (Guo et al., 2017, "On calibration of modern neural networks").

    Args:
        logits: float, any shape (the pixels of held-out images).
        truth: bool, the same shape.
    """
    logits = torch.as_tensor(logits, dtype=torch.float64).flatten()
    target = torch.as_tensor(truth, dtype=torch.float64).flatten()

    def loss(log_temperature: float) -> float:
        scaled = logits / math.exp(log_temperature)
        return float(torch.nn.functional.binary_cross_entropy_with_logits(scaled, target))

    low, high = (math.log(value) for value in TEMPERATURE_RANGE)
    return math.exp(minimize_scalar(loss, bounds=(low, high), method="bounded").x)


def calibration_bins(probabilities: np.ndarray, truth: np.ndarray,
                     bins: int = CALIBRATION_BINS) -> np.ndarray:
    """Per equal-width bin of the predicted probability, the share of the pixels in it, the
    sum of their probabilities and the number of lesion pixels among them, each divided by the
    number of pixels: float64 ``(3, bins)``. Summed over images, each image counts once
    whatever its size.

    Args:
        probabilities: float in ``[0, 1]``, any shape.
        truth: bool, the same shape.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    tallies = [np.bincount(index, minlength=bins),
               np.bincount(index, weights=probabilities, minlength=bins),
               np.bincount(index, weights=truth, minlength=bins)]
    return np.stack(tallies).astype(np.float64) / max(len(probabilities), 1)


def error_of_bins(tallies: np.ndarray) -> float:
    """Expected calibration error of :func:`calibration_bins` (summed over images): the
    pixel-weighted mean over bins of ``|mean probability - share of lesion pixels|``, in
    ``[0, 1]``."""
    return float(np.abs(tallies[1] - tallies[2]).sum() / max(tallies[0].sum(), 1e-12))


def calibration_error(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Expected calibration error of pixel probabilities (Naeini et al., 2015) over
    :data:`CALIBRATION_BINS` equal-width bins: 0 when the probabilities are the frequencies
    they predict.

    Args:
        probabilities: float in ``[0, 1]``, any shape.
        truth: bool, the same shape.
    """
    return error_of_bins(calibration_bins(probabilities, truth))
