"""What prediction writes for each image: the file names of its outputs and its row of
``predictions.csv``, shared by ``predict.py``, the web page and the evaluation."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference.predictor import Prediction

OUTPUT_SUFFIXES = ("_segmentation.png", "_probability.png", "_overlay.jpg")
PREDICTIONS_CSV = "predictions.csv"
# The first columns of predictions.csv; the lesion's measurements follow
# (inference.measurements.MEASUREMENT_COLUMNS).
ROW_COLUMNS = ("image", "width", "height", "lesion_share", "quality", "review", "reason")


def prediction_row(image_name: str, prediction: Prediction) -> dict[str, Any]:
    """The row of ``predictions.csv`` for one image: its file name, size, the lesion's share of
    the image (in ``[0, 1]``), the quality estimate, the review flag (``yes``/``no``) and its
    reason, and the lesion's measurements
    (:meth:`inference.measurements.LesionMeasurements.as_row`)."""
    height, width = prediction.mask.shape
    return {"image": image_name, "width": width, "height": height,
            "lesion_share": round(float(prediction.mask.mean()), 6),
            **prediction.review_columns(), **prediction.measurements.as_row()}


def failed_row(image_name: str, error: BaseException | str) -> dict[str, Any]:
    """The row of an image that could not be read or written: flagged, with the error."""
    return {"image": image_name, "review": "yes", "reason": f"unreadable: {error}"}


def write_predictions_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """``predictions.csv``: one row per image, columns :data:`ROW_COLUMNS` and the
    measurements' (empty where unknown)."""
    from inference.measurements import MEASUREMENT_COLUMNS

    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*ROW_COLUMNS, *MEASUREMENT_COLUMNS], restval="")
        writer.writeheader()
        writer.writerows(rows)
