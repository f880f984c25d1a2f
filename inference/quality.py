"""How good is a mask? An estimate of the Dice a predicted mask would score against an expert's,
from what the model itself gives.

The model predicts each image twice, as it is and mirrored (the first two variants of
``--tta``), and the signals are read off the two probability maps ``p_k`` at the model's input
size, after the model's temperature (:mod:`inference.calibration`):

- ``flip_agreement``: the Dice of the two masks ``p_k > threshold`` with each other (the mean
  over pairs for more variants): where the model draws a different outline for the mirror
  image it is unsure of it, the strongest simple signal of a segmentation failure (Zenk et
  al., Medical Image Analysis 2025);
- ``self_dice``: the Dice the mean map ``p`` expects its own mask ``m = p > threshold`` to
  score, ``2 sum(p m) / (sum(p) + sum(m))``: low where much probability lies near the
  threshold, as along a vague border;
- ``flip_std``: the standard deviation of the maps per pixel, averaged over the pixels either
  calls lesion;
- ``area``: the share of the image the mask covers.

The estimate is the sigmoid of a linear combination of the :data:`QUALITY_FEATURES` among them,
each transformed to an unbounded scale (logit, or log for ``flip_std``), standardised and
clipped to the range seen when fitting (so that an image unlike all of them cannot push the
estimate beyond what was fitted), fitted by least squares to the logit of the Dice on held-out
images (:func:`fit_quality_model`). Chosen by cross-validation on the out-of-fold predictions
of five models over 1797 training images: nothing combined with the agreement beat it alone,
and the fitted weight of the mask's area even changed sign between those models and the
bundled one, so the estimate is the agreement alone, mapped to a Dice (docs/experiments.md,
"Quality estimate"). An empty mask's estimate is 0: against a lesion, its Dice is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

QUALITY_FEATURES = ("flip_agreement",)
# Logit and log transforms are clipped this far from 0 and 1.
EPS = 1e-4
# Ridge penalty of the least-squares fit, on standardised signals: keeps the fit defined when
# two signals move together on the fitting images.
RIDGE = 1e-3
# Fewer held-out images than this leave the estimate at the agreement itself.
MIN_FIT_IMAGES = 30


def flip_features(probabilities: np.ndarray, threshold: float) -> dict[str, float]:
    """The signals of one image (the module docstring): those of :data:`QUALITY_FEATURES`,
    and those the estimates of models fitted on other signals read.

    Args:
        probabilities: float ``(K, S, S)``, the lesion probabilities of the ``K``
            flipped variants, flipped back onto the image, values in ``[0, 1]``.
        threshold: the model's lesion threshold in ``(0, 1)``.

    Returns:
        ``flip_agreement``, ``self_dice`` and ``area`` in ``[0, 1]``, ``flip_std`` in
        ``[0, 0.5]``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    masks = probabilities > threshold
    mean = probabilities.mean(axis=0)
    mask = mean > threshold
    expected = float(mean.sum() + mask.sum())
    self_dice = 2 * float(mean[mask].sum()) / expected if expected > 0 else 1.0
    union = masks.any(axis=0)
    flip_std = float(probabilities.std(axis=0)[union].mean()) if union.any() else 0.0
    return {"flip_agreement": mean_pairwise_dice(masks), "self_dice": self_dice,
            "flip_std": flip_std, "area": float(mask.mean())}


