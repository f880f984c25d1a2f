"""An evaluation's result and its report: one typed result for every way of scoring, written
as ``metrics.csv`` (one row per image), ``summary.json`` (one schema), a histogram of the
per-image Jaccard index and a grid of the worst cases."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluation.plots import Case, plot_histogram, plot_worst
from evaluation.scores import COUNTS, METRICS, summarize

REPORT_FILES = ("metrics.csv", "summary.json", "jaccard_histogram.png", "worst_cases.png")
LABELS = {"dice": "Dice", "jaccard": "Jaccard", "threshold_jaccard": "thresholded Jaccard",
          "sensitivity": "sensitivity", "specificity": "specificity", "accuracy": "accuracy",
          "hd95": "HD95 (pixels)"}


@dataclass(frozen=True)
class EvaluationSettings:
    """What was scored and how: the ``settings`` of ``summary.json``, with every key in every
    mode (``None`` where a setting does not apply).

    Attributes:
        mode: ``checkpoint`` (a model predicted the masks) or ``masks`` (mask files scored).
        data: the ground truth's folder (a layout, or a plain folder of masks).
        split: the split of that layout, ``None`` for a plain folder.
        split_source: ``training`` (exactly the checkpoint's own split), ``layout`` or
            ``folder``.
        resolution: ``original`` (each image's own size, the challenge's rule) or ``model``
            (the model's input size, as train.py validates).
        checkpoint: the model file (``checkpoint`` mode).
        predictions: the folder of predicted masks (``masks`` mode).
        threshold, tta, precision, full_decode, img_size: the prediction settings
            (``checkpoint`` mode).
        keep_largest, fill_holes: post-processing, applied in both modes.
        resize_pred: predicted masks of another size were resized (``masks`` mode).
    """

    mode: str
    data: str
    split: str | None
    split_source: str
    resolution: str = "original"
    checkpoint: str | None = None
    predictions: str | None = None
    threshold: float | None = None
    tta: bool = False
    keep_largest: bool = False
    fill_holes: bool = False
    precision: str | None = None
    full_decode: bool = False
    img_size: int | None = None
    resize_pred: bool = False


@dataclass
class Evaluation:
    """One evaluation: its settings, one row of scores per image (``id``, ``height``,
    ``width``, every metric of :data:`evaluation.scores.METRICS` and the pixel counts), in id
    order, and the worst cases for the grid."""

    settings: EvaluationSettings
    rows: list[dict[str, Any]]
    worst: list[Case]

    def summary(self) -> dict[str, Any]:
        """``summary.json``: :func:`evaluation.scores.summarize` of the rows and the
        settings."""
        return {**summarize(self.rows), "settings": asdict(self.settings)}


def write_report(evaluation: Evaluation, out_dir: Path) -> dict[str, Any]:
    """Write the :data:`REPORT_FILES` into ``out_dir`` (created) and return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = evaluation.summary()
    write_csv(evaluation.rows, out_dir / "metrics.csv")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    plot_histogram([row["jaccard"] for row in evaluation.rows], out_dir / "jaccard_histogram.png")
    plot_worst(evaluation.worst, out_dir / "worst_cases.png")
    return summary


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns = ["id", "height", "width", *METRICS, *COUNTS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a text table: mean, median and standard deviation of every metric."""
    lines = [f"{'metric':<22}{'mean':>10}{'median':>10}{'std':>10}"]
    for name in METRICS:
        stats = summary["metrics"][name]
        cells = "".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}"
                        for v in (stats["mean"], stats["median"], stats["std"]))
        lines.append(f"{LABELS[name]:<22}{cells}")
    if summary["hd95_undefined"]:
        lines[-1] += f"   ({summary['hd95_undefined']} undefined: one mask empty)"
    lines.append(f"ISIC 2018 ranking score (mean thresholded Jaccard): "
                 f"{summary['ranking_score']:.4f} over {summary['images']} images")
    return "\n".join(lines)
