"""Lesion measurements a dermatologist reads off a mask: size, shape, symmetry, border, colours.

:func:`measure` takes a bool lesion mask ``(H, W)`` (and, for the colours, the RGB image the
mask was drawn on) and returns a :class:`LesionMeasurements`; its :meth:`~LesionMeasurements.
as_row` gives the columns of a CSV (:data:`MEASUREMENT_COLUMNS`). :func:`pixel_size_from_file`
reads the millimetres per pixel from an image file's header, where it is believable.

Pixel geometry (one convention for every length and area here): pixel ``(row, column)`` is the
point ``(x, y) = (column, row)``, its centre, and the lesion is the region its border pixels'
centres enclose, widened by half a pixel on every side (the polygon through the centres of the
border pixels, dilated by a disc of diameter 1 px). So a lesion one pixel wide and ``L`` pixels
long measures ``L`` by ``1``, a ``W x H`` rectangle of pixels has the diameter
``hypot(W - 1, H - 1) + 1`` and a digital disc of integer radius ``r`` (the pixels whose
centres lie within ``r`` of an integer centre) has the diameter ``2 r + 1``; unlike a union of
square pixels, the convention does not depend on the lesion's orientation.

A mask in several pieces is measured as one lesion: the hull, the diameters and the principal
axes cover all pieces, the perimeter and enclosed area are summed over them, and the colours are
counted over all of them. Holes do not change the diameters (the hull spans them) or the border
index (the border is the outer border); they do lower ``area_px``.

Cost: area and centre are counted on the full-resolution mask and the hull and the border are
traced on it (``cv2.findContours``); the asymmetry uses a copy of the lesion's bounding box
reduced to at most :data:`REDUCED_SIDE` pixels on its longer side, the colours a grid of at most
:data:`COLOUR_SIDE` pixels along it (see :func:`measure` for the error this adds). With OpenCV
on one thread, a 6000 x 4000 mask with a lesion covering 30 % of it, with the colours of a
6000 x 4000 image, takes about 20 ms on a server core (``scripts/benchmark_measurements.py``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# The ABCD rule's six colours (Stolz et al., 1994), in the order they are reported.
ABCD_COLOURS = ("white", "red", "light brown", "dark brown", "blue-gray", "black")
# Reference colours as normalised sRGB triplets, the values of the automatic ABCD rule of
# R. Kasmi and K. Mokrani, "Classification of malignant melanoma and benign skin lesions:
# implementation of automatic ABCD rule", IET Image Processing 10(6):448-455, 2016
# (doi:10.1049/iet-ipr.2015.0385), table of the colour feature. They are compared in CIELAB
# (D65), where Euclidean distance follows perceived difference better than in RGB.
ABCD_COLOURS_RGB = {
    "white": (1.0, 1.0, 1.0),
    "red": (0.8, 0.2, 0.2),
    "light brown": (0.6, 0.4, 0.0),
    "dark brown": (0.2, 0.0, 0.0),
    "blue-gray": (0.2, 0.6, 0.6),
    "black": (0.0, 0.0, 0.0),
}
# A colour is reported when at least this share of the lesion's pixels is nearest to it: the
# 5 % of lesion pixels of Kasmi & Mokrani (2016); smaller shares are mostly noise, hair and
# the blend of two colours at their boundary.
COLOUR_MIN_SHARE = 0.05
# Longer side, in pixels, of the lesion's bounding box when the asymmetry is computed (the box
# is reduced by the smallest integer factor that reaches it), and of the grid of pixels whose
# colours are classified.
REDUCED_SIDE = 512
COLOUR_SIDE = 256
# Principal second moments within this fraction of each other leave the principal axes to
# pixel noise (a disc, a square, a near-round lesion); the pair of perpendicular axes with the
# least mismatch is then searched (9 degree steps over a quarter turn, refined by 3 and 1
# degree) on a copy at most AXIS_SEARCH_SIDE px long, as the ABCD rule places its axes (Stolz
# et al., 1994).
ISOTROPY_TOLERANCE = 0.05
AXIS_SEARCH_STEPS_DEG = (9, 3, 1)
AXIS_SEARCH_SIDE = 128
# Douglas-Peucker tolerance, in pixels, of the border polygon: a digital border zigzags at most
# about 0.7 px about the true one, so a 1 px tolerance straightens the staircase of pixels
# while keeping corners and any detail larger than a pixel.
BORDER_TOLERANCE_PX = 1.0
# Fields of view (image width in millimetres) a dermatoscope gives: contact dermatoscopes
# image about 10-25 mm of skin, and 60 mm is already a close-up photograph.
FIELD_OF_VIEW_MM = (5.0, 60.0)
MM_PER_UNIT = {2: 25.4, 3: 10.0}  # EXIF ResolutionUnit: 2 = inch, 3 = centimetre
EXIF_X_RESOLUTION = 282
EXIF_RESOLUTION_UNIT = 296

MEASUREMENT_COLUMNS = ("area_px", "max_diameter_px", "perpendicular_diameter_px", "asymmetry",
                       "border_irregularity", "colours", "colour_count", "centre_x", "centre_y",
                       "area_mm2", "max_diameter_mm", "perpendicular_diameter_mm")

# Rows of distance computations at a time when looking for the farthest pair of hull points.
_PAIR_BLOCK = 512


@cache
def reference_lab() -> np.ndarray:
    """The CIELAB values ``(6, 3)`` float32 of :data:`ABCD_COLOURS`: L* in [0, 100], a* and b*
    in about [-128, 127]; white is (100, 0, 0), black (0, 0, 0).

    Computed on first use, never at import: an OpenCV call starts OpenCV's thread pool, and a
    process that imports this module must stay safe to fork.
    """
    rgb = np.array([ABCD_COLOURS_RGB[name] for name in ABCD_COLOURS], np.float32)
    return cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2Lab).reshape(-1, 3)


@dataclass(frozen=True)
class LesionMeasurements:
    """What :func:`measure` reads off one lesion mask.

    Attributes:
        area_px: lesion pixels, ``>= 0``.
        max_diameter_px: the largest distance across the lesion, in pixels (the longest chord
            of its convex hull, pixel convention of the module docstring); 0 for no lesion.
        perpendicular_diameter_px: the lesion's extent at right angles to the largest
            diameter, in pixels (the width of the hull across that direction); 0 for no lesion.
        asymmetry: mismatch of the lesion with its mirror images across its two principal
            axes, in ``[0, 1]``: 0 is symmetric about both, 1 would share no pixel with either
            mirror image; the mean over the two axes (see :func:`measure`). NaN for no lesion.
        border_irregularity: compactness index ``P^2 / (4 pi A)`` of the border, ``>= 1`` in
            theory: about 1 for a disc, 4 / pi = 1.27 for a square, larger for a ragged or
            elongated border. NaN for no lesion.
        colours: the ABCD colours (:data:`ABCD_COLOURS`, in that order) covering at least
            :data:`COLOUR_MIN_SHARE` of the lesion; empty without an image or a lesion.
        centre_x: column of the lesion's centroid, in pixels (NaN for no lesion).
        centre_y: row of the lesion's centroid, in pixels (NaN for no lesion).
        area_mm2: ``area_px * mm_per_pixel ** 2``, or None when the pixel size is unknown.
        max_diameter_mm: ``max_diameter_px * mm_per_pixel``, or None.
        perpendicular_diameter_mm: ``perpendicular_diameter_px * mm_per_pixel``, or None.
        diameter_ends: the ``(x, y)`` pixel centres at the two ends of the largest diameter
            (for drawing it), None for no lesion.
    """

    area_px: int
    max_diameter_px: float
    perpendicular_diameter_px: float
    asymmetry: float
    border_irregularity: float
    colours: tuple[str, ...]
    centre_x: float
    centre_y: float
    area_mm2: float | None = None
    max_diameter_mm: float | None = None
    perpendicular_diameter_mm: float | None = None
    diameter_ends: tuple[tuple[float, float], tuple[float, float]] | None = None

    @property
    def colour_count(self) -> int:
        """Number of ABCD colours reported, 0 to 6."""
        return len(self.colours)

    def as_row(self) -> dict[str, float | int | str]:
        """The columns of a CSV row, keys in the order of :data:`MEASUREMENT_COLUMNS`.

        Lengths in pixels and the centre are rounded to 0.01 px, millimetres to 0.001 mm
        (0.001 mm^2), the asymmetry and the border index to 4 decimals. Unknown values (NaN,
        or no pixel size) are empty strings; ``colours`` are joined with ``;``
        (``"light brown;dark brown"``, empty when none).
        """
        return {
            "area_px": int(self.area_px),
            "max_diameter_px": _rounded(self.max_diameter_px, 2),
            "perpendicular_diameter_px": _rounded(self.perpendicular_diameter_px, 2),
            "asymmetry": _rounded(self.asymmetry, 4),
            "border_irregularity": _rounded(self.border_irregularity, 4),
            "colours": ";".join(self.colours),
            "colour_count": self.colour_count,
            "centre_x": _rounded(self.centre_x, 2),
            "centre_y": _rounded(self.centre_y, 2),
            "area_mm2": _rounded(self.area_mm2, 3),
            "max_diameter_mm": _rounded(self.max_diameter_mm, 3),
            "perpendicular_diameter_mm": _rounded(self.perpendicular_diameter_mm, 3),
        }


def _rounded(value: float | None, digits: int) -> float | str:
    if value is None or not math.isfinite(value):
        return ""
    return round(float(value), digits)


def measure(mask: np.ndarray, image: np.ndarray | None = None,
            mm_per_pixel: float | None = None) -> LesionMeasurements:
    """Measure the lesion of a mask: size, diameters, asymmetry, border, colours, centre.

    Definitions (pixel geometry as in the module docstring):

    - Diameters: the largest distance between two points of the convex hull of all lesion
      pieces (exhaustive over the hull's vertices), and the hull's width at right angles to
      it.
    - Asymmetry (after the A of the ABCD rule, Stolz et al., 1994, measured as in W. V.
      Stoecker et al., "Automatic detection of asymmetry in skin tumors", Comput. Med. Imaging
      Graph. 16(3), 1992, and the reviews of H. Ng et al., 2005, and M. E. Celebi et al.,
      2007): the lesion is reflected across each of its principal axes (through the centroid,
      directions from the second central moments); for each axis the mismatch is
      ``area(lesion XOR reflection) / (2 area(lesion))``, and the result is the mean of the two.
      The mean, not the maximum, so that a lesion asymmetric about both axes scores higher
      than one asymmetric about one, as the ABCD rule's score of 0, 1 or 2 axes does. Where
      the two principal moments are within :data:`ISOTROPY_TOLERANCE` of each other (a disc, a
      square, a near-round lesion) the moments do not fix the axes, and the perpendicular pair
      with the least mismatch is used instead, as the rule places its axes. The areas are the
      fractions of the reduced copy's pixels (see ``Cost``) the lesion covers, reflected with
      bilinear interpolation; what remains for a digital disc of radius ``r`` px is the
      asymmetry of its pixels, about ``0.3 / r``.
    - Border irregularity: ``P^2 / (4 pi A)`` of the outer border of each piece, ``P`` and
      ``A`` summed over pieces. The border is the polygon through the centres of the border
      pixels simplified by Douglas-Peucker at :data:`BORDER_TOLERANCE_PX`, which removes the
      pixel staircase that would add about 5.5 % to the perimeter of a disc (11 % to the
      index); ``P`` and ``A`` are those of that polygon widened by half a pixel (Steiner's
      formula: ``P = L + pi``, ``A = area + L / 2 + pi / 4`` for a polygon of length ``L``).
      At any rotation and position on the grid, digital discs come within 6 % of 1 for a
      radius of 10 px, 3 % for 20 px and 2 % for 30 px and more; ellipses with semi-axes of
      10 px or more within 4 % of their exact index (Ramanujan's perimeter), squares of 24 px
      or more within 5 % of 4 / pi.
    - Colours: each lesion pixel of a regular grid (see ``Cost``; a sample of the image's
      pixels, not averages, so that no blend of two colours is created) goes to the nearest
      reference colour of :data:`ABCD_COLOURS_RGB` in CIELAB (CIE76 distance); a colour is
      reported when its share is at least :data:`COLOUR_MIN_SHARE`. Every lesion pixel has a
      nearest colour, so a lesion with an image reports at least one.

    Cost: the asymmetry uses the lesion's bounding box reduced by the smallest integer factor
    that brings its longer side to :data:`REDUCED_SIDE` px or less (no reduction below that).
    For the irregular 3400 px lesion of the benchmark and for ellipses, L shapes and discs
    with a bump of 1000-2500 px, the asymmetry then differs from the full-resolution value by
    less than 0.001 (absolute). The colours are those of a regular grid of pixels at most
    :data:`COLOUR_SIDE` along the bounding box's longer side (up to 65 536 pixels, an
    unbiased sample): on the benchmark lesion with noise added, each colour's share is then
    within 0.2 % (absolute) of its share among all the lesion's pixels.

    Args:
        mask: bool ``(H, W)``, True on the lesion.
        image: optional RGB ``uint8`` ``(H, W, 3)`` (not OpenCV's BGR order) the mask belongs
            to, or a copy of it reduced by a common factor (as a JPEG decoded at 1/2, 1/4 or
            1/8 scale); without it no colours are reported.
        mm_per_pixel: optional pixel size in millimetres, finite and > 0 (e.g. from
            :func:`pixel_size_from_file`); fills the ``*_mm`` fields.

    Returns:
        :class:`LesionMeasurements`. An empty mask gives area and diameters 0, asymmetry,
        border irregularity and centre NaN (undefined; ``as_row`` writes them empty), and no
        colours.

    Raises:
        ValueError: ``mask`` is not a 2-D bool array, ``image`` not a ``uint8`` ``(H, W, 3)``
            array of the mask's size, or ``mm_per_pixel`` not a positive finite number.
    """
    _check_mask(mask)
    if image is not None:
        _check_image(image, mask.shape)
    _check_pixel_size(mm_per_pixel)
    # A 0/1 uint8 view of the mask's bytes: OpenCV has no bool type, and a copy costs time.
    pixels = np.ascontiguousarray(mask).view(np.uint8)
    area, centre, box = _area_centre_box(pixels)
    if area == 0:
        return _scaled(LesionMeasurements(0, 0.0, 0.0, math.nan, math.nan, (), math.nan,
                                          math.nan), mm_per_pixel)
    x0, y0, x1, y1 = box
    contours = _outer_contours(pixels[y0:y1, x0:x1], (x0, y0))
    hull = cv2.convexHull(np.concatenate(contours)).reshape(-1, 2).astype(np.float64)
    max_diameter, perpendicular, ends = _diameters(hull)
    step = max(1, math.ceil(max(x1 - x0, y1 - y0) / REDUCED_SIDE))
    asymmetry = _asymmetry(pixels[y0:y1, x0:x1], step, hull - (x0, y0))
    colour_step = max(1, math.ceil(max(x1 - x0, y1 - y0) / COLOUR_SIDE))
    colours = () if image is None else _colours(image, pixels, box, colour_step)
    found = LesionMeasurements(area, max_diameter, perpendicular, asymmetry,
                               _border_irregularity(contours), colours, centre[0], centre[1],
                               diameter_ends=ends)
    return _scaled(found, mm_per_pixel)


def _check_mask(mask: np.ndarray) -> None:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", type(mask).__name__)
        raise ValueError(f"mask must be a 2-D numpy array (H, W), got {shape}")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array (lesion = True), got dtype {mask.dtype}; "
                         "convert it first, e.g. mask > 0 or evaluation.binarize(values)")
    if mask.size == 0:
        raise ValueError(f"mask has no pixels (shape {mask.shape})")


def _check_image(image: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        got = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image must be an RGB array (H, W, 3), got {got}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255), got dtype {image.dtype}")
    height, width = image.shape[:2]
    # A reduced copy (a JPEG decoded at 1/2, 1/4 or 1/8 scale rounds its sides up) is accepted:
    # its pixels are sampled where the mask's grid falls.
    same_shape = abs(height * shape[1] - width * shape[0]) <= max(shape) + 1
    if height > shape[0] or width > shape[1] or not same_shape:
        raise ValueError(f"image is {width}x{height} pixels but the mask is {shape[1]}x"
                         f"{shape[0]}; pass the image the mask was drawn on (or a copy reduced "
                         "by a common factor)")


def _check_pixel_size(mm_per_pixel: float | None) -> None:
    if mm_per_pixel is None:
        return
    if isinstance(mm_per_pixel, bool) or not isinstance(mm_per_pixel, (int, float, np.number)):
        raise ValueError(f"mm_per_pixel must be a number, got {type(mm_per_pixel).__name__}")
    if not (math.isfinite(mm_per_pixel) and mm_per_pixel > 0):
        raise ValueError(f"mm_per_pixel must be finite and > 0, got {mm_per_pixel}")


def _scaled(found: LesionMeasurements, mm_per_pixel: float | None) -> LesionMeasurements:
    if mm_per_pixel is None:
        return found
    size = float(mm_per_pixel)
    return replace(found, area_mm2=found.area_px * size ** 2,
                   max_diameter_mm=found.max_diameter_px * size,
                   perpendicular_diameter_mm=found.perpendicular_diameter_px * size)


def _area_centre_box(pixels: np.ndarray) -> tuple[int, tuple[float, float],
                                                  tuple[int, int, int, int]]:
    """Area, centroid ``(x, y)`` and bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of a 0/1
    mask, from its column and row sums: exact, and several times faster than image moments."""
    columns = cv2.reduce(pixels, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    rows = cv2.reduce(pixels, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    area = int(columns.sum(dtype=np.int64))
    if area == 0:
        return 0, (math.nan, math.nan), (0, 0, 0, 0)
    centre_x = float(columns @ np.arange(len(columns), dtype=np.float64)) / area
    centre_y = float(rows @ np.arange(len(rows), dtype=np.float64)) / area
    used_columns, used_rows = np.flatnonzero(columns), np.flatnonzero(rows)
    box = (int(used_columns[0]), int(used_rows[0]), int(used_columns[-1]) + 1,
           int(used_rows[-1]) + 1)
    return area, (centre_x, centre_y), box


def _outer_contours(crop: np.ndarray, offset: tuple[int, int]) -> list[np.ndarray]:
    """Outer borders of the pieces, as int32 ``(N, 1, 2)`` chains of border-pixel centres
    ``(x, y)`` in full-image coordinates (every pixel of the chain, no shortcut: the border
    length needs them)."""
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE,
                                   offset=offset)
    return list(contours)


def _diameters(hull: np.ndarray) -> tuple[float, float, tuple[tuple[float, float], ...]]:
    """Largest diameter and the width at right angles to it of the hull ``(M, 2)`` of pixel
    centres, each widened by the one pixel of the convention (half a pixel on either side),
    and the two hull points at the ends of the largest diameter."""
    first, second = _farthest_pair(hull) if len(hull) > 1 else (0, 0)
    ends = (tuple(hull[first].tolist()), tuple(hull[second].tolist()))
    if len(hull) == 1:
        return 1.0, 1.0, ends
    direction = hull[second] - hull[first]
    length = float(np.hypot(*direction))
    normal = np.array([-direction[1], direction[0]]) / length
    across = hull @ normal
    return length + 1.0, float(across.max() - across.min()) + 1.0, ends


def _farthest_pair(points: np.ndarray) -> tuple[int, int]:
    """Indices of the two points farthest apart, by exhaustive search in blocks (a hull has
    hundreds of vertices, so the quadratic search costs well under a millisecond)."""
    best, pair = -1.0, (0, 0)
    for start in range(0, len(points), _PAIR_BLOCK):
        block = points[start:start + _PAIR_BLOCK]
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=2)
        index = int(squared.argmax())
        if squared.flat[index] > best:
            best = float(squared.flat[index])
            row, column = divmod(index, len(points))
            pair = (start + row, column)
    return pair


def _border_irregularity(contours: Sequence[np.ndarray]) -> float:
    perimeter = enclosed = 0.0
    for contour in contours:
        polygon = cv2.approxPolyDP(contour, BORDER_TOLERANCE_PX, closed=True)
        length = cv2.arcLength(polygon, closed=True)
        # Widening a closed curve by half a pixel adds pi to its length and L/2 + pi/4 to its
        # area (Steiner's formula), which puts the border on the pixels' outer edges.
        perimeter += length + math.pi
        enclosed += cv2.contourArea(polygon) + length / 2 + math.pi / 4
    return perimeter ** 2 / (4 * math.pi * enclosed)


def _coverage(crop: np.ndarray, step: int) -> np.ndarray:
    """Fraction ``[0, 1]`` of each ``step x step`` block of a 0/1 crop that is lesion, float32
    ``(ceil(h / step), ceil(w / step))``."""
    if step == 1:
        return crop.astype(np.float32)
    height, width = crop.shape
    padded = np.zeros((-(-height // step) * step, -(-width // step) * step), np.uint8)
    # 0/255 rather than 0/1: INTER_AREA rounds block means to whole uint8 levels.
    cv2.compare(crop, 0, cv2.CMP_GT, dst=padded[:height, :width])
    # An integer factor takes OpenCV's exact block-mean path, several times faster than others.
    size = (padded.shape[1] // step, padded.shape[0] // step)
    reduced = cv2.resize(padded, size, interpolation=cv2.INTER_AREA)
    if not reduced.any():  # scattered single pixels, each under half a level of its block
        return cv2.resize(padded.astype(np.float32), size, interpolation=cv2.INTER_AREA) / 255
    return reduced.astype(np.float32) * np.float32(1 / 255)


def _asymmetry(crop: np.ndarray, step: int, hull: np.ndarray) -> float:
    """Mean over the two principal axes of ``sum |c - c'| / (2 sum c)``, ``c`` the lesion's
    coverage of the reduced crop and ``c'`` its mirror image; ``hull`` holds the lesion's hull
    vertices in crop pixel coordinates, to size the canvas the mirror images need."""
    coverage = _coverage(crop, step)
    moments = cv2.moments(coverage)
    centre = np.array([moments["m10"], moments["m01"]]) / moments["m00"]
    angle = 0.5 * math.atan2(2 * moments["mu11"], moments["mu20"] - moments["mu02"])
    # Mirror images stay within the lesion's farthest reach from the centroid.
    reach = float(np.hypot(*((hull + 0.5) / step - 0.5 - centre).T).max()) + 2
    if _isotropic(moments):
        angle = _most_symmetric_angle(coverage, centre, reach, angle)
    canvas, centre = _canvas(coverage, centre, reach)
    return min(1.0, _mismatch(canvas, centre, angle, float(coverage.sum())))


def _isotropic(moments: dict[str, float]) -> bool:
    """Whether the two principal second moments are within :data:`ISOTROPY_TOLERANCE` of each
    other, so that the moments leave the axes' direction to pixel noise."""
    mean = (moments["mu20"] + moments["mu02"]) / 2
    spread = math.hypot((moments["mu20"] - moments["mu02"]) / 2, moments["mu11"])
    return 2 * spread <= ISOTROPY_TOLERANCE * (mean + spread)


def _most_symmetric_angle(coverage: np.ndarray, centre: np.ndarray, reach: float,
                          angle: float) -> float:
    """The direction, from ``angle`` over a quarter turn, whose pair of perpendicular axes has
    the least mismatch: a search in steps of :data:`AXIS_SEARCH_STEPS_DEG` (the coarsest over
    the quarter turn, each finer one about the best so far), on a copy at most
    :data:`AXIS_SEARCH_SIDE` px on its longer side."""
    scale = min(1.0, AXIS_SEARCH_SIDE / max(coverage.shape))
    if scale < 1:
        size = (max(1, round(coverage.shape[1] * scale)), max(1, round(coverage.shape[0] * scale)))
        small = cv2.resize(coverage, size, interpolation=cv2.INTER_AREA)
        factors = np.array(size) / coverage.shape[::-1]
        centre = (centre + 0.5) * factors - 0.5
        reach = reach * float(factors.max()) + 1
        coverage = small
    canvas, centre = _canvas(coverage, centre, reach)
    total = float(canvas.sum())
    coarsest, *finer = AXIS_SEARCH_STEPS_DEG
    candidates = angle + np.radians(np.arange(0, 90, coarsest))
    best = min(candidates, key=lambda turn: _mismatch(canvas, centre, turn, total))
    for step in finer:
        turns = (best - math.radians(step), best + math.radians(step))
        best = min((best, *turns), key=lambda turn: _mismatch(canvas, centre, turn, total))
    return float(best)


def _mismatch(canvas: np.ndarray, centre: np.ndarray, angle: float, total: float) -> float:
    """Mean over the axis at ``angle`` through ``centre`` and the one at right angles to it of
    ``sum |c - c'| / (2 sum c)``, ``c'`` the canvas mirrored across the axis, ``total`` the
    canvas's sum."""
    cos, sin = math.cos(2 * angle), math.sin(2 * angle)
    mismatch = 0.0
    for sign in (1.0, -1.0):  # reflection across the axis, then across its perpendicular
        reflect = sign * np.array([[cos, sin], [sin, -cos]])
        matrix = np.hstack([reflect, (centre - reflect @ centre)[:, None]])
        mirrored = cv2.warpAffine(canvas, matrix, canvas.shape[::-1],
                                  flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        mismatch += float(cv2.norm(canvas, mirrored, cv2.NORM_L1)) / (2 * total)
    return mismatch / 2


def _canvas(coverage: np.ndarray, centre: np.ndarray,
            reach: float) -> tuple[np.ndarray, np.ndarray]:
    """``coverage`` padded with zeros to hold a disc of radius ``reach`` about ``centre``;
    returns the canvas and the centre in its coordinates."""
    height, width = coverage.shape
    left = max(0, math.ceil(reach - centre[0]))
    top = max(0, math.ceil(reach - centre[1]))
    right = max(0, math.ceil(centre[0] + reach - (width - 1)))
    bottom = max(0, math.ceil(centre[1] + reach - (height - 1)))
    canvas = cv2.copyMakeBorder(coverage, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
    return canvas, centre + (left, top)


def _colours(image: np.ndarray, pixels: np.ndarray, box: tuple[int, int, int, int],
             step: int) -> tuple[str, ...]:
    x0, y0, x1, y1 = box
    start = step // 2  # sample the middle of each step x step block
    rows, columns = np.arange(y0 + start, y1, step), np.arange(x0 + start, x1, step)
    inside = pixels[np.ix_(rows, columns)].view(bool)
    if not inside.any():  # a lesion thinner than the sampling step: take all its pixels
        rows, columns = np.arange(y0, y1), np.arange(x0, x1)
        inside = pixels[np.ix_(rows, columns)].view(bool)
    # The image's pixels at those places (the same ones, unless the image is a reduced copy).
    image_rows = rows * image.shape[0] // pixels.shape[0]
    image_columns = columns * image.shape[1] // pixels.shape[1]
    samples = image[np.ix_(image_rows, image_columns)][inside]
    shares = colour_shares(samples)
    return tuple(name for name, share in zip(ABCD_COLOURS, shares) if share >= COLOUR_MIN_SHARE)


@cache
def _lab8_scores() -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(6, 3)`` and offsets ``(6,)`` such that ``weights @ q + offsets`` is, up to a
    term the same for every reference, the squared CIELAB distance from OpenCV's 8-bit Lab
    encoding ``q = (L * 255 / 100, a + 128, b + 128)`` to each reference colour."""
    scale = np.array([100 / 255, 1.0, 1.0])
    shift = np.array([0.0, -128.0, -128.0])
    references = reference_lab().astype(np.float64)
    # |p - c|^2 = |p|^2 - 2 c.p + |c|^2 with p = scale * q + shift; |p|^2 is common to all c.
    weights = -2 * references * scale
    offsets = (references ** 2).sum(axis=1) - 2 * references @ shift
    return weights.astype(np.float32), offsets.astype(np.float32)



def colour_shares(rgb: np.ndarray) -> np.ndarray:
    """Share of pixels nearest to each ABCD reference colour in CIELAB (CIE76 distance).

    Args:
        rgb: ``uint8`` ``(N, 3)`` RGB pixels, ``N >= 1``.

    Returns:
        float64 ``(6,)``, shares in ``[0, 1]`` summing to 1, in the order of
        :data:`ABCD_COLOURS`.

    Raises:
        ValueError: ``rgb`` is not a non-empty ``uint8`` ``(N, 3)`` array.
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 2 \
            or rgb.shape[1] != 3 or len(rgb) == 0:
        raise ValueError(f"rgb must be a non-empty uint8 array (N, 3), got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} "
                         f"{getattr(rgb, 'shape', '')}")
    # 8-bit Lab is several times faster than float and quantises L* to 0.4 and a*, b* to 1,
    # far below the distances between the reference colours.
    encoded = cv2.cvtColor(np.ascontiguousarray(rgb).reshape(-1, 1, 3), cv2.COLOR_RGB2Lab)
    planes = np.ascontiguousarray(encoded.reshape(-1, 3).T, dtype=np.float32)
    weights, offsets = _lab8_scores()
    scores = weights @ planes + offsets[:, None]
    # A running minimum over six contiguous rows beats argmin across a short last axis.
    nearest = np.zeros(scores.shape[1], np.intp)
    best = scores[0]
    for index in range(1, len(scores)):
        closer = scores[index] < best
        nearest[closer] = index
        best = np.minimum(best, scores[index])
    counts = np.bincount(nearest, minlength=len(ABCD_COLOURS))
    return counts / counts.sum()


def pixel_size_from_file(path: str | Path) -> float | None:
    """:func:`pixel_size_of` the file ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    return pixel_size_of(Path(path).read_bytes())


def pixel_size_of(data: bytes) -> float | None:
    """The millimetres per pixel an image file's header states, where it is believable.

    The resolution is read from the EXIF XResolution and ResolutionUnit tags (282 and 296;
    unit 2 = inch, the EXIF default, 3 = centimetre), else from the JFIF density (Pillow's
    ``info["dpi"]``). A value is accepted only when the field of view it implies, image width
    times millimetres per pixel, lies within :data:`FIELD_OF_VIEW_MM` (5-60 mm), as a
    dermatoscope's does: cameras and editors write 72, 96 or 300 dpi whatever they image,
    which puts an image of 1000 px or more at 85 mm or wider. A small image with such a
    default can still pass (600 px at 300 dpi is 51 mm), so a pixel size from a file is a
    hint, not a calibration. Only the header is parsed (Pillow decodes lazily).

    Args:
        data: the bytes of an image file (JPEG, or any format Pillow reads).

    Returns:
        Millimetres per pixel along the width, or None when the file states no usable
        resolution, or Pillow cannot read its header (an image OpenCV alone decodes).
    """
    try:
        with Image.open(io.BytesIO(data)) as picture:
            width = picture.width
            candidates = (_exif_mm_per_pixel(picture), _jfif_mm_per_pixel(picture))
    except (UnidentifiedImageError, OSError):
        return None
    low, high = FIELD_OF_VIEW_MM
    for size in candidates:
        if size is not None and low <= width * size <= high:
            return size
    return None


def _exif_mm_per_pixel(picture: Image.Image) -> float | None:
    exif = picture.getexif()
    resolution = exif.get(EXIF_X_RESOLUTION)
    unit = exif.get(EXIF_RESOLUTION_UNIT, 2)
    if resolution is None or unit not in MM_PER_UNIT:
        return None
    return _mm_per_dot(resolution, MM_PER_UNIT[unit])


def _jfif_mm_per_pixel(picture: Image.Image) -> float | None:
    dpi = picture.info.get("dpi")
    if not dpi:
        return None
    return _mm_per_dot(dpi[0], MM_PER_UNIT[2])


def _mm_per_dot(dots_per_unit: object, mm_per_unit: float) -> float | None:
    try:
        dots = float(dots_per_unit)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not (math.isfinite(dots) and dots > 0):
        return None
    return mm_per_unit / dots
