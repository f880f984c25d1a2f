"""The scoring loops: a model's predictions at each image's original size (as predict.py
writes them) or at the model's input size (as train.py validates), and mask files written by
any tool. Each gives one :class:`evaluation.report.Evaluation`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data.dataset import ISICDataset, eval_transforms
from data.imageio import read_image_reduced
from data.layouts import DatasetError, Pair
from evaluation.calibration_tally import CalibrationTally
from evaluation.plots import WorstCases
from evaluation.report import MEASUREMENTS, Evaluation, EvaluationSettings
from evaluation.scores import fit_to_truth, read_scored_mask, score_masks
from evaluation.sources import MaskFiles
from inference.image_check import ACQUISITION_VARIANTS, image_statistics
from inference.measurements import measure
from inference.predictor import Prediction, Predictor, postprocess


def evaluate_model(predictor: Predictor, pairs: Sequence[Pair], settings: EvaluationSettings,
                   worst: int) -> Evaluation:
    """Score ``predictor``'s masks for ``pairs`` at ``settings.resolution``, keeping the
    ``worst`` lowest-Jaccard images for the grid.

    Raises:
        DatasetError: a mask and its image differ in size, or a file cannot be read.
    """
    cases = WorstCases(worst)
    if settings.resolution == "model":
        return Evaluation(settings, score_at_model_size(predictor, pairs, cases), cases.cases())
    tally = CalibrationTally(predictor.calibration.temperature)
    rows = score_at_original_size(predictor, pairs, cases, tally)
    return Evaluation(settings, rows, cases.cases(), tally)


def evaluate_mask_files(files: Sequence[MaskFiles], settings: EvaluationSettings,
                        worst: int) -> Evaluation:
    """Score predicted mask files against their ground truth, post-processed as ``settings``
    say.

    Raises:
        DatasetError: a prediction's size differs from its ground truth's (unless
            ``settings.resize_pred``), or a mask is unreadable or holds no value above 128.
    """
    cases = WorstCases(worst)
    rows = []
    for item in tqdm(files, unit="image", disable=None, file=sys.stderr):
        truth = read_scored_mask(item.truth)
        prediction = fit_to_truth(read_scored_mask(item.prediction), truth.shape,
                                  str(item.prediction), settings.resize_pred)
        prediction = postprocess(prediction, settings.keep_largest, settings.fill_holes)
        row = score_row(item.id, prediction, truth, item.image, cases)
        rows.append({**row, **measurement_columns(measure(prediction), measure(truth))})
    return Evaluation(settings, rows, cases.cases())


def score_row(id_: str, prediction: np.ndarray, truth: np.ndarray, image: Path | None,
              worst: WorstCases) -> dict[str, Any]:
    """One image's row: its id, size and :func:`evaluation.scores.score_masks`."""
    scores = score_masks(prediction, truth)
    worst.offer(id_, scores["jaccard"], image, truth, prediction)
    return {"id": id_, "height": truth.shape[0], "width": truth.shape[1], **scores}


def measurement_columns(predicted: Any, expert: Any) -> dict[str, Any]:
    """``predicted_<name>`` and ``expert_<name>`` of the :data:`evaluation.report.MEASUREMENTS`
    of two :class:`inference.measurements.LesionMeasurements`."""
    rows = {"predicted": predicted.as_row(), "expert": expert.as_row()}
    return {f"{side}_{name}": row[name] for name in MEASUREMENTS
            for side, row in rows.items()}


def check_non_dermoscopy(predictor: Predictor, paths: Sequence[Path]) -> dict[str, Any]:
    """How many of these pictures, none of them dermoscopy, the model's dermoscopy check
    flags: ``images``, ``flagged``, ``share`` and the names of those it let pass."""
    check = predictor.calibration.dermoscopy
    passed = [path.name for path in paths
              if check is None or not check.failures(predictor.read(path).statistics)]
    return {"images": len(paths), "flagged": len(paths) - len(passed),
            "share": (len(paths) - len(passed)) / max(len(paths), 1), "passed": passed}


