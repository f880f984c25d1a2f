"""Scoring predicted lesion masks the way the ISIC 2018 challenge (Task 1) scored submissions.

Every image is scored on its own, at the resolution of its ground truth, and the scores are then
averaged over images (never pooled over the pixels of a data set). Mask files are binarised at
``> 128`` as the official scorer (``isic-challenge-scoring``) binarises its 8-bit PNGs. The
challenge's ranking score is the mean thresholded Jaccard index: an image whose Jaccard index is
below 0.65 scores 0.

Empty masks follow the official scorer: when the ground truth and the prediction are both empty,
Dice, Jaccard and thresholded Jaccard are 1; sensitivity is 1 when the ground truth is empty and
specificity is 1 when it covers the whole image.

HD95, the 95th-percentile Hausdorff distance, is not a challenge metric; it is reported in pixels
of the scored resolution. A mask's boundary is its lesion pixels with a 4-neighbour outside the
lesion or outside the image. For each boundary pixel of one mask the Euclidean distance to the
nearest boundary pixel of the other is taken, and HD95 is the larger of the two directed 95th
percentiles (linear interpolation, as ``np.percentile``), the convention of MONAI's
``compute_hausdorff_distance(percentile=95)``; the distances are exact (float64, found with a
k-d tree over the boundary pixels), so HD95 is the same to the last bit on every run. Both masks
empty: 0. Exactly one mask empty: NaN (undefined), left out of the mean, median and standard
deviation and counted in ``summarize()["hd95_undefined"]``; a fixed penalty such as the image
diagonal would make the mean depend on the image sizes of the data set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.spatial import KDTree

from data.imageio import MASK_THRESHOLD, decode_file
from data.layouts import DatasetError
from utils import confusion_counts, scores_from_counts

JACCARD_THRESHOLD = 0.65
HD_PERCENTILE = 95
METRICS = ("dice", "jaccard", "threshold_jaccard", "sensitivity", "specificity", "accuracy",
           "hd95")
COUNTS = ("tp", "fp", "fn", "tn")
# 4-connected erosion: a pixel is on the boundary if one of its 4 neighbours is background.
CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def binarize(values: np.ndarray) -> np.ndarray:
    """8-bit mask values ``(H, W)`` in ``[0, 255]`` -> bool lesion mask ``values > 128``."""
    return np.asarray(values) > MASK_THRESHOLD


def read_scored_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as the ISIC scorer does: 8-bit grey, lesion where the value is > 128.

    Colour files are converted to grey and 16-bit files scaled to 8 bits (the official scorer
    refuses both).

    Returns:
        bool ``(H, W)``.

    Raises:
        FileNotFoundError, CorruptFileError: the file is missing or cannot be decoded.
        DatasetError: the mask has non-zero values but none above 128 (a 0/1 mask, say), which
            the scorer would read as empty.
    """
    values = decode_file(path, cv2.IMREAD_GRAYSCALE)
    top = int(values.max())
    if 0 < top <= MASK_THRESHOLD:
        raise DatasetError(
            f"{path} has values up to {top} only, so the ISIC rule (lesion > {MASK_THRESHOLD}) "
            "finds no lesion in it; write masks with lesion pixels 255 (e.g. a 0/1 mask * 255)"
        )
    return binarize(values)


