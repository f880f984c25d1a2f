"""Is this picture a dermoscopy image? A cheap check of the image's own statistics against the
ranges they take on the images the model was trained on.

A dermoscopy image is a close-up of skin under even light: mostly warm, moderately coloured,
lit pixels and few hard edges. Six statistics of a 64 x 64 copy of the image measure that, and
each has a side on which other pictures fall: a grey or blank frame has no colour and little
spread of lightness, a text page or a photograph of objects has hard edges, a dark scene few
lit pixels, a blank or over-exposed frame pixels clipped to black or white in every channel
(the spread of the hues, once a seventh, flagged photos under colour casts and caught no
picture the others let through: docs/experiments.md, "Not dermoscopy"). The check
is one-sided per statistic: a picture fails when any statistic lies beyond the range of the
training images (their 0.25th or 99.75th percentile, :func:`fit_dermoscopy_check`).

The bounds are fitted on the training images and on copies of each as other dermatoscopes,
cameras and clinics give them (:data:`ACQUISITION_VARIANTS`: colour cast, exposure, gamma,
sharpening and JPEG compression; a circular field of view; bright, even light; low resolution;
a higher magnification), so that ordinary dermoscopy photos of other clinics pass
(docs/experiments.md, "Not dermoscopy").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    "strong_edges": "high",  # share of pixels on a hard edge (text, objects, graphics)
    "clipped_share": "high",  # share of pixels black or white in every channel (blank frames)
}
# Percentiles of the training images' statistics that bound the accepted ranges: 6 bounds at
# 0.25 % each flag at most 1.5 % of the pictures they were fitted on.
PERCENTILE = 0.25
LIT_LIGHTNESS = 25.0  # CIELAB L* above which a pixel is lit
COLOURED_CHROMA = 8.0  # CIELAB chroma above which a pixel has a hue
WARM_HUES = (330.0, 90.0)  # degrees of CIELAB hue, through 0: magenta-red to yellow
STRONG_EDGE = 200.0  # Sobel gradient magnitude of a hard edge (8-bit grey, 64 px copy)
# A pixel is black where every channel is at or below the first, white where every channel is at
# or above the second: a bright dermatoscope saturates the red channel of skin, not all three.
CLIPPED = (5, 250)
# Ranges of the acquisition variants, set for the dermatoscopes and cameras users bring, not
# tuned on the sets the check is reported on: per-channel gain (a colour cast), exposure gain,
# gamma, unsharp-mask amount, JPEG quality; the radius of a circular field of view as a share
# of the diagonal; the gain of bright light (clipping); the factor a low-resolution camera
# loses; the magnification (the share of each side kept is its inverse).
CAST_GAIN = (0.8, 1.2)
EXPOSURE_GAIN = (0.7, 1.4)
GAMMA = (0.7, 1.4)
SHARPENING = (0.0, 1.5)
JPEG_QUALITY = (30, 95)
FIELD_RADIUS = (0.40, 0.55)
BRIGHT_GAIN = (1.1, 1.4)
EXPOSED_WHITE = 0.1
RESOLUTION_LOSS = (3.0, 6.0)
MAGNIFICATION = (1.2, 1.6)


def image_statistics(image: np.ndarray) -> dict[str, float]:
    """The :data:`STATISTICS` of an RGB image.

    Args:
        image: uint8 ``(H, W, 3)`` RGB, any size (a reduced decode is enough).

    Returns:
        ``{name: value}``: shares in ``[0, 1]``, ``median_chroma`` and ``lightness_spread`` in
        CIELAB units.
    """
    small = cv2.resize(image, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    # CIELAB of the float pixels: an 8-bit conversion rounds a faint colour to grey, so a
    # dermoscopy photo under a strong cast would measure as colourless as a grey picture
    lab = cv2.cvtColor(small.astype(np.float32) / 255, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    lightness, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    chroma = np.hypot(a, b)
    hue = np.degrees(np.arctan2(b, a)) % 360
    lit = lightness > LIT_LIGHTNESS
    coloured = lit & (chroma > COLOURED_CHROMA)
    warm = coloured & ((hue > WARM_HUES[0]) | (hue < WARM_HUES[1]))
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    brightest, darkest = small.max(axis=2), small.min(axis=2)
    return {
        "warm_share": float(warm.sum() / max(lit.sum(), 1)),
        "lit_share": float(lit.mean()),
        "median_chroma": float(np.median(chroma[lit])) if lit.any() else 0.0,
        "lightness_spread": float(lightness.std()),
        "strong_edges": float((gradient > STRONG_EDGE).mean()),
        "clipped_share": float(((brightest <= CLIPPED[0]) | (darkest >= CLIPPED[1])).mean()),
    }


@dataclass(frozen=True)
class DermoscopyCheck:
    """The accepted range of each statistic: its bound on the side where other pictures fall.

    Attributes:
        bounds: ``{name: bound}`` for the names of :data:`STATISTICS`: a lower bound for the
            ``low`` ones, an upper bound for the ``high`` ones.
        images: the number of training images the bounds come from (each also as its
            :data:`ACQUISITION_VARIANTS`).
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


