"""Tests of inference/measurements.py and evaluation/agreement.py on shapes whose answers geometry
gives, and of scripts/benchmark_measurements.py on a small image."""

from __future__ import annotations

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from evaluation.agreement import icc, icc_2_1, measurement_agreement, relative_errors
from inference import measurements
from inference.measurements import (
    ABCD_COLOURS,
    ABCD_COLOURS_RGB,
    MEASUREMENT_COLUMNS,
    colour_shares,
    measure,
    pixel_size_from_file,
    reference_lab,
)
from tests.conftest import load_script

benchmark_measurements = load_script("benchmark_measurements")

# Reference colours as 8-bit RGB, as a painted image holds them.
RGB8 = {name: tuple(round(255 * value) for value in rgb) for name, rgb in ABCD_COLOURS_RGB.items()}


# ---------------------------------------------------------------- shapes


def disc(radius: float, centre: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre ``(x, y) = (column, row)`` lies within ``radius`` of ``centre``."""
    return ellipse(radius, radius, 0.0, centre, shape)


def ellipse(a: float, b: float, angle: float, centre: tuple[float, float],
            shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies in the ellipse of semi-axes ``a`` (along ``angle``) and ``b``."""
    rows, columns = np.ogrid[:shape[0], :shape[1]]
    dx, dy = columns - centre[0], rows - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A polygon with real-valued vertices ``(x, y)`` rasterised at 1/256 px precision."""
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(np.asarray(points) * 256).astype(np.int32)], 1, shift=8)
    return mask.view(bool)


def rotated(points: np.ndarray, angle: float, centre: tuple[float, float]) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    relative = np.asarray(points, float) - centre
    return relative @ np.array([[cos, sin], [-sin, cos]]) + centre


def ell_shape(size: float, arm: float, offset: float) -> np.ndarray:
    """Vertices of an L of side ``size`` and arm width ``arm``, corner at ``(offset, offset)``."""
    return np.array([[0, 0], [arm, 0], [arm, size - arm], [size, size - arm], [size, size],
                     [0, size]], float) + offset


def ramanujan_perimeter(a: float, b: float) -> float:
    h = (a - b) ** 2 / (a + b) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))


# ---------------------------------------------------------------- size and diameters


@pytest.mark.parametrize("radius", [10, 25, 60])
def test_disc_on_the_grid_has_the_diameter_of_its_convention(radius: int) -> None:
    size = 2 * radius + 9
    found = measure(disc(radius, (size // 2, size // 2), (size, size)))

    # Pixel centres reach exactly r on both sides of an integer centre; the convention adds
    # half a pixel at either end.
    assert found.max_diameter_px == pytest.approx(2 * radius + 1, abs=1e-9)
    assert 2 * radius - 1 <= found.perpendicular_diameter_px <= 2 * radius + 1 + 1e-9
    assert found.area_px == pytest.approx(math.pi * radius ** 2, rel=0.02)
    assert (found.centre_x, found.centre_y) == (size // 2, size // 2)


@pytest.mark.parametrize("radius", [15, 30, 80])
@pytest.mark.parametrize("offset", [(0.3, 0.6), (0.5, 0.1)])
def test_disc_off_the_grid_is_round_and_symmetric(radius: int,
                                                  offset: tuple[float, float]) -> None:
    size = 2 * radius + 9
    centre = (size // 2 + offset[0], size // 2 + offset[1])
    found = measure(disc(radius, centre, (size, size)))

    # Every pixel centre lies within r of the centre, and one lies within 1.42 px of the
    # circle in any direction.
    for diameter in (found.max_diameter_px, found.perpendicular_diameter_px):
        assert 2 * radius - 2 <= diameter <= 2 * radius + 1
    assert found.border_irregularity == pytest.approx(1.0, rel=0.05)
    # What is left is the asymmetry of the pixels themselves, about 0.3 / r.
    assert found.asymmetry < 0.4 / radius
    assert found.centre_x == pytest.approx(centre[0], abs=0.1)
    assert found.centre_y == pytest.approx(centre[1], abs=0.1)


@pytest.mark.parametrize("angle", [0.0, math.pi / 6, math.pi / 3, 2.0])
def test_ellipse_diameters_are_its_axes(angle: float) -> None:
    a, b = 70.0, 30.0
    centre = (100.4, 90.7)
    found = measure(ellipse(a, b, angle, centre, (190, 210)))

    assert 2 * a - 2 <= found.max_diameter_px <= 2 * a + 1
    assert 2 * b - 2 <= found.perpendicular_diameter_px <= 2 * b + 1
    assert found.area_px == pytest.approx(math.pi * a * b, rel=0.01)
    exact = ramanujan_perimeter(a, b) ** 2 / (4 * math.pi * math.pi * a * b)
    assert found.border_irregularity == pytest.approx(exact, rel=0.03)
    assert found.asymmetry < 0.02


def test_rectangle_diameter_is_its_diagonal() -> None:
    mask = np.zeros((60, 80), bool)
    mask[10:40, 20:60] = True  # 40 x 30 pixels
    found = measure(mask)

    # Centres span 39 x 29 px; the convention widens every extent by one pixel.
    diagonal = math.hypot(39, 29)
    assert found.max_diameter_px == pytest.approx(diagonal + 1, abs=1e-9)
    # A rectangle's width across its diagonal: twice its area over the diagonal.
    assert found.perpendicular_diameter_px == pytest.approx(2 * 39 * 29 / diagonal + 1,
                                                            abs=1e-9)
    assert found.area_px == 1200
    assert (found.centre_x, found.centre_y) == (39.5, 24.5)
    assert found.asymmetry == pytest.approx(0.0, abs=1e-6)
    assert found.border_irregularity == pytest.approx((2 * 70) ** 2 / (4 * math.pi * 1200),
                                                      rel=0.03)


def test_line_one_pixel_wide_measures_its_length_by_one() -> None:
    mask = np.zeros((5, 40), bool)
    mask[2, 5:30] = True

    found = measure(mask)

    assert (found.max_diameter_px, found.perpendicular_diameter_px) == (25.0, 1.0)
    # Its border is a 24 px segment widened by half a pixel: a stadium.
    perimeter, area = 2 * 24 + math.pi, 24 + math.pi / 4
    assert found.border_irregularity == pytest.approx(perimeter ** 2 / (4 * math.pi * area))
    single = np.zeros((3, 3), bool)
    single[1, 1] = True
    assert measure(single).max_diameter_px == measure(single).perpendicular_diameter_px == 1.0


@pytest.mark.parametrize("side", [24, 60, 150])
@pytest.mark.parametrize("angle", [0.0, math.pi / 6, math.pi / 4])
def test_square_border_index_is_four_over_pi(side: int, angle: float) -> None:
    size = int(side * 1.5) + 10
    centre = (size / 2 + 0.3, size / 2 + 0.2)
    corners = centre + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * side / 2
    found = measure(polygon(rotated(corners, angle, centre), (size, size)))

    assert found.border_irregularity == pytest.approx(4 / math.pi, rel=0.05)
    assert found.max_diameter_px == pytest.approx(side * math.sqrt(2), abs=2.5)
    assert found.asymmetry < 0.03


def test_rotated_copies_measure_alike() -> None:
    shape = (260, 260)
    centre = (130.0, 130.0)
    outline = ell_shape(140, 50, 60)
    straight = measure(polygon(outline, shape))
    turned = measure(np.rot90(polygon(outline, shape)).copy())
    assert turned.area_px == straight.area_px
    assert turned.max_diameter_px == pytest.approx(straight.max_diameter_px, abs=1e-9)
    assert turned.perpendicular_diameter_px == pytest.approx(straight.perpendicular_diameter_px,
                                                             abs=1e-9)
    assert turned.asymmetry == pytest.approx(straight.asymmetry, abs=1e-4)
    assert turned.border_irregularity == pytest.approx(straight.border_irregularity, rel=1e-3)

    for angle in (0.4, 1.0, 2.5):
        found = measure(polygon(rotated(outline, angle, centre), shape))
        assert found.area_px == pytest.approx(straight.area_px, rel=0.01)
        assert found.max_diameter_px == pytest.approx(straight.max_diameter_px, abs=1.5)
        assert found.perpendicular_diameter_px == pytest.approx(
            straight.perpendicular_diameter_px, abs=1.5)
        assert found.asymmetry == pytest.approx(straight.asymmetry, abs=0.01)
        assert found.border_irregularity == pytest.approx(straight.border_irregularity, rel=0.03)


def test_ring_has_the_area_of_two_discs_and_the_diameter_of_the_outer() -> None:
    shape, centre = (131, 131), (65, 65)
    outer, inner = disc(60, centre, shape), disc(35, centre, shape)
    ring = measure(outer & ~inner)
    whole = measure(outer)

    assert ring.area_px == outer.sum() - inner.sum()
    assert ring.max_diameter_px == whole.max_diameter_px == 121
    assert ring.perpendicular_diameter_px == whole.perpendicular_diameter_px
    # The border is the outer border: a ring is as round as its disc.
    assert ring.border_irregularity == pytest.approx(whole.border_irregularity, rel=1e-9)


def test_two_pieces_are_measured_as_one_lesion() -> None:
    shape = (80, 200)
    left, right = disc(20, (40, 40), shape), disc(20, (150, 40), shape)
    found = measure(left | right)

    # The farthest pixel centres are the two discs' outer ends: 110 + 2 * 20 apart.
    assert found.max_diameter_px == pytest.approx(110 + 40 + 1, abs=1e-9)
    assert found.perpendicular_diameter_px == pytest.approx(41, abs=1)
    assert found.area_px == left.sum() + right.sum()
    assert (found.centre_x, found.centre_y) == pytest.approx((95, 40))
    assert found.asymmetry < 0.01
    one = measure(left)
    assert found.border_irregularity == pytest.approx(2 * one.border_irregularity, rel=1e-9)


# ---------------------------------------------------------------- asymmetry


def test_asymmetry_grows_with_the_bump_on_a_disc() -> None:
    shape, centre = (200, 200), (100.3, 100.6)
    round_lesion = disc(60, centre, shape)
    scores = [measure(round_lesion).asymmetry]
    for bump in (12, 24):
        scores.append(measure(round_lesion | disc(bump, (160, 100), shape)).asymmetry)
    ell = measure(polygon(ell_shape(140, 50, 30), shape)).asymmetry

    assert scores[0] < 0.01 < scores[1] < scores[2] < ell
    # The L's arms overlap their mirror images along the diagonal axis only partly.
    assert 0.2 < ell < 0.5


def test_asymmetry_is_the_mean_mismatch_over_the_two_axes() -> None:
    tee = np.zeros((160, 100), bool)
    tee[40:50, 20:80] = True  # the bar, 600 px centred on row 44.5
    tee[50:110, 45:55] = True  # the stem, 600 px centred on row 79.5
    found = measure(tee)
    assert (found.centre_x, found.centre_y) == (49.5, 62.0)

    # Mirrored across the row through the centroid (y -> 124 - y), counted pixel by pixel;
    # the T is its own mirror image across the column through the centroid.
    mirrored = np.zeros_like(tee)
    mirrored[:125] = tee[124::-1]
    across_rows = (tee ^ mirrored).sum() / (2 * tee.sum())
    assert across_rows == pytest.approx(0.625)
    assert found.asymmetry == pytest.approx((across_rows + 0) / 2, abs=1e-6)


def test_reduced_copy_keeps_the_full_resolution_asymmetry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    shape = (1300, 1300)
    mask = polygon(rotated(ell_shape(900, 300, 200), 0.3, (650, 650)), shape)
    mask |= disc(150, (900, 300), shape)
    reduced = measure(mask).asymmetry
    monkeypatch.setattr(measurements, "REDUCED_SIDE", 10_000)
    full = measure(mask).asymmetry

    assert full > 0.1
    assert reduced == pytest.approx(full, abs=0.002)


# ---------------------------------------------------------------- empty, units, rows, errors


def test_empty_mask() -> None:
    found = measure(np.zeros((30, 40), bool), np.zeros((30, 40, 3), np.uint8), 0.02)

    assert (found.area_px, found.max_diameter_px, found.perpendicular_diameter_px) == (0, 0, 0)
    assert math.isnan(found.asymmetry) and math.isnan(found.border_irregularity)
    assert math.isnan(found.centre_x) and math.isnan(found.centre_y)
    assert found.colours == () and found.colour_count == 0
    assert (found.area_mm2, found.max_diameter_mm) == (0.0, 0.0)
    row = found.as_row()
    assert tuple(row) == MEASUREMENT_COLUMNS
    assert row["asymmetry"] == row["border_irregularity"] == row["centre_x"] == ""


def test_millimetres_scale_with_the_pixel_size() -> None:
    mask = disc(30, (40, 40), (81, 81))
    size = 0.0125
    found = measure(mask, mm_per_pixel=size)

    assert found.area_mm2 == pytest.approx(found.area_px * size ** 2, rel=1e-12)
    assert found.max_diameter_mm == pytest.approx(found.max_diameter_px * size, rel=1e-12)
    assert found.perpendicular_diameter_mm == pytest.approx(
        found.perpendicular_diameter_px * size, rel=1e-12)
    unscaled = measure(mask)
    assert unscaled.area_mm2 is None and unscaled.max_diameter_mm is None
    assert unscaled.as_row()["area_mm2"] == ""


def test_row_has_fixed_columns_and_rounding() -> None:
    mask = disc(30, (40.3, 40.6), (81, 81))
    image = np.empty((81, 81, 3), np.uint8)
    image[:, :40] = RGB8["light brown"]
    image[:, 40:] = RGB8["dark brown"]
    found = measure(mask, image, mm_per_pixel=0.0123)
    row = found.as_row()

    assert tuple(row) == MEASUREMENT_COLUMNS
    assert row["colours"] == "light brown;dark brown"
    assert row["colour_count"] == 2
    assert row["area_px"] == found.area_px and isinstance(row["area_px"], int)
    assert row["max_diameter_px"] == round(found.max_diameter_px, 2)
    assert row["asymmetry"] == round(found.asymmetry, 4)
    assert row["max_diameter_mm"] == round(found.max_diameter_mm, 3)


@pytest.mark.parametrize(("mask", "image", "size", "message"), [
    (np.zeros((8, 8), np.uint8), None, None, "bool"),
    (np.zeros((8, 8, 1), bool), None, None, "2-D"),
    (np.zeros((0, 8), bool), None, None, "no pixels"),
    (np.zeros((8, 8), bool), np.zeros((8, 9, 3), np.uint8), None, "9x8"),
    (np.zeros((8, 8), bool), np.zeros((8, 8, 3), np.float32), None, "uint8"),
    (np.zeros((8, 8), bool), np.zeros((8, 8)), None, "RGB"),
    (np.zeros((8, 8), bool), None, 0.0, "> 0"),
    (np.zeros((8, 8), bool), None, math.nan, "> 0"),
])
def test_bad_inputs_raise_value_errors(mask: np.ndarray, image: np.ndarray | None,
                                       size: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        measure(mask, image, size)


# ---------------------------------------------------------------- colours


def srgb_to_lab(rgb: tuple[float, float, float]) -> np.ndarray:
    """CIELAB (D65) of an sRGB triplet in [0, 1], from the CIE and IEC 61966-2-1 formulas."""
    linear = np.array([c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
                       for c in rgb])
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_reference_colours_are_their_rgb_values_in_cielab() -> None:
    for name, lab in zip(ABCD_COLOURS, reference_lab()):
        assert lab == pytest.approx(srgb_to_lab(ABCD_COLOURS_RGB[name]), abs=0.3), name


def painted(mask: np.ndarray, shares: dict[str, float]) -> np.ndarray:
    """An image whose lesion pixels (row-major order) are painted in ``shares`` of colours."""
    image = np.full(mask.shape + (3,), (230, 190, 170), np.uint8)
    lesion = np.flatnonzero(mask.ravel())
    flat = image.reshape(-1, 3)
    start = 0
    for name, share in shares.items():
        stop = start + round(share * len(lesion))
        flat[lesion[start:stop]] = RGB8[name]
        start = stop
    return image


@pytest.mark.parametrize("size", [120, 1400])  # the second is sampled (reduced copy)
def test_two_painted_colours_are_reported_exactly(size: int) -> None:
    mask = disc(size * 0.4, (size / 2, size / 2), (size, size))
    image = painted(mask, {"light brown": 0.4, "dark brown": 0.6})

    found = measure(mask, image)

    assert found.colours == ("light brown", "dark brown")
    assert found.colour_count == 2
    assert measure(mask).colours == ()


def test_colours_of_a_reduced_copy_of_the_image_are_those_of_the_image() -> None:
    mask = disc(300, (400, 320), (801, 640))
    image = np.full(mask.shape + (3,), (230, 190, 170), np.uint8)
    image[:, :320] = RGB8["light brown"]  # left half of the lesion one colour, right another
    image[:, 320:] = RGB8["blue-gray"]
    reduced = image[::4, ::4]  # as a JPEG decoded at 1/4 scale, sides rounded up

    assert measure(mask, reduced).colours == measure(mask, image).colours == (
        "light brown", "blue-gray")
    with pytest.raises(ValueError, match="reduced by a common factor"):
        measure(mask, image[:, ::2])


def test_colour_under_the_minimum_share_is_not_reported() -> None:
    mask = disc(50, (60, 60), (121, 121))
    rare = measure(mask, painted(mask, {"blue-gray": 0.03, "black": 0.47, "red": 0.5}))
    present = measure(mask, painted(mask, {"blue-gray": 0.07, "black": 0.43, "red": 0.5}))

    assert rare.colours == ("red", "black")
    assert present.colours == ("red", "blue-gray", "black")


def test_colour_shares_pick_the_nearest_reference() -> None:
    pixels = np.array([RGB8["white"], (250, 245, 240), (140, 95, 20), (60, 20, 15),
                       (60, 150, 160), (8, 8, 8)], np.uint8)
    shares = colour_shares(pixels)

    # white twice, then light brown, dark brown, blue-gray, black once each; no red.
    np.testing.assert_allclose(shares, [2 / 6, 0, 1 / 6, 1 / 6, 1 / 6, 1 / 6])
    with pytest.raises(ValueError, match="uint8"):
        colour_shares(pixels.astype(float))


# ---------------------------------------------------------------- pixel size from the file


def jpeg(path: Path, width: int = 400, **save: object) -> Path:
    Image.new("RGB", (width, 300), (200, 150, 120)).save(path, **save)
    return path


def test_camera_default_resolution_gives_no_pixel_size(tmp_path: Path) -> None:
    assert pixel_size_from_file(jpeg(tmp_path / "a.jpg", dpi=(72, 72))) is None
    assert pixel_size_from_file(jpeg(tmp_path / "b.jpg", width=1024, dpi=(300, 300))) is None
    assert pixel_size_from_file(jpeg(tmp_path / "c.jpg")) is None


def test_dermoscopic_resolution_gives_the_pixel_size(tmp_path: Path) -> None:
    # 400 px across 20 mm: 0.05 mm per pixel, 508 dots per inch.
    assert pixel_size_from_file(jpeg(tmp_path / "a.jpg", dpi=(508, 508))) == pytest.approx(0.05)
    exif = Image.Exif()
    exif[282], exif[296] = 200, 3  # 200 pixels per centimetre
    assert pixel_size_from_file(jpeg(tmp_path / "b.jpg", exif=exif)) == pytest.approx(0.05)
    # An implausible EXIF resolution does not hide a plausible JFIF one.
    exif[282], exif[296] = 72, 2
    found = pixel_size_from_file(jpeg(tmp_path / "c.jpg", exif=exif, dpi=(508, 508)))
    assert found == pytest.approx(0.05)


# ---------------------------------------------------------------- agreement

# Shrout & Fleiss (1979), Table 2: six targets rated by four judges.
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6],
                          [10, 5, 6, 9], [6, 2, 4, 7]], float)


def icc_from_sums_of_squares(table: np.ndarray) -> float:
    """ICC(2,1) written from the sums of squares of the two-way ANOVA, element by element."""
    n, k = table.shape
    grand = sum(sum(row) for row in table) / (n * k)
    total = sum((value - grand) ** 2 for row in table for value in row)
    rows = k * sum((sum(row) / k - grand) ** 2 for row in table)
    columns = n * sum((sum(table[:, j]) / n - grand) ** 2 for j in range(k))
    bms, jms = rows / (n - 1), columns / (k - 1)
    ems = (total - rows - columns) / ((n - 1) * (k - 1))
    return (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)


def test_icc_reproduces_shrout_and_fleiss() -> None:
    # Their Table 4 gives ICC(2,1) = .29 for the four judges.
    assert round(icc_2_1(SHROUT_FLEISS), 2) == 0.29
    assert icc_2_1(SHROUT_FLEISS) == pytest.approx(icc_from_sums_of_squares(SHROUT_FLEISS))
    two = SHROUT_FLEISS[:, :2]
    assert icc(two[:, 0], two[:, 1]) == pytest.approx(icc_from_sums_of_squares(two))
    assert icc(two[:, 0], two[:, 1]) == pytest.approx(0.1257, abs=1e-4)


def test_icc_edge_cases() -> None:
    expert = np.array([10.0, 14.0, 9.0, 20.0, 16.0, 12.0])
    assert icc(expert, expert) == pytest.approx(1.0)
    offset = icc(expert + 3, expert)
    assert 0.5 < offset < 1.0  # perfectly correlated, but not in agreement
    assert icc(expert + 6, expert) < offset
    assert icc(2 * expert, expert) < 0.6
    with_gap = icc(np.append(expert, math.nan), np.append(expert, 5.0))
    assert with_gap == pytest.approx(1.0)
    assert math.isnan(icc([1.0], [1.0]))
    assert math.isnan(icc([3.0, 3.0], [3.0, 3.0]))
    with pytest.raises(ValueError, match="one length"):
        icc([1.0, 2.0], [1.0])


def test_relative_errors_leave_out_empty_expert_values() -> None:
    errors = relative_errors([110.0, 90.0, 5.0, math.nan], [100.0, 100.0, 0.0, 10.0])

    np.testing.assert_allclose(errors[:2], [0.1, 0.1])
    assert np.isnan(errors[2:]).all()


def test_measurement_agreement_of_rows() -> None:
    shape = (101, 101)
    experts, predictions = [], []
    for radius, grown in ((20, 22), (30, 31), (40, 44), (25, 25)):
        experts.append(measure(disc(radius, (50, 50), shape)).as_row())
        predictions.append(measure(disc(grown, (50, 50), shape)).as_row())
    experts.append(measure(np.zeros(shape, bool)).as_row())  # empty: no centre, area 0
    predictions.append(measure(disc(5, (50, 50), shape)).as_row())

    found = measurement_agreement(predictions, experts, ["max_diameter_px", "centre_x"])

    diameter = found["max_diameter_px"]
    # Diameters 2r + 1: errors 4/41, 2/61, 8/81 and 0; the empty expert mask is left out.
    assert diameter["images"] == 5
    assert diameter["median_relative_error"] == pytest.approx(np.median([4 / 41, 2 / 61,
                                                                         8 / 81, 0]))
    assert diameter["p90_relative_error"] == pytest.approx(
        np.percentile([4 / 41, 2 / 61, 8 / 81, 0], 90))
    assert 0.8 < diameter["icc"] < 1.0
    assert found["centre_x"]["images"] == 4  # the empty mask has no centre
    assert found["centre_x"]["median_relative_error"] == 0.0
    text = [{name: str(value) for name, value in row.items()} for row in predictions]
    assert measurement_agreement(text, experts, ["max_diameter_px"]) == {
        "max_diameter_px": diameter}
    coloured = [dict(row, colours="light brown;black") for row in predictions]
    with pytest.raises(ValueError, match="not a number"):
        measurement_agreement(coloured, experts, ["colours"])
    with pytest.raises(ValueError, match="pair"):
        measurement_agreement(predictions[:2], experts, ["area_px"])


# ---------------------------------------------------------------- benchmark script


def test_benchmark_prints_one_markdown_row(capsys: pytest.CaptureFixture) -> None:
    threads = cv2.getNumThreads()
    assert benchmark_measurements.main(["--width", "96", "--height", "64",
                                        "--repeat", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()

    assert len(lines) == 1
    assert re.fullmatch(r"\| .+ \| 96x64 \| \d+% \| \d+\.\d \| \d+\.\d \| 2 \|", lines[0])
    assert cv2.getNumThreads() == threads
    assert benchmark_measurements.main(["--repeat", "0"]) == 1


def test_the_diameters_ends_lie_on_the_lesion_at_its_largest_diameter() -> None:
    mask = np.zeros((100, 200), bool)
    mask[40:60, 20:180] = True
    found = measure(mask)
    (x1, y1), (x2, y2) = found.diameter_ends
    assert mask[int(y1), int(x1)] and mask[int(y2), int(x2)]
    assert np.hypot(x2 - x1, y2 - y1) + 1 == pytest.approx(found.max_diameter_px)
    assert {x1, x2} == {20.0, 179.0}  # opposite corners of the rectangle
    assert measure(np.zeros((5, 5), bool)).diameter_ends is None


def test_predictions_csv_measures_the_mask_that_was_written(synthetic_root, tmp_path) -> None:
    """predict.py's measurement columns, recomputed independently from its PNG masks: the area
    by counting pixels, the largest diameter from scipy's convex hull of the pixel centres."""
    import csv

    from scipy.spatial import ConvexHull
    from scipy.spatial.distance import pdist

    import predict

    images = synthetic_root / "ISIC2018_Task1-2_Validation_Input"
    assert predict.main(["--input", str(images), "--output", str(tmp_path), "--device", "cpu",
                         "--no-quality"]) == 0  # the bundled model: lesion-like masks
    with (tmp_path / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    area_errors, diameter_errors = [], []
    for row in rows:
        mask = cv2.imread(str(tmp_path / f"{Path(row['image']).stem}_segmentation.png"),
                          cv2.IMREAD_GRAYSCALE) > 128
        if not mask.any():
            assert row["area_px"] == "0"
            continue
        points = np.argwhere(mask)[:, ::-1].astype(float)
        hull = points[ConvexHull(points).vertices]
        diameter = pdist(hull).max() + 1  # the pixel convention: one pixel wide is 1
        area_errors.append(abs(float(row["area_px"]) - mask.sum()) / mask.sum())
        diameter_errors.append(abs(float(row["max_diameter_px"]) - diameter) / diameter)
    assert len(area_errors) >= 6
    assert np.median(area_errors) == 0.0
    assert np.median(diameter_errors) <= 0.01 and max(diameter_errors) <= 0.02