def mean_pairwise_dice(masks: np.ndarray) -> float:
    """The mean Dice of every pair of the bool masks ``(K, S, S)``; two empty masks agree
    (1), and so does a single mask with itself."""
    if len(masks) < 2:
        return 1.0
    counts = masks.reshape(len(masks), -1).sum(axis=1).astype(np.float64)
    flat = masks.reshape(len(masks), -1).astype(np.float32)
    overlaps = flat @ flat.T
    pairs = [(i, j) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    return float(np.mean([2 * overlaps[i, j] / (counts[i] + counts[j])
                          if counts[i] + counts[j] else 1.0 for i, j in pairs]))


def transformed(name: str, value: float) -> float:
    """A signal on the unbounded scale it is combined on: log for ``flip_std``, logit for the
    shares."""
    if name == "flip_std":
        return math.log(max(value, EPS))
    value = min(max(value, EPS), 1 - EPS)
    return math.log(value / (1 - value))


@dataclass(frozen=True)
class QualityModel:
    """The fitted map from the signals of a prediction to its estimated Dice.

    Attributes:
        features: the signals' names, :data:`QUALITY_FEATURES`.
        center, scale: per signal, the standardisation of its transformed value.
        low, high: per signal, the range of transformed values seen when fitting; others are
            clipped to it.
        weights, bias: the linear combination of the standardised signals (logit scale).
        images: the number of held-out images it was fitted on (0: not fitted, the estimate
            is the first signal itself, ``flip_agreement``).
    """

    features: tuple[str, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    images: int

    @classmethod
    def unfitted(cls) -> QualityModel:
        """The first of :data:`QUALITY_FEATURES` as it is (the agreement of the variants' masks),
        for models never fitted."""
        count = len(QUALITY_FEATURES)
        return cls(QUALITY_FEATURES, (0.0,) * count, (1.0,) * count, (-math.inf,) * count,
                   (math.inf,) * count, (1.0,) + (0.0,) * (count - 1), 0.0, 0)

    def estimate(self, signals: Mapping[str, float], empty: bool = False) -> float:
        """The estimated Dice in ``[0, 1]`` of a mask with these signals (0 when ``empty``)."""
        if empty:
            return 0.0
        total = self.bias
        for index, name in enumerate(self.features):
            value = min(max(transformed(name, signals[name]), self.low[index]), self.high[index])
            total += self.weights[index] * (value - self.center[index]) / self.scale[index]
        return 1 / (1 + math.exp(-total))

    def to_dict(self) -> dict[str, object]:
        """Plain types for a model file's metadata: lists, infinite bounds as ``None``."""
        values = {key: list(value) if isinstance(value, tuple) else value
                  for key, value in asdict(self).items()}
        for key in ("low", "high"):
            values[key] = [None if math.isinf(bound) else bound for bound in values[key]]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> QualityModel:
        """What :meth:`to_dict` wrote."""
        bounds = {key: tuple((-math.inf if key == "low" else math.inf) if bound is None
                             else float(bound) for bound in values[key])
                  for key in ("low", "high")}
        return cls(tuple(values["features"]), tuple(map(float, values["center"])),
                   tuple(map(float, values["scale"])), bounds["low"], bounds["high"],
                   tuple(map(float, values["weights"])), float(values["bias"]),
                   int(values["images"]))


def fit_quality_model(signals: Sequence[Mapping[str, float]], dice: Sequence[float],
                      features: Sequence[str] = QUALITY_FEATURES) -> QualityModel:
    """Least squares of the logit of each image's Dice (clipped to ``[0.02, 0.98]``) on its
    standardised, transformed signals, with a small ridge penalty.

    Args:
        signals: per held-out image, :func:`flip_features` of its prediction.
        dice: per image, the Dice of its predicted mask against the expert's, in ``[0, 1]``.
        features: the signals to combine (:data:`QUALITY_FEATURES`; others to compare).

    Returns:
        The fitted :class:`QualityModel`; :meth:`QualityModel.unfitted` for fewer than
        :data:`MIN_FIT_IMAGES` images.
    """
    if len(signals) < MIN_FIT_IMAGES:
        return QualityModel.unfitted()
    values = np.array([[transformed(name, row[name]) for name in features]
                       for row in signals])
    center, scale = values.mean(axis=0), values.std(axis=0) + 1e-9
    standard = np.c_[(values - center) / scale, np.ones(len(values))]
    target = np.clip(np.asarray(dice, dtype=np.float64), 0.02, 0.98)
    target = np.log(target / (1 - target))
    penalty = RIDGE * np.eye(standard.shape[1])
    solution = np.linalg.solve(standard.T @ standard + penalty, standard.T @ target)
    return QualityModel(tuple(features), tuple(center.tolist()), tuple(scale.tolist()),
                        tuple(values.min(axis=0).tolist()), tuple(values.max(axis=0).tolist()),
                        tuple(solution[:-1].tolist()), float(solution[-1]), len(signals))
