"""The figures of an evaluation report: the histogram of the per-image Jaccard index and the
grid of the worst cases (the images of lowest Jaccard, with both outlines)."""

from __future__ import annotations

import heapq
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.imageio import read_image
from evaluation.scores import JACCARD_THRESHOLD
from inference.predictor import draw_contour

GRID_COLUMNS = 4
THUMBNAIL = 256  # longest side of the pictures in the worst-case grid
TRUTH_RGB = (0, 220, 0)
PREDICTION_RGB = (255, 40, 40)
TRUTH_FILL = 70  # grey level of the true lesion when the grid has no image to draw on


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass(order=True)
class Case:
    """An image kept for the worst-case grid, with small copies of its masks (bool)."""

    jaccard: float
    id: str
    image: Path | None = field(compare=False)
    truth: np.ndarray = field(compare=False)
    prediction: np.ndarray = field(compare=False)


class WorstCases:
    """The ``count`` images of lowest Jaccard index among those offered, in increasing order;
    safe to offer from several threads."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._heap: list[tuple[float, str, Case]] = []  # keyed by -jaccard: the root is the best
        self._lock = threading.Lock()

    def offer(self, id_: str, jaccard: float, image: Path | None, truth: np.ndarray,
              prediction: np.ndarray) -> None:
        """Keep this image if it is among the worst so far (thumbnails made only then)."""
        key = (-jaccard, id_)
        with self._lock:
            if len(self._heap) == self.count and (not self.count or key < self._heap[0][:2]):
                return
        case = Case(jaccard, id_, image, thumbnail(truth), thumbnail(prediction))
        with self._lock:
            if len(self._heap) < self.count:
                heapq.heappush(self._heap, (*key, case))
            elif key > self._heap[0][:2]:
                heapq.heapreplace(self._heap, (*key, case))

    def cases(self) -> list[Case]:
        return sorted(case for *_, case in self._heap)


def thumbnail(mask: np.ndarray) -> np.ndarray:
    """bool ``(H, W)`` -> bool, at most :data:`THUMBNAIL` pixels on its longest side."""
    scale = THUMBNAIL / max(mask.shape)
    if scale >= 1:
        return mask.copy()
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


def plot_histogram(jaccard: Sequence[float], path: Path) -> None:
    """Per-image Jaccard index, with the challenge's 0.65 threshold."""
    plt = pyplot()
    below = sum(value < JACCARD_THRESHOLD for value in jaccard)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(jaccard, bins=np.linspace(0, 1, 41), color="tab:blue")
    ax.axvline(JACCARD_THRESHOLD, color="tab:red", linestyle="--",
               label=f"threshold {JACCARD_THRESHOLD}: the {below} of {len(jaccard)} images "
               "below it score 0")
    ax.set(xlabel="Jaccard index per image", ylabel="images", xlim=(0, 1))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_risk_coverage(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Mean risk ``1 - Dice`` of the masks kept against the share kept, keeping them in the
    order of their quality estimate, beside the order that knew the Dice and a random one."""
    from evaluation.failure_detection import aurc, risk_coverage

    plt = pyplot()
    quality = np.array([row["quality"] for row in rows], dtype=np.float64)
    dice = np.array([row["dice"] for row in rows], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    for confidence, label, style in ((quality, "by the quality estimate", "-"),
                                     (dice, "by the true Dice (best possible)", ":")):
        coverage, risk = risk_coverage(confidence, 1 - dice)
        ax.plot(coverage, risk, style, label=f"{label}: AURC {aurc(confidence, 1 - dice):.4f}")
    ax.axhline(float((1 - dice).mean()), color="grey", linestyle="--",
               label="in random order")
    ax.set(xlabel="share of masks kept (coverage)", ylabel="mean 1 - Dice of those kept",
           xlim=(0, 1), ylim=(0, None))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_worst(cases: Sequence[Case], path: Path) -> None:
    """The worst images with the true (green) and predicted (red) lesion outlines."""
    plt = pyplot()
    rows = max(1, -(-len(cases) // GRID_COLUMNS))
    fig, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(3 * GRID_COLUMNS, 3 * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases):
        canvas = background(case)
        draw_contour(canvas, case.truth, TRUTH_RGB)
        draw_contour(canvas, case.prediction, PREDICTION_RGB)
        ax.imshow(canvas)
        ax.set_title(f"{case.id}\nJaccard {case.jaccard:.3f}", fontsize=9)
    fig.suptitle("lowest Jaccard: ground truth green, prediction red", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def background(case: Case) -> np.ndarray:
    """RGB uint8 at the thumbnail's size: the image, else the true lesion in grey."""
    height, width = case.truth.shape
    if case.image is None:
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[case.truth] = TRUTH_FILL
        return canvas
    return cv2.resize(read_image(case.image), (width, height), interpolation=cv2.INTER_AREA)
