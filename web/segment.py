"""One request of the page's ``/segment`` endpoint: each uploaded photo predicted as
``predict.py`` does, its files written into the page's temporary folder."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import UserError
from data.imageio import write_mask
from inference import outputs
from web.results import Failure, PhotoResult
from web.table import summary_markdown
from web.views import display_views, write_view

if TYPE_CHECKING:
    from inference.predictor import Predictor

NO_PHOTO = "Results appear here when you upload a photo."


def answer(predictor: Predictor, photos: Sequence[str]) -> tuple:
    """Segment the uploaded photos with ``predictor`` (this request's settings) and fill the
    page's outputs.

    Returns:
        The outline, mask and probability galleries (``(file, caption)`` pairs), the summary
        (Markdown), the ISIC mask files and the CSV file (``None`` without results).
    """
    if not photos:
        return [], [], [], NO_PHOTO, [], None
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="result-", dir=os.environ.get("GRADIO_TEMP_DIR")))
    results, failures = segment_photos(predictor, [Path(photo) for photo in photos], folder)
    table = folder / outputs.PREDICTIONS_CSV
    outputs.write_predictions_csv(rows_in_order(results, failures, photos), table)
    summary = summary_markdown(results, failures, predictor.settings,
                               time.perf_counter() - started)
    names = [result.row["image"] for result in results]
    return ([(str(result.outline), name) for result, name in zip(results, names)],
            [(str(result.mask_view), f"{name}: mask") for result, name in zip(results, names)],
            [(str(result.probability_view), f"{name}: probability")
             for result, name in zip(results, names)],
            summary, [str(result.mask) for result in results], str(table))


def segment_photos(predictor: Predictor, photos: Sequence[Path], folder: Path
                   ) -> tuple[list[PhotoResult], list[Failure]]:
    """Segment each photo into its own subfolder of ``folder`` (two uploads may share a name).

    A photo that cannot be read fails alone: it is named in a warning on the page, keeps its
    row (flagged, with the reason) in the table, and the others are still answered.

    Returns:
        The results of the photos that were read, and the failures.
    """
    import gradio as gr

    from inference.predictor import IMAGE_ERRORS

    results: list[PhotoResult] = []
    failures: list[Failure] = []
    for index, photo in enumerate(photos):
        try:
            results.append(segment_photo(predictor, photo, folder / str(index)))
        except (*IMAGE_ERRORS, UserError, MemoryError) as exc:
            message = failure_message(photo, exc)
            failures.append(Failure(index, outputs.failed_row(photo.name, message), message))
            gr.Warning(message)
    return results, failures


def rows_in_order(results: Sequence[PhotoResult], failures: Sequence[Failure],
                  photos: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of all photos, failed ones included, in the order they were uploaded."""
    rows = iter(result.row for result in results)
    failed = {failure.index: failure.row for failure in failures}
    return [failed[index] if index in failed else next(rows) for index in range(len(photos))]


def failure_message(photo: Path, exc: BaseException) -> str:
    """The error of one photo in the words of the page: named by its file name, not by the
    temporary path it was uploaded to."""
    if isinstance(exc, MemoryError):
        return f"{photo.name} is too large for this computer's memory; scale it down"
    return f"{photo.name}: " + str(exc).replace(f"{photo}: ", "").replace(str(photo), "the file")


def segment_photo(predictor: Predictor, photo: Path, folder: Path) -> PhotoResult:
    """Predict one photo as predict.py does and write what the page shows and offers.

    Args:
        predictor: with this request's settings.
        photo: the uploaded file, its original bytes.
        folder: where this photo's files go (created).
    """
    prediction = predictor.predict_file(photo)
    folder.mkdir(parents=True)
    mask = folder / f"{photo.stem}{outputs.OUTPUT_SUFFIXES[0]}"
    write_mask(mask, prediction.mask)
    outline, mask_view, probability_view = display_views(photo, prediction)
    stem = folder / photo.stem
    views = (Path(f"{stem}_outline.jpg"), Path(f"{stem}_mask.png"),
             Path(f"{stem}_probability.jpg"))
    for path, image in zip(views, (outline, mask_view, probability_view)):
        write_view(path, image)
    return PhotoResult(outputs.prediction_row(photo.name, prediction), *views, mask)
