"""An evaluation's result and its report: one typed result for every way of scoring, written
as ``metrics.csv`` (one row per image), ``summary.json`` (one schema), a histogram of the
per-image Jaccard index and a grid of the worst cases."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.agreement import measurement_agreement
from evaluation.failure_detection import quality_summary
from evaluation.plots import Case, plot_histogram, plot_risk_coverage, plot_worst
from evaluation.scores import METRICS, summarize
from inference.calibration import error_of_bins
from inference.review import NOT_DERMOSCOPY

if TYPE_CHECKING:
    from evaluation.calibration_tally import CalibrationTally

REPORT_FILES = ("metrics.csv", "summary.json", "jaccard_histogram.png", "worst_cases.png",
                "risk_coverage.png")
# The measurements compared with the experts' (the columns predicted_<name>, expert_<name>).
MEASUREMENTS = ("area_px", "max_diameter_px", "perpendicular_diameter_px", "asymmetry",
                "border_irregularity", "colour_count")
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
        quality: whether the quality estimate was computed (``checkpoint`` mode).
        review_below: the quality below which masks were flagged (``checkpoint`` mode).
        mm_per_pixel: the pixel size given for the measurements, if any.
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
    quality: bool = False
    review_below: float | None = None
    mm_per_pixel: float | None = None


@dataclass
class Evaluation:
    """One evaluation: its settings, one row of scores per image (``id``, ``height``,
    ``width``, every metric of :data:`evaluation.scores.METRICS` and the pixel counts; with a
    model, the quality estimate and review flag; the measurements of the predicted and the
    expert's mask), in id order, the worst cases for the grid, the calibration of the
    probability maps (with a model at original resolution) and the share of pictures that are
    not dermoscopy which the check flagged (when such pictures were given)."""

    settings: EvaluationSettings
    rows: list[dict[str, Any]]
    worst: list[Case]
    calibration: CalibrationTally | None = None
    non_dermoscopy: dict[str, Any] | None = None
    acquisition_variants: dict[str, dict[str, int]] | None = None

    def summary(self) -> dict[str, Any]:
        """``summary.json``: :func:`evaluation.scores.summarize` of the rows, the settings,
        and ``quality``, ``measurements``, ``calibration``, ``non_dermoscopy``,
        ``acquisition_variants`` (``None`` where not measured)."""
        return {**summarize(self.rows), "settings": asdict(self.settings),
                "quality": self._quality(), "measurements": self._measurements(),
                "calibration": self._calibration(), "non_dermoscopy": self.non_dermoscopy,
                "acquisition_variants": self.acquisition_variants}

    def _quality(self) -> dict[str, Any] | None:
        if not self.rows or self.rows[0].get("quality", "") == "":
            return None
        return quality_summary(self.rows, self.settings.review_below)

    def _measurements(self) -> dict[str, Any] | None:
        if not self.rows or "predicted_area_px" not in self.rows[0]:
            return None
        sides = [[{name: row[f"{side}_{name}"] for name in MEASUREMENTS} for row in self.rows]
                 for side in ("predicted", "expert")]
        return measurement_agreement(*sides, MEASUREMENTS)

    def _calibration(self) -> dict[str, Any] | None:
        if self.calibration is None:
            return None
        return {"temperature": self.calibration.temperature,
                "expected_calibration_error": error_of_bins(self.calibration.calibrated),
                "expected_calibration_error_without_temperature":
                    error_of_bins(self.calibration.uncalibrated)}


def write_report(evaluation: Evaluation, out_dir: Path) -> dict[str, Any]:
    """Write the :data:`REPORT_FILES` into ``out_dir`` (created) and return the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = evaluation.summary()
    write_csv(evaluation.rows, out_dir / "metrics.csv")
    (out_dir / "summary.json").write_text(
        json.dumps(without_nan(summary), indent=2, allow_nan=False) + "\n")
    plot_histogram([row["jaccard"] for row in evaluation.rows], out_dir / "jaccard_histogram.png")
    plot_worst(evaluation.worst, out_dir / "worst_cases.png")
    if summary["quality"] is not None:
        plot_risk_coverage(evaluation.rows, out_dir / "risk_coverage.png")
    return summary


def without_nan(value: Any) -> Any:
    """``value`` with every NaN float inside it replaced by ``None`` (JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns = list(rows[0]) if rows else ["id"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def format_table(summary: dict[str, Any]) -> str:
    """The summary as text: mean, median and standard deviation of every metric, then the
    quality estimate, the calibration and the measurements where they were measured."""
    lines = [f"{'metric':<22}{'mean':>10}{'median':>10}{'std':>10}"]
    for name in METRICS:
        stats = summary["metrics"][name]
        lines.append(f"{LABELS[name]:<22}" + "".join(_cell(v) for v in (
            stats["mean"], stats["median"], stats["std"])))
    if summary["hd95_undefined"]:
        lines[-1] += f"   ({summary['hd95_undefined']} undefined: one mask empty)"
    lines.append(f"ISIC 2018 ranking score (mean thresholded Jaccard): "
                 f"{summary['ranking_score']:.4f} over {summary['images']} images")
    return "\n".join(lines + quality_lines(summary) + measurement_lines(summary))


def _cell(value: float | None) -> str:
    return f"{value:>10.4f}" if value is not None and not math.isnan(value) else f"{'-':>10}"


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def quality_lines(summary: dict[str, Any]) -> list[str]:
    """The quality estimate's scores and the calibration, as text (none when not measured)."""
    lines = []
    quality, calibration = summary["quality"], summary["calibration"]
    if quality is not None:
        not_dermoscopy = quality["reasons"].get(NOT_DERMOSCOPY, 0)
        lines += [
            f"quality estimate: AUROC {_number(quality['auroc'])} for the {quality['failures']}"
            f" failures (Jaccard < 0.65), Spearman {_number(quality['spearman'])} with the "
            f"Dice, AURC {_number(quality['aurc'], 4)} (best possible "
            f"{_number(quality['aurc_optimal'], 4)})",
            f"review flags: {quality['flagged']} of {quality['images']} masks "
            f"({_share(quality['flagged'], quality['images'])}; quality below "
            f"{quality['review_below']:.3f} or another reason: {quality['reasons'] or 'none'}), "
            f"{quality['failures_flagged']} of the {quality['failures']} failures "
            f"({_share(quality['failures_flagged'], quality['failures'])}); mean "
            f"thresholded Jaccard {_number(quality['threshold_jaccard_all'], 4)} of all, "
            f"{_number(quality['threshold_jaccard_unflagged'], 4)} of the unflagged",
            f"dermoscopy images flagged not dermoscopy: {not_dermoscopy} of "
            f"{quality['images']} ({_share(not_dermoscopy, quality['images'])})"]
    if calibration is not None:
        lines.append(
            f"expected calibration error of the probabilities: "
            f"{calibration['expected_calibration_error']:.4f} (temperature "
            f"{calibration['temperature']:.3f}; without it "
            f"{calibration['expected_calibration_error_without_temperature']:.4f})")
    if summary["non_dermoscopy"] is not None:
        check = summary["non_dermoscopy"]
        lines.append(f"not dermoscopy: {check['flagged']} of {check['images']} pictures that are "
                     f"not dermoscopy flagged ({_share(check['flagged'], check['images'])})")
    for kind, counts in (summary["acquisition_variants"] or {}).items():
        lines.append(f"{counts['images']} {kind} copies of the images (seed {counts['seed']}): "
                     f"{counts['flagged']} flagged not dermoscopy "
                     f"({_share(counts['flagged'], counts['images'])})")
    return lines


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "-"


def measurement_lines(summary: dict[str, Any]) -> list[str]:
    """The agreement of the measurements with the experts', as a text table."""
    agreement = summary["measurements"]
    if agreement is None:
        return []
    lines = [f"{'measurement vs expert':<27}{'median rel. err':>16}{'90th pct':>10}{'ICC':>8}"]
    for name, stats in agreement.items():
        lines.append(f"{name:<27}{_number(stats['median_relative_error']):>16}"
                     f"{_number(stats['p90_relative_error']):>10}{_number(stats['icc']):>8}")
    return lines
