"""Synthetic dermoscopy-like images with exact lesion masks, in the ISIC 2018 Task 1 layout.

This is the offline demo data of the repository and the data of its tests: no download, no
licence question, and the ground truth is exact because the mask is the polygon the lesion was
painted from. Each image is a skin-toned background with uneven lighting, the dark circular
vignette of a dermatoscope, an irregular pigmented lesion with a soft border and colour
variation, plus the artefacts readers of real ISIC data must cope with: hairs, air bubbles and
ruler marks. Like the real ground truth, artefacts never change the mask.

Sample ``i`` is drawn from ``np.random.default_rng([seed, i])`` alone, so any image can be
reproduced on its own and two runs with the same arguments write identical bytes.

Layout written under ``root`` (ids are unique across splits, validation continues after
training)::

    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg ... + LICENSE.txt
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png ...
    ISIC2018_Task1-2_Validation_Input/ISIC_0000160.jpg ... + LICENSE.txt
    ISIC2018_Task1_Validation_GroundTruth/ISIC_0000160_segmentation.png ...
    synthetic.json
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "GENERATOR_VERSION",
    "PARAMS_FILE",
    "TRAIN_INPUT_DIR",
    "TRAIN_MASK_DIR",
    "VAL_INPUT_DIR",
    "VAL_MASK_DIR",
    "ensure_synthetic_isic",
    "generate_synthetic_isic",
    "is_synthetic_set",
    "render_sample",
]

# Bump when the rendering changes, so that ensure_synthetic_isic regenerates stale data sets.
GENERATOR_VERSION = 1

TRAIN_INPUT_DIR = "ISIC2018_Task1-2_Training_Input"
TRAIN_MASK_DIR = "ISIC2018_Task1_Training_GroundTruth"
VAL_INPUT_DIR = "ISIC2018_Task1-2_Validation_Input"
VAL_MASK_DIR = "ISIC2018_Task1_Validation_GroundTruth"
PARAMS_FILE = "synthetic.json"
JPEG_QUALITY = 90

LICENSE_TEXT = """\
Synthetic dermoscopy-like images.

The images in this folder are NOT photographs of patients and NOT part of the ISIC Archive.
They were generated procedurally by data/synthetic.py of the isic-unet repository, which
writes them in the ISIC 2018 Task 1 folder layout so that the code can be demonstrated and
tested without downloading the real data set. They carry no licence restriction beyond that
of the repository itself.
"""

# Colours are RGB in [0, 1].
_SKIN_LIGHT = np.array([0.96, 0.80, 0.74], np.float32)
_SKIN_TAN = np.array([0.80, 0.57, 0.45], np.float32)
_LESION_LIGHT_BROWN = np.array([0.66, 0.45, 0.33], np.float32)
_LESION_DARK_BROWN = np.array([0.36, 0.22, 0.15], np.float32)
_LESION_DARKEST = np.array([0.17, 0.10, 0.08], np.float32)
_BLUE_GREY = np.array([0.40, 0.42, 0.52], np.float32)
_HAIR_DARK = np.array([0.10, 0.07, 0.06], np.float32)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _to_fixed_point(points: np.ndarray) -> np.ndarray:
    """(N, 2) float xy -> int32 coordinates with 4 fractional bits, for cv2 ``shift=4``."""
    return np.round(points * 16.0).astype(np.int32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Low-frequency noise of roughly unit variance, float32 (H, W).

    ``cells`` is the number of random values along the height; they are interpolated and
    blurred so that no grid shows.
    """
    grid_h = max(2, round(cells))
    grid_w = max(2, round(cells * width / height))
    grid = rng.standard_normal((grid_h, grid_w), dtype=np.float32)
    # Smoothed at a quarter of the resolution: the result has no fine detail to lose, and
    # the large blur kernels would otherwise dominate the rendering time.
    small_h, small_w = max(grid_h, height // 4), max(grid_w, width // 4)
    noise = cv2.resize(grid, (small_w, small_h), interpolation=cv2.INTER_CUBIC)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.3 * small_h / grid_h)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)


