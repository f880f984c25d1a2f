"""The images the page shows: the photo scaled down, the outline drawn on it, the mask and the
probability map. Downloadable masks keep the photo's full size; these do not."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from data.imageio import read_image_reduced, write_image

if TYPE_CHECKING:
    from inference.predictor import Prediction

# Shown images are scaled down to this longest side; the downloadable masks keep the photo's size.
DISPLAY_SIDE = 1024
JPEG_QUALITY = 90


def write_view(path: Path, image: np.ndarray) -> None:
    """A shown image (BGR or gray uint8); JPEG at quality 90 or PNG by the extension."""
    params = (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY) if path.suffix == ".jpg" else ()
    write_image(path, image, params)


def display_size(height: int, width: int) -> tuple[int, int]:
    """``(width, height)`` of a shown image: the photo scaled down to :data:`DISPLAY_SIDE`
    on its longest side, never up."""
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_views(photo: Path, prediction: Prediction
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo with the lesion outlined (its largest diameter drawn, its quality and review
    flag written on it), the mask, and the probabilities in a colour map, BGR or gray uint8 at
    :func:`display_size`.

    The photo is decoded at the JPEG decoder's reduced scale where that still leaves
    :data:`DISPLAY_SIDE` pixels: a 10000x7000 photo is not decoded in full a second time.
    """
    from inference.predictor import draw_prediction

    size = display_size(*prediction.mask.shape)
    image = cv2.cvtColor(display_photo(photo, size), cv2.COLOR_RGB2BGR)
    mask = display_mask(prediction.mask, size)
    draw_prediction(image, prediction)
    probabilities = cv2.resize(prediction.probabilities, size, interpolation=cv2.INTER_AREA)
    colours = cv2.applyColorMap(cv2.convertScaleAbs(probabilities, alpha=255),
                                cv2.COLORMAP_VIRIDIS)
    return image, mask.view(np.uint8) * np.uint8(255), colours


def display_photo(photo: Path, size: tuple[int, int]) -> np.ndarray:
    """The photo as RGB uint8 at ``size`` ``(width, height)``, decoded at the JPEG decoder's
    reduced scale where that still leaves :data:`DISPLAY_SIDE` pixels.

    Raises:
        MissingFileError, CorruptFileError: see :func:`data.imageio.decode_file`.
    """
    image, _ = read_image_reduced(photo, DISPLAY_SIDE // 2)
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def display_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A bool ``(H, W)`` mask scaled to ``size`` ``(width, height)``, bool."""
    # Area averaging of 0/1 rounds to the majority of the pixels each shown pixel covers.
    return cv2.resize(mask.view(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
