"""Putting an image in the form the model takes: area-averaged to a square, then normalised.

One implementation for training, validation and prediction, and light (OpenCV and NumPy
only), so that predicting needs no augmentation library.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def area_resize(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` ``(H, W[, C])`` area-averaged to ``(size, size[, C])`` (returned unchanged
    when it is that size already).

    An image of more than four times the size on each side is first averaged over blocks of
    an integer number of pixels (OpenCV's fast path for whole factors, three times faster on a
    full-resolution mask; the at most ``factor - 1`` pixels left over at the right and bottom
    are dropped), then by the remaining fraction.
    """
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    factor = min(height, width) // (2 * size)
    if factor >= 2:
        image = cv2.resize(image[:height // factor * factor, :width // factor * factor],
                           (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def normalize(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` -> float32 ``(H, W, 3)``: ``(value / 255 - mean) / std`` per
    channel, through a 256-entry table per channel (exact, and a lookup per pixel)."""
    table = ((np.arange(256, dtype=np.float64)[:, None] / 255 - np.asarray(mean))
             / np.asarray(std)).astype(np.float32)
    return table[image, np.arange(3)]


def model_input(image: np.ndarray, size: int, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` of any size -> float32 ``(3, size, size)``, C-contiguous."""
    return np.ascontiguousarray(normalize(area_resize(image, size), mean, std).transpose(2, 0, 1))