def _field_of_view(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Dermatoscope aperture.

    Returns:
        fov: float32 (H, W) in [0, 1], 1 inside the circle, 0 in the black vignette, with a
            ramp of a few pixels at the rim (0.5 exactly on the circle).
        lighting: float32 (H, W) in [0.7, 1], the lens fall-off towards the rim.
        centre: float (2,) xy of the circle centre.
        radius: circle radius in pixels.
    """
    half_diagonal = float(np.hypot(width, height)) / 2
    # Above half the short side the circle is cut by the frame; below half the diagonal the
    # corners stay black.
    radius = rng.uniform(0.55, 0.90) * half_diagonal
    centre = np.array([width, height], np.float64) * (0.5 + rng.uniform(-0.04, 0.04, 2))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    distance = np.hypot(xx - centre[0], yy - centre[1])
    rim = max(1.0, 0.015 * min(height, width))
    fov = np.clip((radius - distance) / rim + 0.5, 0.0, 1.0)
    # Lens fall-off: illumination drops towards the rim of the aperture.
    lighting = 1.0 - rng.uniform(0.08, 0.30) * np.clip(distance / radius, 0, 1) ** 4
    return fov.astype(np.float32), lighting.astype(np.float32), centre, radius


def _skin_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Skin with uneven lighting, redness and fine texture, float32 (H, W, 3) in ~[0, 1]."""
    tone = _SKIN_LIGHT + rng.uniform(0, 1) * (_SKIN_TAN - _SKIN_LIGHT)
    tone = tone * rng.uniform(0.92, 1.04)
    tone[0] += rng.uniform(-0.02, 0.04)  # some skins read pinker under polarised light
    shading = 1.0 + 0.05 * _smooth_noise(rng, height, width, 3)
    redness = 0.025 * _smooth_noise(rng, height, width, 6)
    grain = rng.standard_normal((height, width), dtype=np.float32)
    furrows = _skin_furrows(rng, height, width) + _skin_furrows(rng, height, width)
    texture = 0.02 * cv2.GaussianBlur(grain, (0, 0), 1.0) + 0.006 * furrows
    skin = tone[None, None, :] * shading[..., None] + texture[..., None]
    skin[..., 1:] -= redness[..., None]  # erythema: less green and blue, not more red
    return skin


def _skin_furrows(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Parallel skin lines: noise stretched along a random direction, float32 (H, W) of unit
    variance. Two crossed sets give the rhomboid pattern of skin surface."""
    size = min(height, width)
    grain = rng.standard_normal((height, width), dtype=np.float32)
    streaks = cv2.GaussianBlur(grain, (0, 0), sigmaX=0.03 * size, sigmaY=0.004 * size + 0.3)
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), rng.uniform(0, 180), 1.0)
    streaks = cv2.warpAffine(streaks, turn, (width, height), borderMode=cv2.BORDER_REFLECT)
    return streaks / (float(streaks.std()) + 1e-6)


def _lesion_outline(rng: np.random.Generator, n_points: int = 180) -> np.ndarray:
    """Irregular closed outline around the origin: a radial polygon perturbed by a few random
    harmonics, stretched and rotated. float (N, 2) xy with mean radius about 1."""
    theta = np.linspace(0.0, 2 * np.pi, n_points, endpoint=False)
    radius = np.ones_like(theta)
    # Few strong low harmonics give the overall asymmetry, weak high ones a ragged edge.
    for k in range(2, 15):
        amplitude = rng.normal(0.0, 0.18 / k)
        radius += amplitude * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    radius = np.clip(radius, 0.4, None)
    aspect = rng.uniform(0.65, 1.0)
    x = radius * np.cos(theta)
    y = radius * np.sin(theta) * aspect
    angle = rng.uniform(0, np.pi)
    cos_a, sin_a = np.cos(angle), np.sin(angle)
    return np.stack([x * cos_a - y * sin_a, x * sin_a + y * cos_a], axis=1)


def _distance_to_frame(point: np.ndarray, unit: np.ndarray, height: int, width: int) -> float:
    """Distance from ``point`` (inside the frame) to the frame edge along direction ``unit``."""
    limits = []
    for coordinate, step, size in ((point[0], unit[0], width), (point[1], unit[1], height)):
        if step > 1e-9:
            limits.append((size - 1 - coordinate) / step)
        elif step < -1e-9:
            limits.append(-coordinate / step)
    return float(min(limits))


def _lesion_polygon(
    rng: np.random.Generator, height: int, width: int, fov_centre: np.ndarray, fov_radius: float
) -> np.ndarray:
    """Lesion outline in image coordinates, float (N, 2) xy.

    Sizes span small naevi to lesions filling most of the aperture. About 5% of lesions are
    placed across the rim of the aperture, as in real images cropped by the dermatoscope;
    the others are shrunk if needed to stay clear of the rim and of the frame.
    """
    mean_radius = min(height, width) * rng.uniform(0.08, 0.48)
    outline = _lesion_outline(rng) * mean_radius
    direction = rng.uniform(0, 2 * np.pi)
    unit = np.array([np.cos(direction), np.sin(direction)])
    if rng.random() < 0.05:
        extent = float(np.max(np.hypot(outline[:, 0], outline[:, 1])))
        # Where the circle is cut by the frame, the visible edge along `unit` is the frame.
        visible = min(fov_radius, _distance_to_frame(fov_centre, unit, height, width))
        return outline + fov_centre + unit * max(visible - 0.3 * extent, 0.0)
    centre = fov_centre + unit * fov_radius * 0.35 * np.sqrt(rng.uniform(0, 1))
    room = min(
        0.9 * fov_radius - float(np.hypot(*(centre - fov_centre))),
        centre[0] - 2,
        width - 3 - centre[0],
        centre[1] - 2,
        height - 3 - centre[1],
    )
    extent = float(np.max(np.hypot(outline[:, 0], outline[:, 1])))
    if extent > room:
        outline = outline * (room / extent)
    return outline + centre


def _lesion_colour(rng: np.random.Generator, depth: np.ndarray) -> np.ndarray:
    """Pigment colour over the whole frame (only used where the lesion is), float32 (H, W, 3).

    Brown base, darker towards an irregular centre, with dark-brown or bluish-grey blotches
    and sometimes a pigment-network-like mesh. ``depth`` is float32 (H, W), the distance in
    pixels to the lesion border inside the lesion and 0 outside.
    """
    height, width = depth.shape
    inside = depth > 0
    base = _LESION_LIGHT_BROWN + rng.uniform(0, 1) * (_LESION_DARK_BROWN - _LESION_LIGHT_BROWN)
    colour = np.broadcast_to(base, (height, width, 3)).astype(np.float32)

    relative_depth = depth / max(float(depth.max()), 1.0)
    # Perturbed so that the dark core is off-centre and ragged rather than a bullseye.
    ragged = np.clip(relative_depth + 0.25 * _smooth_noise(rng, height, width, 5), 0, 1)
    core = rng.uniform(0.2, 0.8) * ragged[..., None] ** 1.5
    colour = colour * (1 - core) + _LESION_DARKEST * core

    blotch_colour = _BLUE_GREY if rng.random() < 0.35 else _LESION_DARKEST
    blotches = np.clip((_smooth_noise(rng, height, width, rng.uniform(4, 9)) - 0.6) / 0.5, 0, 1)
    blotches = rng.uniform(0.3, 0.8) * blotches[..., None]
    colour = colour * (1 - blotches) + blotch_colour * blotches

    mottling = 1.0 + 0.1 * _smooth_noise(rng, height, width, rng.uniform(10, 18))
    colour = colour * mottling[..., None]

    if rng.random() < 0.5:
        patchy = np.clip(_smooth_noise(rng, height, width, 3) + 0.7, 0, 1)
        network = rng.uniform(0.15, 0.3) * patchy * _pigment_network(rng, height, width)
        colour = colour * (1 - network[..., None])
    if rng.random() < 0.3:
        colour = _draw_globules(rng, colour, inside)
    return colour


def _draw_globules(rng: np.random.Generator, colour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Small dark dots scattered over the lesion; ``mask`` is bool (H, W)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return colour
    picks = rng.integers(0, rows.size, int(rng.integers(5, 30)))
    layer = np.zeros(mask.shape, np.uint8)
    size = min(mask.shape)
    for row, col in zip(rows[picks], cols[picks]):
        radius = round(rng.uniform(0.006, 0.02) * size * 16)
        cv2.circle(layer, (int(col) * 16, int(row) * 16), max(radius, 8), 255, -1, cv2.LINE_AA, 4)
    alpha = 0.8 * (layer.astype(np.float32) / 255)[..., None]
    return colour * (1 - alpha) + _LESION_DARKEST * alpha


def _pigment_network(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Mesh of thin lines, float32 (H, W) in [0, 1]: the zero crossings of band-pass noise."""
    white = rng.standard_normal((height, width), dtype=np.float32)
    cell = max(0.7, 0.012 * min(height, width))
    band = cv2.GaussianBlur(white, (0, 0), cell) - cv2.GaussianBlur(white, (0, 0), 2 * cell)
    band /= float(band.std()) + 1e-6
    lines = np.exp(-((band / 0.45) ** 2)).astype(np.float32)
    return cv2.GaussianBlur(lines, (0, 0), 0.5 * cell)


def _paint_lesion(rng: np.random.Generator, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend the pigment into ``image`` through a blurred mask, so the border is soft but the
    half-opacity contour stays on the mask outline."""
    height, width = mask.shape
    depth = cv2.distanceTransform(mask, cv2.DIST_L2, 5)  # pixels to the lesion border
    # Capped by the lesion's own thickness, or a small lesion dissolves into a smudge.
    border_sigma = min(rng.uniform(0.005, 0.03) * min(height, width), 0.2 * float(depth.max()))
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), max(border_sigma, 0.5))
    # Pigment density varies, so some parts of the lesion let more skin through.
    alpha *= 1.0 - 0.2 * np.clip(_smooth_noise(rng, height, width, 4), 0, 1)
    alpha = alpha[..., None]
    return image * (1 - alpha) + _lesion_colour(rng, depth) * alpha


def _quadratic_curve(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 24) -> np.ndarray:
    """Points of the quadratic Bezier curve with control points p0, p1, p2, float (n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _draw_hairs(
    rng: np.random.Generator, image: np.ndarray, lesion_centre: np.ndarray
) -> np.ndarray:
    """Thin dark curved hairs around a common direction, about half of them across the lesion."""
    height, width = image.shape[:2]
    n_hairs = int(rng.choice([0, 0, 1, 2, 3, 4, 6, 10, 16]))
    if n_hairs == 0:
        return image
    layer = np.zeros((height, width), np.uint8)
    scale = max(height, width)
    grain = rng.uniform(0, np.pi)  # hairs on a patch of skin roughly follow one direction
    for _ in range(n_hairs):
        if rng.random() < 0.5:
            middle = lesion_centre + rng.normal(0, 0.12 * scale, 2)
        else:
            middle = rng.uniform([0, 0], [width, height])
        direction = grain + rng.normal(0, 0.5)
        along = np.array([np.cos(direction), np.sin(direction)])
        across = np.array([-along[1], along[0]])
        length = rng.uniform(0.2, 0.9) * scale
        ends = middle - along * length / 2, middle + along * length / 2
        bend = middle + across * rng.normal(0, 0.15) * length
        points = _quadratic_curve(ends[0], bend, ends[1])
        thickness = max(1, round(rng.uniform(0.6, 1.6) * scale / 256))
        shade = int(rng.integers(150, 256))  # some hairs are fair or out of focus
        cv2.polylines(layer, [_to_fixed_point(points)], False, shade, thickness, cv2.LINE_AA, 4)
    alpha = (layer.astype(np.float32) / 255)[..., None]
    return image * (1 - alpha) + _HAIR_DARK * alpha


def _draw_bubbles(
    rng: np.random.Generator, image: np.ndarray, fov_centre: np.ndarray, fov_radius: float
) -> np.ndarray:
    """Air bubbles of the immersion fluid: light rims with a small specular highlight."""
    height, width = image.shape[:2]
    n_bubbles = int(rng.choice([0, 0, 0, 0, 1, 1, 2, 3, 5]))
    if n_bubbles == 0:
        return image
    rims = np.zeros((height, width), np.uint8)
    insides = np.zeros((height, width), np.uint8)
    for _ in range(n_bubbles):
        radius = rng.uniform(0.02, 0.08) * min(height, width)
        angle = rng.uniform(0, 2 * np.pi)
        offset = np.sqrt(rng.uniform(0, 1)) * 0.85 * fov_radius
        centre = fov_centre + offset * np.array([np.cos(angle), np.sin(angle)])
        c, r = tuple(_to_fixed_point(centre)), round(radius * 16)
        cv2.circle(insides, c, r, 255, -1, cv2.LINE_AA, 4)
        cv2.circle(rims, c, r, 255, 1, cv2.LINE_AA, 4)
        glint = tuple(_to_fixed_point(centre - 0.45 * radius))
        cv2.circle(rims, glint, max(8, round(radius * 3)), 255, -1, cv2.LINE_AA, 4)
    rim_alpha = 0.7 * (rims.astype(np.float32) / 255)[..., None]
    inside = (insides.astype(np.float32) / 255)[..., None]
    image = image * (1 + 0.05 * inside)
    return image * (1 - rim_alpha) + 0.97 * rim_alpha


def _draw_ruler(
    rng: np.random.Generator, image: np.ndarray, fov_centre: np.ndarray, fov_radius: float
) -> np.ndarray:
    """Ruler ticks along the rim of the aperture: short parallel lines, every fifth longer."""
    if rng.random() > 0.25:
        return image
    height, width = image.shape[:2]
    layer = np.zeros((height, width), np.uint8)
    angle = rng.uniform(0, 2 * np.pi)
    outward = np.array([np.cos(angle), np.sin(angle)])
    along = np.array([-outward[1], outward[0]])
    start = fov_centre + 0.75 * fov_radius * outward
    spacing = max(3.0, 0.03 * min(height, width))
    n_ticks = int(rng.integers(8, 15))
    short = max(2.0, 0.04 * min(height, width))
    for k in range(n_ticks):
        foot = start + (k - n_ticks / 2) * spacing * along
        tip = foot + outward * (2 * short if k % 5 == 0 else short)
        line = _to_fixed_point(np.stack([foot, tip]))
        cv2.line(layer, tuple(line[0]), tuple(line[1]), 255, 1, cv2.LINE_AA, 4)
    ink = _HAIR_DARK if rng.random() < 0.6 else np.full(3, 0.95, np.float32)
    alpha = 0.85 * (layer.astype(np.float32) / 255)[..., None]
    return image * (1 - alpha) + ink * alpha


def _apply_vignette(rng: np.random.Generator, image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """Black outside the aperture, with the faint sensor noise of real vignettes."""
    height, width = fov.shape
    floor = rng.uniform(0.0, 0.04)
    noise = 0.01 * rng.standard_normal((height, width, 1), dtype=np.float32)
    return image * fov[..., None] + (1 - fov[..., None]) * (floor + noise)


def render_sample(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render one dermoscopy-like image and its exact lesion mask.

    Args:
        rng: the only source of randomness; the same generator state gives the same sample.
        height: image height in pixels (at least ~32 for a meaningful picture).
        width: image width in pixels.

    Returns:
        image: uint8 (H, W, 3), RGB, values in [0, 255].
        mask: uint8 (H, W), 255 on the visible lesion and 0 elsewhere. Hairs, bubbles and
            ruler marks do not change it; lesion parts hidden by the vignette are excluded.
    """
    fov, lighting, fov_centre, fov_radius = _field_of_view(rng, height, width)
    polygon = _lesion_polygon(rng, height, width, fov_centre, fov_radius)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [_to_fixed_point(polygon)], 255, cv2.LINE_8, 4)

    image = _skin_background(rng, height, width)
    image = _paint_lesion(rng, image, mask)
    image = _draw_hairs(rng, image, polygon.mean(axis=0))
    image = _draw_bubbles(rng, image, fov_centre, fov_radius)
    image = _draw_ruler(rng, image, fov_centre, fov_radius)
    image = cv2.GaussianBlur(image, (0, 0), 0.6)  # optics are never perfectly sharp
    image = image + 0.008 * rng.standard_normal(image.shape, dtype=np.float32)
    image = _apply_vignette(rng, image * lighting[..., None], fov)

    mask[fov < 0.5] = 0  # the ground truth only covers what can be seen
    image = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)
    return image, mask


# ---------------------------------------------------------------------------------------------
# Data set on disk
# ---------------------------------------------------------------------------------------------


def _isic_id(index: int) -> str:
    return f"ISIC_{index:07d}"


def _encode(extension: str, array: np.ndarray, params: Iterable[int] = ()) -> bytes:
    # imencode + write_bytes instead of imwrite: works with any path and fails loudly.
    ok, buffer = cv2.imencode(extension, array, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {extension} image")
    return buffer.tobytes()


def _write_split(
    root: Path, input_dir: str, mask_dir: str, indices: range, height: int, width: int, seed: int
) -> None:
    inputs, masks = root / input_dir, root / mask_dir
    inputs.mkdir()
    masks.mkdir()
    (inputs / "LICENSE.txt").write_text(LICENSE_TEXT)
    for index in indices:
        image, mask = render_sample(np.random.default_rng([seed, index]), height, width)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        jpeg = _encode(".jpg", bgr, (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
        (inputs / f"{_isic_id(index)}.jpg").write_bytes(jpeg)
        (masks / f"{_isic_id(index)}_segmentation.png").write_bytes(_encode(".png", mask))


def _dataset_params(n_train: int, n_val: int, height: int, width: int, seed: int) -> dict:
    return {
        "generator": "isic-unet data/synthetic.py",
        "version": GENERATOR_VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "height": height,
        "width": width,
        "seed": seed,
    }


def is_synthetic_set(root: Path) -> bool:
    """Whether ``root`` is a data set this generator wrote (it holds its parameters file)."""
    return _read_params(root) is not None


def _read_params(root: Path) -> dict | None:
    try:
        return json.loads((root / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _check_replaceable(root: Path) -> None:
    """Only an absent or empty folder, or a synthetic data set generated before, may be
    replaced: a mistyped root must never wipe someone's files."""
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder")
    if any(root.iterdir()) and not (root / PARAMS_FILE).is_file():
        raise FileExistsError(f"{root} is not empty and holds no {PARAMS_FILE}; not replacing it")


def _replace_folder(new: Path, root: Path) -> None:
    # Rename the old copy away first so that root is, at every moment, absent or complete.
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
        root.rename(old)
    new.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_synthetic_isic(
    root: str | Path,
    n_train: int = 160,
    n_val: int = 40,
    height: int = 192,
    width: int = 256,
    seed: int = 0,
) -> Path:
    """Write a synthetic data set in the ISIC 2018 Task 1 layout.

    Training ids are 0 .. n_train - 1 and validation ids n_train .. n_train + n_val - 1; image
    ``i`` is rendered from ``np.random.default_rng([seed, i])``. Files are written into a
    temporary sibling folder that is renamed to ``root`` at the end, so an interrupted run
    never leaves a partial data set behind. An existing ``root`` is replaced only if it is
    empty or is itself a synthetic data set (holds ``synthetic.json``).

    Args:
        root: destination folder.
        n_train: number of training images.
        n_val: number of validation images.
        height: image height in pixels.
        width: image width in pixels.
        seed: data set seed.

    Returns:
        ``root`` as a Path.

    Raises:
        FileExistsError: ``root`` holds other files.
    """
    root = Path(root)
    _check_replaceable(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = root.with_name(f".{root.name}.partial-{uuid.uuid4().hex[:8]}")
    partial.mkdir()
    try:
        train = range(0, n_train)
        val = range(n_train, n_train + n_val)
        _write_split(partial, TRAIN_INPUT_DIR, TRAIN_MASK_DIR, train, height, width, seed)
        _write_split(partial, VAL_INPUT_DIR, VAL_MASK_DIR, val, height, width, seed)
        params = _dataset_params(n_train, n_val, height, width, seed)
        (partial / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n")
        _replace_folder(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return root


def ensure_synthetic_isic(
    root: str | Path = "data/synthetic",
    n_train: int = 160,
    n_val: int = 40,
    height: int = 192,
    width: int = 256,
    seed: int = 0,
) -> Path:
    """Make sure ``root`` holds the synthetic data set with these parameters.

    Does nothing if ``root/synthetic.json`` records the same parameters (and generator
    version); otherwise (re)generates with :func:`generate_synthetic_isic`, whose arguments
    these are.

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    if _read_params(root) != _dataset_params(n_train, n_val, height, width, seed):
        generate_synthetic_isic(root, n_train, n_val, height, width, seed)
    return root
