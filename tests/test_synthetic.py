"""Tests of the synthetic ISIC-like data set generator (data/synthetic.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.synthetic import (
    PARAMS_FILE,
    TRAIN_INPUT_DIR,
    TRAIN_MASK_DIR,
    VAL_INPUT_DIR,
    VAL_MASK_DIR,
    ensure_synthetic_isic,
    generate_synthetic_isic,
    render_sample,
)

# Small enough to keep the whole module at a fraction of a second per data set.
SMALL = {"n_train": 6, "n_val": 3, "height": 48, "width": 64}
SPLITS = ((TRAIN_INPUT_DIR, TRAIN_MASK_DIR), (VAL_INPUT_DIR, VAL_MASK_DIR))
ID_PATTERN = re.compile(r"^ISIC_(\d{7})$")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_isic(tmp_path_factory.mktemp("synth") / "isic", seed=0, **SMALL)


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    # Straight from the renderer, without JPEG loss, at a size where the picture is readable.
    return [render_sample(np.random.default_rng([0, i]), 96, 128) for i in range(24)]


def _relative_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _read_mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _mask_paths(root: Path) -> list[Path]:
    return sorted((root / TRAIN_MASK_DIR).glob("*.png")) + sorted(
        (root / VAL_MASK_DIR).glob("*.png")
    )


def test_render_sample_shapes_and_types() -> None:
    image, mask = render_sample(np.random.default_rng(7), 48, 64)
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    assert mask.shape == (48, 64) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}


def test_render_sample_is_deterministic() -> None:
    first = render_sample(np.random.default_rng([3, 5]), 48, 64)
    second = render_sample(np.random.default_rng([3, 5]), 48, 64)
    other = render_sample(np.random.default_rng([3, 6]), 48, 64)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], other[0])


def test_same_seed_gives_identical_files(dataset: Path, tmp_path: Path) -> None:
    again = generate_synthetic_isic(tmp_path / "again", seed=0, **SMALL)
    assert _relative_files(again) == _relative_files(dataset)


def test_different_seed_gives_different_images(dataset: Path, tmp_path: Path) -> None:
    other = generate_synthetic_isic(tmp_path / "other", seed=1, **SMALL)
    first, second = _relative_files(dataset), _relative_files(other)
    images = [name for name in first if name.endswith(".jpg")]
    assert images and first.keys() == second.keys()
    assert all(first[name] != second[name] for name in images)


def test_layout_names_and_counts(dataset: Path) -> None:
    ids_per_split = []
    for (input_dir, mask_dir), count in zip(SPLITS, (SMALL["n_train"], SMALL["n_val"])):
        inputs, masks = dataset / input_dir, dataset / mask_dir
        assert (inputs / "LICENSE.txt").is_file()
        assert "synthetic" in (inputs / "LICENSE.txt").read_text().lower()
        images = sorted(inputs.glob("*.jpg"))
        assert len(images) == count
        assert {p.name for p in inputs.iterdir()} == {p.name for p in images} | {"LICENSE.txt"}
        ids = [p.stem for p in images]
        assert all(ID_PATTERN.match(i) for i in ids)
        assert sorted(p.name for p in masks.iterdir()) == [f"{i}_segmentation.png" for i in ids]
        ids_per_split.append(ids)
    train, val = ids_per_split
    assert train[0] == "ISIC_0000000"
    assert val[0] == f"ISIC_{SMALL['n_train']:07d}"  # validation continues after training
    assert not set(train) & set(val)
    params = json.loads((dataset / PARAMS_FILE).read_text())
    assert {k: params[k] for k in SMALL} == SMALL and params["seed"] == 0


def test_no_temporary_folders_left(dataset: Path) -> None:
    assert [p.name for p in dataset.parent.iterdir()] == [dataset.name]


def test_masks_are_binary_and_match_images(dataset: Path) -> None:
    for input_dir, mask_dir in SPLITS:
        for image_path in sorted((dataset / input_dir).glob("*.jpg")):
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            mask = _read_mask(dataset / mask_dir / f"{image_path.stem}_segmentation.png")
            assert mask.ndim == 2 and mask.dtype == np.uint8
            assert mask.shape == image.shape[:2] == (SMALL["height"], SMALL["width"])
            assert set(np.unique(mask)) <= {0, 255}


def test_lesion_area_is_sensible(dataset: Path) -> None:
    fractions = np.array([(_read_mask(p) > 0).mean() for p in _mask_paths(dataset)])
    assert (fractions > 0).mean() >= 0.8
    assert 0.02 <= fractions.mean() <= 0.8


def test_lesion_is_darker_than_skin(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    darker = []
    for image, mask in samples:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        field_of_view = gray > 40  # the vignette is near black
        lesion, skin = mask > 0, field_of_view & (mask == 0)
        if lesion.any() and skin.any():
            darker.append(gray[lesion].mean() < gray[skin].mean())
    assert len(darker) >= 0.8 * len(samples)
    assert all(darker)


def test_vignette_darkens_corners(samples: list[tuple[np.ndarray, np.ndarray]]) -> None:
    corners, centres = [], []
    for image, _ in samples:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        h, w = gray.shape
        patches = [gray[:4, :4], gray[:4, -4:], gray[-4:, :4], gray[-4:, -4:]]
        corners.append(np.mean([p.mean() for p in patches]))
        centres.append(gray[h // 2 - 8 : h // 2 + 8, w // 2 - 8 : w // 2 + 8].mean())
    assert max(corners) < 40
    assert np.mean(corners) < 0.3 * np.mean(centres)


def test_ensure_generates_once_then_reuses(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    assert ensure_synthetic_isic(root, seed=0, **SMALL) == root
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) == 2 * (SMALL["n_train"] + SMALL["n_val"]) + 3
    # Push mtimes into the past so that any rewrite, however fast, is seen.
    for path in files:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    ensure_synthetic_isic(root, seed=0, **SMALL)
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in files)


def test_ensure_regenerates_on_changed_parameters(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    ensure_synthetic_isic(root, seed=0, **SMALL)
    ensure_synthetic_isic(root, seed=0, **{**SMALL, "n_train": 2})
    assert len(list((root / TRAIN_INPUT_DIR).glob("*.jpg"))) == 2
    assert json.loads((root / PARAMS_FILE).read_text())["n_train"] == 2
    before = (root / TRAIN_INPUT_DIR / "ISIC_0000000.jpg").read_bytes()
    ensure_synthetic_isic(root, seed=5, **{**SMALL, "n_train": 2})
    assert (root / TRAIN_INPUT_DIR / "ISIC_0000000.jpg").read_bytes() != before


def test_refuses_to_replace_unrelated_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_synthetic_isic(tmp_path, **SMALL)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