def fit_to_truth(pred: np.ndarray, truth_shape: tuple[int, int], name: str,
                 resize: bool = False) -> np.ndarray:
    """The prediction at the ground truth's size: itself, or resized with nearest neighbour.

    Args:
        pred: bool ``(h, w)``.
        truth_shape: ``(H, W)`` of the ground truth.
        name: what to call the prediction in the error (its file name).
        resize: resize a prediction of another size instead of refusing it.

    Raises:
        DatasetError: the sizes differ and ``resize`` is false (the challenge rejected such
            submissions).
    """
    if pred.shape == tuple(truth_shape):
        return pred
    height, width = truth_shape
    if not resize:
        raise DatasetError(
            f"prediction {name} is {pred.shape[1]}x{pred.shape[0]} but its ground truth is "
            f"{width}x{height}; predict at the original size, or pass --resize-pred to resize "
            "it (nearest neighbour)"
        )
    resized = cv2.resize(pred.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    return resized.astype(bool)


def _check_masks(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.dtype != bool or truth.dtype != bool:
        raise ValueError(f"expected bool masks, got {pred.dtype} and {truth.dtype}; binarise "
                         "8-bit masks with evaluation.binarize (lesion > 128)")
    if pred.ndim != 2 or pred.shape != truth.shape:
        raise ValueError(f"expected two (H, W) masks of one size, got {pred.shape} and "
                         f"{truth.shape}")


def overlap_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The challenge's per-image scores from the pixel counts of one image.

    Args:
        pred: bool ``(H, W)`` predicted lesion.
        truth: bool ``(H, W)`` true lesion.

    Returns:
        ``dice``, ``jaccard``, ``threshold_jaccard``, ``sensitivity``, ``specificity``,
        ``accuracy`` (floats in ``[0, 1]``) and the counts ``tp``, ``fp``, ``fn``, ``tn``
        (ints).
    """
    _check_masks(pred, truth)
    counts = confusion_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
    scores = {name: float(value) for name, value in scores_from_counts(counts).items()}
    jaccard = scores.pop("iou")
    return {"dice": scores.pop("dice"), "jaccard": jaccard,
            "threshold_jaccard": thresholded_jaccard(jaccard), **scores,
            **{key: int(counts[key]) for key in COUNTS}}


def thresholded_jaccard(jaccard: float) -> float:
    """The ISIC 2018 ranking score of one image: ``jaccard`` if it is at least 0.65, else 0."""
    return jaccard if jaccard >= JACCARD_THRESHOLD else 0.0


def boundary(mask: np.ndarray) -> np.ndarray:
    """bool ``(H, W)`` -> bool ``(H, W)``: the lesion pixels with a 4-neighbour that is
    background or outside the image."""
    lesion = np.ascontiguousarray(mask, dtype=np.uint8)
    inner = cv2.erode(lesion, CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return lesion > inner


def _directed_percentile(points: np.ndarray, targets: np.ndarray) -> float:
    """The 95th percentile over ``points`` ``(N, 2)`` of the Euclidean distance to the nearest
    of ``targets`` ``(M, 2)``."""
    distances, _ = KDTree(targets).query(points)
    return float(np.percentile(distances, HD_PERCENTILE))


def hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    """Symmetric 95th-percentile Hausdorff distance between two masks' boundaries, in pixels.

    Args:
        pred: bool ``(H, W)``.
        truth: bool ``(H, W)``.

    Returns:
        A distance ``>= 0``; 0 when both masks are empty, NaN when exactly one is (see the
        module docstring).
    """
    _check_masks(pred, truth)
    pred_edge, truth_edge = np.argwhere(boundary(pred)), np.argwhere(boundary(truth))
    if len(pred_edge) == 0 and len(truth_edge) == 0:
        return 0.0
    if len(pred_edge) == 0 or len(truth_edge) == 0:
        return math.nan
    return max(_directed_percentile(pred_edge, truth_edge),
               _directed_percentile(truth_edge, pred_edge))


def score_masks(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS` and the pixel counts of one image.

    Args:
        pred: bool ``(H, W)`` predicted lesion.
        truth: bool ``(H, W)`` true lesion, same size.
    """
    return {**overlap_scores(pred, truth), "hd95": hd95(pred, truth)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Statistics over images of per-image scores (as :func:`score_masks` returns them).

    Returns:
        ``images`` (count), ``ranking_score`` (mean thresholded Jaccard, the ISIC 2018 ranking
        score), ``metrics``: ``{name: {"mean", "median", "std"}}`` with the sample standard
        deviation (ddof 1), and ``hd95_undefined``: the number of images whose HD95 is NaN,
        which the statistics of ``hd95`` leave out. A statistic with no value to compute it
        from is ``None``.
    """
    if not rows:
        raise ValueError("no images to summarise")
    metrics = {}
    for name in METRICS:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        metrics[name] = _statistics(values[~np.isnan(values)])
    return {
        "images": len(rows),
        "ranking_score": metrics["threshold_jaccard"]["mean"],
        "metrics": metrics,
        "hd95_undefined": sum(math.isnan(row["hd95"]) for row in rows),
    }


def _statistics(values: np.ndarray) -> dict[str, float | None]:
    def value(compute, minimum: int) -> float | None:
        return float(compute(values)) if len(values) >= minimum else None

    return {"mean": value(np.mean, 1), "median": value(np.median, 1),
            "std": value(lambda v: np.std(v, ddof=1), 2)}