def circular_field(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` through a dermatoscope with a round field of view: black (or nearly) outside
    a centred circle. uint8 ``(H, W, 3)`` RGB in and out, as every variant."""
    height, width = image.shape[:2]
    radius = rng.uniform(*FIELD_RADIUS) * np.hypot(height, width)
    rows, columns = np.ogrid[:height, :width]
    outside = np.hypot(rows - height / 2, columns - width / 2) > radius
    variant = image.copy()
    variant[outside] = rng.integers(0, CLIPPED[0], endpoint=True)
    return variant


def bright_light(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` under brighter, even light: the slow fall of the light towards the corners
    divided out (a heavily blurred copy of the brightness), then every channel scaled up and
    clipped at 255, as far as a camera's exposure control allows: at most
    :data:`EXPOSED_WHITE` of the pixels turn white in every channel."""
    pixels = image.astype(np.float32)
    light = cv2.GaussianBlur(pixels.mean(axis=2), (0, 0), max(image.shape[:2]) / 4) + 1.0
    even = pixels * (light.mean() / light)[..., None]
    whitest = np.percentile(even.min(axis=2), 100 * (1 - EXPOSED_WHITE))
    gain = min(rng.uniform(*BRIGHT_GAIN), CLIPPED[1] / max(float(whitest), 1.0))
    return np.clip(even * gain, 0, 255).astype(np.uint8)


def low_resolution(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` from a camera with a few times fewer pixels, enlarged back to its size."""
    height, width = image.shape[:2]
    loss = rng.uniform(*RESOLUTION_LOSS)
    small = cv2.resize(image, (max(8, round(width / loss)), max(8, round(height / loss))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def magnified(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` through a stronger magnification: its centre, ``1 / magnification`` of each
    side."""
    height, width = image.shape[:2]
    zoom = rng.uniform(*MAGNIFICATION)
    keep_h, keep_w = max(8, round(height / zoom)), max(8, round(width / zoom))
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return np.ascontiguousarray(image[top:top + keep_h, left:left + keep_w])


# Each turns a uint8 RGB image into one as another acquisition gives it, drawing its settings
# from the generator it is passed; the dermoscopy check is fitted on the training images and
# one copy of each under every variant.
ACQUISITION_VARIANTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "camera": camera_variant,
    "circular field": circular_field,
    "bright light": bright_light,
    "low resolution": low_resolution,
    "magnified": magnified,
}


def fit_dermoscopy_check(statistics: Sequence[Mapping[str, float]],
                         images: int | None = None) -> DermoscopyCheck:
    """Bounds at the :data:`PERCENTILE` (low side) and ``100 - PERCENTILE`` (high side)
    percentiles of the statistics of dermoscopy images (a model's training images and their
    :data:`ACQUISITION_VARIANTS`); ``images`` is the number of photos they come from
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