def check_acquisition_variants(predictor: Predictor, paths: Sequence[Path], copies: int,
                               seed: int) -> dict[str, dict[str, int]]:
    """How many copies of these dermoscopy images, as other acquisitions give them
    (:data:`inference.image_check.ACQUISITION_VARIANTS`, ``copies`` of each image per kind,
    drawn from ``seed``), the model's dermoscopy check flags; each image decoded as
    ``predict.py`` decodes it. ``{kind: {"images", "flagged", "seed"}}``."""
    check = predictor.calibration.dermoscopy
    rng = np.random.default_rng(seed)
    counts = {kind: {"images": 0, "flagged": 0, "seed": seed} for kind in ACQUISITION_VARIANTS}
    for path in paths:
        image = read_image_reduced(path, predictor.img_size)[0]
        for kind, variant in ACQUISITION_VARIANTS.items():
            for _ in range(copies):
                statistics = image_statistics(variant(image, rng))
                counts[kind]["images"] += 1
                counts[kind]["flagged"] += bool(check and check.failures(statistics))
    return counts


def progress_bar(total: int) -> tqdm:
    return tqdm(total=total, unit="image", disable=None, file=sys.stderr)


def score_at_original_size(predictor: Predictor, pairs: Sequence[Pair], worst: WorstCases,
                           tally: CalibrationTally) -> list[dict[str, Any]]:
    """Predict each image at its original size (as predict.py does, decoding and scoring in
    threads beside the model) and score it there: the masks, the quality estimate, the
    measurements against the expert's and the calibration of the probabilities; rows in id
    order."""
    by_image = {pair.image: pair for pair in pairs}

    def score(path: Path, prediction: Prediction) -> dict[str, Any]:
        pair = by_image[path]
        truth = read_scored_mask(pair.mask)
        if truth.shape != prediction.mask.shape:
            raise DatasetError(
                f"mask {pair.mask} is {truth.shape[1]}x{truth.shape[0]} but image "
                f"{pair.image} is {prediction.mask.shape[1]}x{prediction.mask.shape[0]}; they "
                "must have the same size (as the image is shown, EXIF orientation applied)")
        tally.add(prediction, truth)
        expert = measure(truth, prediction.image, prediction.mm_per_pixel)
        return {**score_row(pair.id, prediction.mask, truth, pair.image, worst),
                **prediction.review_columns(),
                **measurement_columns(prediction.measurements, expert)}

    rows = []
    with progress_bar(len(pairs)) as bar:
        for _, outcome in predictor.predict_files(list(by_image), score):
            if isinstance(outcome, BaseException):
                raise outcome
            rows.append(outcome)
            bar.update()
    return sorted(rows, key=lambda row: row["id"])


def score_at_model_size(predictor: Predictor, pairs: Sequence[Pair],
                        worst: WorstCases) -> list[dict[str, Any]]:
    """Score at the model's input size exactly as train.py validates: the training data set
    class and transform, ``sigmoid(logits) > threshold``, the true mask ``> 0.5``."""
    dataset = ISICDataset(pairs, eval_transforms(predictor.img_size, predictor.mean,
                                                 predictor.std))
    images = {pair.id: pair.image for pair in pairs}
    rows = []
    with progress_bar(len(pairs)) as bar:
        for batch in DataLoader(dataset, batch_size=predictor.settings.batch_size):
            lesion = torch.sigmoid(predictor.predict_logits(batch["image"]).cpu())
            predicted = (lesion > predictor.threshold)[:, 0].numpy()
            truths = (batch["mask"] > 0.5)[:, 0].numpy()
            for id_, prediction, truth in zip(batch["id"], predicted, truths):
                prediction = postprocess(prediction, predictor.settings.keep_largest,
                                         predictor.settings.fill_holes)
                rows.append(score_row(id_, prediction, truth, images[id_], worst))
                bar.update()
    return rows
