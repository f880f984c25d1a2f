"""Is this picture a dermoscopy image? A cheap check of the image's own statistics against the
ranges they take on the images the model was trained on.

A dermoscopy image is a close-up of skin under even light: mostly warm, moderately coloured
pixels, few hard edges, a narrow range of hues. Seven statistics of a 64 x 64 copy of the image
measure that, and each has a side on which other pictures fall: a grey or blank frame has no
colour, a text page or a photograph of objects has hard edges, a colourful scene has many hues,
an over- or under-exposed frame has clipped pixels. The check is one-sided per statistic: a
picture fails when any statistic lies beyond the range of the training images (their 0.5th or
99.5th percentile, :func:`fit_dermoscopy_check`).

The bounds are fitted on the training images and on one copy of each as another camera or
clinic might give it (:func:`camera_variant`: a colour cast, another exposure and gamma,
sharpening, JPEG compression), so that ordinary dermoscopy photos of other dermatoscopes pass
(docs/experiments.md, "Not dermoscopy").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

SIDE = 64
# For each statistic, the side on which pictures that are not dermoscopy fall.
STATISTICS = {
    "warm_share": "low",  # share of lit pixels with a warm hue (red to yellow): skin
    "lit_share": "low",  # share of pixels that are not dark
    "median_chroma": "low",  # colourfulness of the lit pixels (CIELAB chroma)
    "lightness_spread": "low",  # standard deviation of the lightness
    "hue_entropy": "high",  # spread of the hues of the coloured pixels (nats)
    "strong_edges": "high",  # share of pixels on a hard edge (text, objects, graphics)
    "clipped_share": "high",  # share of pixels at black or white (blank, saturated frames)
}
# Percentiles of the training images' statistics that bound the accepted ranges.
PERCENTILE = 0.5
LIT_LIGHTNESS = 25.0  # CIELAB L* above which a pixel is lit
COLOURED_CHROMA = 8.0  # CIELAB chroma above which a pixel has a hue
WARM_HUES = (330.0, 90.0)  # degrees of CIELAB hue, through 0: magenta-red to yellow
HUE_BINS = 12
STRONG_EDGE = 200.0  # Sobel gradient magnitude of a hard edge (8-bit grey, 64 px copy)
CLIPPED = (5, 250)  # RGB maxima at or beyond which a pixel is black or white
# Ranges of camera_variant, set for the dermatoscopes and cameras users bring, not tuned on
# the sets the check is reported on: per-channel gain (a colour cast), exposure gain, gamma,
# unsharp-mask amount, JPEG quality.
CAST_GAIN = (0.8, 1.2)
EXPOSURE_GAIN = (0.7, 1.4)
GAMMA = (0.7, 1.4)
SHARPENING = (0.0, 1.5)
JPEG_QUALITY = (30, 95)


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """The :data:`STATISTICS` of an RGB image.

    Args:
        image: uint8 ``(H, W, 3)`` RGB, any size (a reduced decode is enough).

    Returns:
        ``{name: value}``: shares in ``[0, 1]``, ``median_chroma`` and ``lightness_spread`` in
        CIELAB units, ``hue_entropy`` in ``[0, log(12)]`` nats.
    """
    small = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab).reshape(-1, 3).astype(np.float32)
    lightness = lab[:, 0] * (100 / 255)
    a, b = lab[:, 1] - 128, lab[:, 2] - 128
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a)) % 360
    lit = lightness > LIT_LIGHTNESS
    coloured = lit & (chroma > COLOURED_CHROMA)
    warm = coloured & ((hue > WARM_HUES[0]) | (hue < WARM_HUES[1]))
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    brightest = small.max(axis=2)
    return {
        "warm_share": float(warm.sum() / max(lit.sum(), 1)),
        "lit_share": float(lit.mean()),
        "median_chroma": float(np.median(chroma[lit])) if lit.any() else 0.0,
        "lightness_spread": float(lightness.std()),
        "hue_entropy": _entropy(np.histogram(hue[coloured], bins=HUE_BINS, range=(0, 360))[0]),
        "strong_edges": float((gradient > STRONG_EDGE).mean()),
        "clipped_share": float(((brightest <= CLIPPED[0]) | (brightest >= CLIPPED[1])).mean()),
    }


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    shares = counts[counts > 0] / total
    return float(-(shares * np.log(shares)).sum())


@dataclass(frozen=True)
class DermoscopyCheck:
    """The accepted range of each statistic: its bound on the side where other pictures fall.

    Attributes:
        bounds: ``{name: bound}`` for the names of :data:`STATISTICS`: a lower bound for the
            ``low`` ones, an upper bound for the ``high`` ones.
        images: the number of training images the bounds come from (each also as a
            :func:`camera_variant`).
    """

    bounds: dict[str, float]
    images: int

    def failures(self, statistics: Mapping[str, float]) -> list[str]:
        """The statistics of an image (:func:`image_statistics`) beyond their bounds."""
        return [name for name, side in STATISTICS.items()
                if (statistics[name] < self.bounds[name] if side == "low"
                    else statistics[name] > self.bounds[name])]

    def to_dict(self) -> dict[str, object]:
        return {"bounds": dict(self.bounds), "images": self.images}

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> DermoscopyCheck:
        return cls({name: float(value) for name, value in values["bounds"].items()},
                   int(values["images"]))


def camera_variant(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` as another dermatoscope or camera might give it: a random colour cast,
    exposure and gamma, sharpening and JPEG compression within the ranges above.

    Args:
        image: uint8 ``(H, W, 3)`` RGB.
        rng: the only source of randomness.

    Returns:
        uint8 ``(H, W, 3)`` RGB.
    """
    gains = rng.uniform(*CAST_GAIN, 3)
    gains *= rng.uniform(*EXPOSURE_GAIN) / gains.mean()
    scaled = np.clip(image.astype(np.float32) * (gains / 255), 0, 1) ** rng.uniform(*GAMMA)
    variant = (scaled * 255 + 0.5).astype(np.uint8)
    amount = rng.uniform(*SHARPENING)
    blurred = cv2.GaussianBlur(variant, (0, 0), max(variant.shape[:2]) / 256)
    variant = cv2.addWeighted(variant, 1 + amount, blurred, -amount, 0)
    quality = int(rng.integers(*JPEG_QUALITY, endpoint=True))
    encoded = cv2.imencode(".jpg", variant[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def fit_dermoscopy_check(statistics: Sequence[Mapping[str, float]],
                         images: int | None = None) -> DermoscopyCheck:
    """Bounds at the :data:`PERCENTILE` (low side) and ``100 - PERCENTILE`` (high side)
    percentiles of the statistics of dermoscopy images (a model's training images and their
    :func:`camera_variant` copies); ``images`` is the number of photos they come from
    (default: one per row of ``statistics``).

    Raises:
        ValueError: no images.
    """
    if not statistics:
        raise ValueError("no images to fit the dermoscopy check on")
    bounds = {}
    for name, side in STATISTICS.items():
        values = [row[name] for row in statistics]
        bounds[name] = float(np.percentile(values, PERCENTILE if side == "low"
                                           else 100 - PERCENTILE))
    return DermoscopyCheck(bounds, len(statistics) if images is None else images)
