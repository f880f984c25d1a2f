"""Agreement between lesion measurements read off predicted masks and off experts' masks.

A segmentation can score a high Dice and still misjudge what a dermatologist reads off it (a
diameter, the border index): these statistics compare the two per measurement, over images.
Values are paired by position (image ``i`` of the predictions with image ``i`` of the experts).

- Relative error per image: ``|p - e| / e``. Images whose expert value is 0 (an empty expert
  mask) have no relative error: NaN, left out of the medians and percentiles.
- ICC(2,1) (P. E. Shrout and J. L. Fleiss, "Intraclass correlations: uses in assessing rater
  reliability", Psychological Bulletin 86(2):420-428, 1979): two-way random effects, absolute
  agreement, single rater. Unlike Pearson's correlation it counts a constant offset or a
  scale error against agreement: it is 1 only when the two series are equal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

P90 = 90


def relative_errors(predicted: Sequence[float] | np.ndarray,
                    expert: Sequence[float] | np.ndarray) -> np.ndarray:
    """Relative error ``|p - e| / |e|`` per image.

    Args:
        predicted: ``(N,)`` measurements of the predicted masks.
        expert: ``(N,)`` the same measurements of the experts' masks.

    Returns:
        float64 ``(N,)``, ``>= 0``; NaN where the expert value is 0 or either value is NaN
        (kept in place, so index ``i`` is still image ``i``).

    Raises:
        ValueError: the inputs are not 1-D or differ in length.
    """
    p, e = _paired(predicted, expert)
    errors = np.full(len(e), math.nan)
    usable = np.isfinite(p) & np.isfinite(e) & (e != 0)
    errors[usable] = np.abs(p[usable] - e[usable]) / np.abs(e[usable])
    return errors


def icc(predicted: Sequence[float] | np.ndarray, expert: Sequence[float] | np.ndarray) -> float:
    """ICC(2,1) between two series of measurements of the same images (two raters).

    Args:
        predicted: ``(N,)`` measurements of the predicted masks.
        expert: ``(N,)`` the same measurements of the experts' masks.

    Returns:
        ICC(2,1), at most 1 (negative when the series disagree more than chance would
        have them); NaN with fewer than 2 images with both values finite, or when every
        value is the same (no variance to explain). Images with a NaN are left out.

    Raises:
        ValueError: the inputs are not 1-D or differ in length.
    """
    p, e = _paired(predicted, expert)
    keep = np.isfinite(p) & np.isfinite(e)
    return icc_2_1(np.column_stack([p[keep], e[keep]]))


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) of a table of ratings: rows are targets (images), columns raters.

    From the two-way ANOVA mean squares of rows (``BMS``), columns (``JMS``) and residual
    (``EMS``) of ``n`` targets and ``k`` raters:
    ``(BMS - EMS) / (BMS + (k - 1) EMS + k (JMS - EMS) / n)`` (Shrout & Fleiss, 1979, Table 3).

    Args:
        ratings: ``(n, k)`` finite values, ``n >= 2`` targets, ``k >= 2`` raters.

    Returns:
        ICC(2,1); NaN when ``n < 2`` or the table is constant.

    Raises:
        ValueError: ``ratings`` is not 2-D with at least 2 columns, or holds NaN or inf.
    """
    table = np.asarray(ratings, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] < 2:
        raise ValueError(f"ratings must be (targets, raters) with >= 2 raters, got {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError("ratings must be finite; leave out targets with a missing rating")
    n, k = table.shape
    if n < 2:
        return math.nan
    grand = table.mean()
    target_means, rater_means = table.mean(axis=1), table.mean(axis=0)
    between_targets = k * ((target_means - grand) ** 2).sum() / (n - 1)
    between_raters = n * ((rater_means - grand) ** 2).sum() / (k - 1)
    residual = table - target_means[:, None] - rater_means[None, :] + grand
    error = (residual ** 2).sum() / ((n - 1) * (k - 1))
    denominator = between_targets + (k - 1) * error + k * (between_raters - error) / n
    if denominator <= 0:
        return math.nan
    return float((between_targets - error) / denominator)


def measurement_agreement(predicted_rows: Sequence[Mapping[str, Any]],
                          expert_rows: Sequence[Mapping[str, Any]],
                          names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Agreement per measurement between rows of predicted and of expert measurements.

    Args:
        predicted_rows: one mapping per image, as ``LesionMeasurements.as_row()`` gives (or a
            ``csv.DictReader`` reads back: numbers as strings, unknown values empty).
        expert_rows: the same images in the same order.
        names: the numeric columns to compare, e.g. ``("area_px", "max_diameter_px")``.

    Returns:
        ``{name: {"median_relative_error", "p90_relative_error", "icc", "images"}}``:
        ``images`` counts the images with both values known (finite), which the ICC uses; the
        relative errors leave out those whose expert value is 0 as well. Statistics without an
        image are NaN.

    Raises:
        ValueError: the row lists differ in length, or a value is not a number.
        KeyError: a name is missing from a row.
    """
    if len(predicted_rows) != len(expert_rows):
        raise ValueError(f"{len(predicted_rows)} predicted rows but {len(expert_rows)} expert "
                         "rows; rows must pair image for image")
    result = {}
    for name in names:
        p = np.array([_number(row[name], name) for row in predicted_rows], dtype=np.float64)
        e = np.array([_number(row[name], name) for row in expert_rows], dtype=np.float64)
        errors = relative_errors(p, e)
        errors = errors[np.isfinite(errors)]
        result[name] = {
            "median_relative_error": float(np.median(errors)) if len(errors) else math.nan,
            "p90_relative_error": float(np.percentile(errors, P90)) if len(errors) else math.nan,
            "icc": icc(p, e),
            "images": int((np.isfinite(p) & np.isfinite(e)).sum()),
        }
    return result


def _number(value: Any, name: str) -> float:
    if value is None or (isinstance(value, str) and not value.strip()):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} = {value!r} is not a number; compare numeric columns "
                         "only (colour_count, not colours)") from None


def _paired(predicted: Sequence[float] | np.ndarray,
            expert: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predicted, dtype=np.float64)
    e = np.asarray(expert, dtype=np.float64)
    if p.ndim != 1 or e.ndim != 1 or len(p) != len(e):
        raise ValueError(f"predicted and expert must be 1-D and of one length, got shapes "
                         f"{p.shape} and {e.shape}")
    return p, e
