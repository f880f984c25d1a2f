"""Tests of data/imageio.py and data/preprocess.py: photos in the orientation viewers show
(EXIF), reduced JPEG decoding with the original size, and the model's input transform."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import predict
from data.dataset import eval_transforms, load_pair
from data.imageio import read_image, read_image_reduced, reduction
from data.layouts import DatasetError, Pair
from data.preprocess import area_resize, model_input, normalize
from tests.conftest import shared_data


def gradient(height: int, width: int) -> np.ndarray:
    """RGB uint8 whose every pixel tells where it is, so turns and flips are visible."""
    rows = np.linspace(0, 255, height)[:, None] * np.ones((1, width))
    cols = np.ones((height, 1)) * np.linspace(0, 255, width)[None, :]
    return np.stack([rows, cols, 255 - rows], axis=2).astype(np.uint8)


def jpeg_with_orientation(path: Path, rgb: np.ndarray, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_exif_orientation_is_applied_as_viewers_apply_it(tmp_path: Path,
                                                            orientation: int) -> None:
    path = jpeg_with_orientation(tmp_path / "photo.jpg", gradient(60, 90), orientation)
    # OpenCV's own reader applies the tag for plain colour reads: the independent reference.
    expected = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    image = read_image(path)
    assert image.shape == expected.shape == ((90, 60, 3) if orientation >= 5 else (60, 90, 3))
    np.testing.assert_array_equal(image, expected)
    reduced, size = read_image_reduced(path, 8)
    assert size == expected.shape[:2]
    small = cv2.resize(expected, reduced.shape[1::-1], interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - small).mean() < 4  # the same picture, turned alike


def test_predicting_an_oriented_photo_gives_masks_as_the_photo_is_seen(
        tmp_path: Path, tiny_checkpoint_dir: Path) -> None:
    photo = jpeg_with_orientation(tmp_path / "photo.jpg", gradient(60, 90), 6)
    assert predict.main(["--checkpoint", str(tiny_checkpoint_dir / "best.pt"), "--input",
                         str(photo), "--output", str(tmp_path / "out"), "--overlay",
                         "--save-probabilities", "--device", "cpu"]) == 0
    for name in ("photo_segmentation.png", "photo_probability.png", "photo_overlay.jpg"):
        assert cv2.imread(str(tmp_path / "out" / name)).shape[:2] == (90, 60), name


def test_a_training_pair_takes_masks_drawn_on_the_photo_as_seen(tmp_path: Path) -> None:
    photo = jpeg_with_orientation(tmp_path / "x.jpg", gradient(60, 90), 8)
    seen = np.zeros((90, 60), np.uint8)
    seen[10:40, 5:30] = 255
    assert cv2.imwrite(str(tmp_path / "x_segmentation.png"), seen)
    image, mask = load_pair(Pair("x", photo, tmp_path / "x_segmentation.png"))
    assert image.shape == (90, 60, 3) and mask.shape == (90, 60) and mask[20, 10] == 1
    assert cv2.imwrite(str(tmp_path / "x_segmentation.png"), seen.T.copy())  # as stored
    with pytest.raises(DatasetError, match="EXIF orientation"):
        load_pair(Pair("x", photo, tmp_path / "x_segmentation.png"))


@pytest.mark.parametrize("height, width, min_side, factor", [
    (4000, 6000, 128, 8), (4000, 6000, 256, 4), (2848, 4288, 256, 4), (1536, 2048, 256, 2),
    (767, 1022, 256, 1), (1000, 300, 64, 2), (255, 255, 64, 1)])
def test_reduction_keeps_twice_the_model_size_on_each_side(height: int, width: int,
                                                           min_side: int, factor: int) -> None:
    assert reduction(height, width, min_side) == factor
    assert min(height, width) / factor >= 2 * min_side or factor == 1


def test_reduced_decoding_of_a_large_jpeg_keeps_its_size_and_picture(tmp_path: Path) -> None:
    rgb = cv2.resize(gradient(60, 90), (1200, 800), interpolation=cv2.INTER_LINEAR)
    path = tmp_path / "big.jpg"
    Image.fromarray(rgb).save(path, "JPEG", quality=95)
    reduced, size = read_image_reduced(path, 64)
    assert size == (800, 1200) and reduced.shape == (200, 300, 3)  # 1/4: 200 >= 2 * 64
    full = area_resize(read_image(path), 64)
    assert np.abs(area_resize(reduced, 64).astype(int) - full).max() <= 6
    png = tmp_path / "big.png"
    assert cv2.imwrite(str(png), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    image, size = read_image_reduced(png, 64)  # only JPEGs have a DCT to scale in
    assert image.shape == (800, 1200, 3) and size == (800, 1200)


def test_the_model_input_is_the_validation_transform_of_training() -> None:
    image = np.random.default_rng(0).integers(0, 256, (70, 50, 3), dtype=np.uint8)
    expected = eval_transforms(32)(image=image)["image"].transpose(2, 0, 1)
    np.testing.assert_array_equal(model_input(image, 32), expected)
    table = normalize(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3))
    np.testing.assert_allclose(table[0, 0], (0 - np.array([0.485, 0.456, 0.406])) /
                               np.array([0.229, 0.224, 0.225]), rtol=1e-6)


def test_large_area_resizes_average_blocks_first_and_stay_close() -> None:
    mask = np.zeros((2848, 4288), np.uint8)
    cv2.circle(mask, (2000, 1400), 900, 1, -1)
    fast = area_resize(mask, 256)
    exact = cv2.resize(mask, (256, 256), interpolation=cv2.INTER_AREA)
    assert (fast != exact).mean() < 0.002  # a few pixels along the border


def test_reduced_decoding_of_real_images_matches_full_decoding(tmp_path: Path) -> None:
    images = sorted((shared_data("isic-fullres-sample") / "images").glob("*.jpg"))
    for path in images[:6]:
        reduced, size = read_image_reduced(path, 128)
        full = read_image(path)
        assert size == full.shape[:2]
        difference = np.abs(model_input(reduced, 128) - model_input(full, 128))
        assert difference.mean() < 0.05, path.name  # normalised: under 3 of 255 grey levels
