"""Fitting a model's :class:`inference.calibration.Calibration` on held-out images with experts'
masks (the temperature and the quality estimate) and on its training images (the dermoscopy
check), and writing it into the model file: what ``scripts/calibrate.py`` and ``train.py`` run.
Above the :class:`inference.predictor.Predictor`, whose predictions it fits on.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from data.imageio import read_image_reduced
from data.layouts import Pair
from evaluation.scores import overlap_scores, read_scored_mask
from evaluation.sources import training_pairs
from inference.calibration import (
    UNFITTED_REVIEW_BELOW,
    Calibration,
    calibration_error,
    fit_temperature,
)
from inference.image_check import (
    ACQUISITION_VARIANTS,
    SIDE,
    fit_dermoscopy_check,
    image_statistics,
)
from inference.predictor import QUALITY_FLIPS, Predictor
from inference.quality import MIN_FIT_IMAGES, QualityModel, fit_quality_model, flip_features
from inference.review import review_reasons
from models.model_files import write_calibration

# The review threshold flags at most this share of the held-out images.
MAX_FLAGGED = 0.2
JACCARD_FAILURE = 0.65  # a mask below this Jaccard index counts as a failure (the ISIC rule)
FOLDS = 10
# At most this many training images are read for the dermoscopy check.
MAX_CHECK_IMAGES = 1000


@dataclass
class HeldOutImage:
    """What fitting needs of one held-out image: the raw logits of the variants the quality
    estimate reads (``inference.predictor.QUALITY_FLIPS``, the first the image itself) at the
    model's size ``(K, S, S)`` (``K`` is 1 where too few images to fit the estimate), the
    expert's mask at the model's size and at the image's, and the image's statistics for the
    dermoscopy check."""

    logits: np.ndarray
    truth_small: np.ndarray
    truth: np.ndarray
    statistics: dict[str, float]


@dataclass
class QualitySamples:
    """Held-out predictions with experts' masks, as the quality estimate is fitted on them: per
    image, the signals of :func:`inference.quality.flip_features`, the Dice and Jaccard of
    the mask, and which model predicted it (``groups``: 0 to ``K - 1`` for out-of-fold
    predictions of ``K`` models, all 0 for one model's own held-out images)."""

    signals: list[dict[str, float]] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    jaccard: list[float] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    def add(self, signals: dict[str, float], scores: Mapping[str, float], group: int) -> None:
        self.signals.append(signals)
        self.dice.append(scores["dice"])
        self.jaccard.append(scores["jaccard"])
        self.groups.append(group)

    @property
    def failures(self) -> np.ndarray:
        """bool, per image: Jaccard below :data:`JACCARD_FAILURE`."""
        return np.asarray(self.jaccard) < JACCARD_FAILURE


@dataclass
class CalibrationReport:
    """How the fitted calibration did on the images it was fitted on (quality: by
    cross-validation, each image estimated by a model fitted without it)."""

    images: int
    temperature: float
    calibration_error_before: float
    calibration_error_after: float
    review_below: float
    quality_fitted: bool
    failures: int
    flagged: int
    caught: int
    other_reasons: int
    kept_from: str = ""
    quality_images: int = 0
    quality_models: int = 1

    def lines(self) -> list[str]:
        calibrated = (f"calibration: temperature {self.temperature:.3f}, expected calibration "
                      f"error {self.calibration_error_before:.4f} -> "
                      f"{self.calibration_error_after:.4f} on {self.images} held-out images "
                      "(model size)")
        if self.kept_from:
            return [f"calibration not fitted ({self.images} held-out images, {MIN_FIT_IMAGES} "
                    f"needed): temperature {self.temperature:.3f}, quality estimate and review "
                    f"threshold {self.review_below:.3f} kept from the model the run started "
                    f"from ({self.kept_from}); expected calibration error "
                    f"{self.calibration_error_before:.4f} -> {self.calibration_error_after:.4f}"]
        if not self.quality_fitted:
            return [calibrated, f"quality estimate not fitted ({self.images} held-out images, "
                    f"{MIN_FIT_IMAGES} needed): the agreement of the two masks as it is, review "
                    f"below {self.review_below:.3f}"]
        source = (f"on {self.quality_images} out-of-fold predictions of {self.quality_models} "
                  "models, each estimated by a fit without its model's" if self.quality_models > 1
                  else f"on {self.quality_images} held-out images, cross-validated")
        return [calibrated, f"quality estimate fitted {source}; review below "
                f"{self.review_below:.3f} flags {self.flagged} of {self.quality_images} images "
                f"and {self.caught} of their {self.failures} failures (Jaccard < "
                f"{JACCARD_FAILURE}); of the {self.images} held-out images, "
                f"{self.other_reasons} are flagged for another reason (not dermoscopy, no "
                "lesion found, lesion larger than the frame)"]


def fit_calibration(predictor: Predictor, held_out: Sequence[Pair], training: Sequence[Pair],
                    fitted_on: str, *, fallback: Calibration | None = None,
                    out_of_fold: QualitySamples | None = None
                    ) -> tuple[Calibration, CalibrationReport]:
    """Fit a model's :class:`Calibration`.

    Args:
        predictor: the model (its own calibration is ignored: everything is refitted).
        held_out: images with experts' masks the model was not trained on.
        training: images the model was trained on (only the images are read), for the
            dermoscopy check.
        fitted_on: a description of what it is fitted on, stored with the result.
        fallback: the calibration of the model a fine-tuning run started from: its quality
            estimate and review threshold are kept where too few held-out images fit new ones.
        out_of_fold: predictions of other models on images they did not train on
            (:func:`out_of_fold_samples`): the quality estimate and review threshold are fitted
            on them instead of on ``held_out``, which then fit the temperature only.

    Raises:
        ValueError: no held-out or no training images.
        MissingFileError, CorruptFileError: an image or mask cannot be read.
    """
    if not held_out or not training:
        raise ValueError("calibration needs held-out and training images")
    # The mirror image only serves the quality estimate, which needs MIN_FIT_IMAGES images: a
    # short run's calibration reads each image once.
    variants = 2 if len(held_out) >= MIN_FIT_IMAGES else 1
    images = [held_out_image(predictor, pair, variants) for pair in held_out]
    identity = np.stack([image.logits[0] for image in images])
    truth_small = np.stack([image.truth_small for image in images])
    # Too few images to fit the quality estimate fit no temperature either (a handful of masks
    # drawn from the model's own predictions pull it to its bound): the initial model's three
    # values, fitted together, are kept.
    keep = (fallback is not None and bool(fallback.quality.images)
            and len(images) < MIN_FIT_IMAGES)
    temperature = fallback.temperature if keep else fit_temperature(identity, truth_small)
    rng = np.random.default_rng(0)  # draws the sample, then the acquisition variants
    photos = check_sample(training, rng)
    dermoscopy = fit_dermoscopy_check(training_statistics(photos, rng), images=len(photos))
    own, other_reasons = QualitySamples(), 0
    for image, (signals, scores, mask) in zip(images, scored(predictor, images, temperature)):
        own.add(signals, scores, 0)
        other_reasons += bool(review_reasons(mask, None, 0.0,
                                             not dermoscopy.failures(image.statistics)))
    samples = own if out_of_fold is None else out_of_fold
    quality, review_below, estimates = fit_quality(samples)
    kept_from = ""
    if keep:
        quality, review_below = fallback.quality, fallback.review_below
        kept_from = fallback.fitted_on or "its calibration"
        fitted_on += ("; temperature, quality estimate and review threshold kept from the "
                      "initial model")
    calibration = Calibration(temperature, quality, review_below, dermoscopy, fitted_on)
    flagged, failures = estimates < review_below, samples.failures
    report = CalibrationReport(
        len(images), temperature,
        calibration_error(torch.sigmoid(torch.from_numpy(identity)).numpy(), truth_small),
        calibration_error(torch.sigmoid(torch.from_numpy(identity / temperature)).numpy(),
                          truth_small),
        review_below, bool(quality.images), int(failures.sum()), int(flagged.sum()),
        int((flagged & failures).sum()), other_reasons, kept_from, len(samples.signals),
        len(set(samples.groups)))
    return calibration, report


def scored(predictor: Predictor, images: Iterable[HeldOutImage], temperature: float
           ) -> Iterator[tuple[dict[str, float], dict[str, float], np.ndarray]]:
    """Per held-out image, at ``temperature``: the quality signals of its variants, the
    scores of its full-size mask against the expert's (:func:`overlap_scores`), and the mask."""
    for image in images:
        probabilities = torch.sigmoid(torch.from_numpy(image.logits / temperature)).numpy()
        mask = predictor.full_size_mask(torch.from_numpy(image.logits[0] / temperature),
                                        image.truth.shape)
        yield (flip_features(probabilities, predictor.threshold),
               overlap_scores(mask, image.truth), mask)


def out_of_fold_samples(models: Sequence[Predictor]) -> QualitySamples:
    """The predictions of each model on the validation split it held out (``train.py
    --fold``, read from its file), at its own temperature: with one model per fold, every
    training image predicted once by a model that never saw it.

    Raises:
        CheckpointError, DatasetError: a model does not record its training data, or that
            data is not found (:func:`evaluation.sources.training_pairs`).
        MissingFileError, CorruptFileError: an image or mask cannot be read.
    """
    samples = QualitySamples()
    for group, model in enumerate(models):
        pairs = training_pairs(model.info, "val")[1]
        images = (held_out_image(model, pair, len(QUALITY_FLIPS)) for pair in pairs)
        for signals, scores, _ in scored(model, images, model.calibration.temperature):
            samples.add(signals, scores, group)
    return samples


def fit_quality(samples: QualitySamples) -> tuple[QualityModel, float, np.ndarray]:
    """The quality estimate fitted on ``samples``, its review threshold, and the estimates
    the threshold was chosen on (:func:`cross_validated_estimates`)."""
    quality = fit_quality_model(samples.signals, samples.dice)
    estimates = cross_validated_estimates(samples)
    review_below = (review_threshold(estimates, samples.failures) if quality.images
                    else UNFITTED_REVIEW_BELOW)
    return quality, review_below, estimates


def calibrate_file(predictor: Predictor, held_out: Sequence[Pair], training: Sequence[Pair],
                   fitted_on: str, *, fallback: Calibration | None = None,
                   out_of_fold: QualitySamples | None = None) -> CalibrationReport:
    """Fit the calibration of the predictor's model (:func:`fit_calibration`) and store it in
    its file, ``predictor.checkpoint_path`` (:func:`models.model_files.write_calibration`).

    Raises:
        CheckpointError: the model file cannot be written back as a model of this project.
        ValueError, MissingFileError, CorruptFileError: as :func:`fit_calibration`.
    """
    calibration, report = fit_calibration(predictor, held_out, training, fitted_on,
                                          fallback=fallback, out_of_fold=out_of_fold)
    write_calibration(predictor.checkpoint_path, calibration.to_dict())
    return report


def held_out_image(predictor: Predictor, pair: Pair, variants: int) -> HeldOutImage:
    """The raw logits of ``pair.image`` and (``variants`` 2) its mirror image, and its
    expert's mask at both sizes."""
    loaded = predictor.read(pair.image)
    logits = predictor.flip_logits(loaded.tensor[None], QUALITY_FLIPS[:variants])[0].numpy()
    truth = read_scored_mask(pair.mask)
    size = predictor.img_size
    small = cv2.resize(truth.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    return HeldOutImage(logits, small > 0.5, truth, loaded.statistics)


def cross_validated_estimates(samples: QualitySamples) -> np.ndarray:
    """Each image's quality estimate from a model fitted without it: without its predicting
    model's images where there are several models (out-of-fold predictions), else without its
    fold of a seeded :data:`FOLDS`-fold split."""
    signals, dice = samples.signals, samples.dice
    groups = np.asarray(samples.groups)
    if len(set(samples.groups)) > 1:
        folds = [np.flatnonzero(groups == group) for group in np.unique(groups)]
    else:
        folds = np.array_split(np.random.default_rng(0).permutation(len(signals)), FOLDS)
    estimates = np.zeros(len(signals))
    for fold in folds:
        rest = np.setdiff1d(np.arange(len(signals)), fold)
        model = fit_quality_model([signals[i] for i in rest], [dice[i] for i in rest])
        for i in fold:
            estimates[i] = model.estimate(signals[i], empty=signals[i]["area"] == 0)
    return estimates


def review_threshold(estimates: np.ndarray, failures: np.ndarray) -> float:
    """The quality threshold that best separates failures from the rest on held-out images:
    the largest share of failures caught minus the share of all images flagged, flagging at
    most :data:`MAX_FLAGGED` of the images for low quality."""
    best, best_gain = 0.0, -math.inf
    for threshold in np.unique(estimates):
        flagged = estimates < threshold
        if flagged.mean() > MAX_FLAGGED:
            break
        caught = (flagged & failures).sum() / max(failures.sum(), 1)
        if caught - flagged.mean() > best_gain:
            best, best_gain = float(threshold), caught - flagged.mean()
    return best


def check_sample(training: Sequence[Pair], rng: np.random.Generator) -> list[Pair]:
    """The training images the dermoscopy check is fitted on: at most
    :data:`MAX_CHECK_IMAGES`, drawn by ``rng``."""
    pick = rng.permutation(len(training))[:MAX_CHECK_IMAGES]
    return [training[index] for index in sorted(pick)]


def training_statistics(photos: Sequence[Pair], rng: np.random.Generator
                        ) -> list[dict[str, float]]:
    """:func:`inference.image_check.image_statistics` of each photo and of one copy of it
    under each of the :data:`inference.image_check.ACQUISITION_VARIANTS`, drawn by ``rng``."""
    statistics = []
    for pair in photos:
        image = read_image_reduced(pair.image, SIDE)[0]
        statistics += [image_statistics(image)] + [
            image_statistics(variant(image, rng)) for variant in ACQUISITION_VARIANTS.values()]
    return statistics
