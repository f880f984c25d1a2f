"""Tests of the folder-layout reader (data/layouts.py), on tiny layouts built in tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.layouts import LAYOUTS, DatasetError, find_images, find_pairs, find_split_folders

IDS = ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]


def write_image(path: Path, seed: int = 0) -> Path:
    """A tiny real image (JPEG or PNG by the suffix), 6x8 pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


def write_mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:6] = 255
    assert cv2.imwrite(str(path), mask)
    return path


def make_split(root: Path, layout: str, split: str, ids: list[str],
               mask_suffix: str = "_segmentation", image_ext: str = ".jpg") -> tuple[Path, Path]:
    """Write ``ids`` as images and masks in the official folders of ``layout``/``split``."""
    image_dir, mask_dir = (root / name for name in LAYOUTS[(layout, split)])
    for seed, sample_id in enumerate(ids):
        write_image(image_dir / f"{sample_id}{image_ext}", seed)
        write_mask(mask_dir / f"{sample_id}{mask_suffix}.png")
    return image_dir, mask_dir


def assert_pairs(pairs: list, ids: list[str], image_dir: Path, mask_dir: Path) -> None:
    assert [p.id for p in pairs] == sorted(ids)
    for pair in pairs:
        assert pair.image.parent == image_dir and pair.image.stem == pair.id
        assert pair.mask.parent == mask_dir and pair.mask.name.startswith(pair.id)


# ---------------------------------------------------------------- official layouts


def test_isic_2018_train_val_and_test(tmp_path: Path) -> None:
    folders = {split: make_split(tmp_path, "ISIC 2018", split, [f"ISIC_00000{i}{split[0]}"
                                                                for i in range(3)])
               for split in ("train", "val", "test")}
    assert find_split_folders(tmp_path) == folders
    for split, (image_dir, mask_dir) in folders.items():
        pairs = find_pairs(tmp_path, split)
        assert_pairs(pairs, [f"ISIC_00000{i}{split[0]}" for i in range(3)], image_dir, mask_dir)
    assert image_dir.name == "ISIC2018_Task1-2_Test_Input"
    assert mask_dir.name == "ISIC2018_Task1_Test_GroundTruth"


def test_isic_2017_with_superpixels_licences_and_hidden_files(tmp_path: Path) -> None:
    image_dir, mask_dir = make_split(tmp_path, "ISIC 2017", "train", IDS[:2])
    write_mask(mask_dir / f"{IDS[2]}_Segmentation.png")  # both capitalisations occur
    write_image(image_dir / f"{IDS[2]}.jpg")
    for sample_id in IDS:
        write_image(image_dir / f"{sample_id}_superpixels.png")
    for folder in (image_dir, mask_dir):
        (folder / "LICENSE.txt").write_text("CC-BY-NC")
        (folder / "ATTRIBUTION.txt").write_text("ISIC Archive")
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / f"._{IDS[0]}.jpg").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS zip debris
    assert image_dir.name == "ISIC-2017_Training_Data"
    pairs = find_pairs(tmp_path, "train")
    assert_pairs(pairs, IDS, image_dir, mask_dir)
    assert pairs[2].mask.name == f"{IDS[2]}_Segmentation.png"
    assert find_images(image_dir) == [image_dir / f"{i}.jpg" for i in IDS]


@pytest.mark.parametrize("split", ["val", "test"])
def test_isic_2017_validation_and_test_folders(tmp_path: Path, split: str) -> None:
    image_dir, mask_dir = make_split(tmp_path, "ISIC 2017", split, IDS)
    assert_pairs(find_pairs(tmp_path, split), IDS, image_dir, mask_dir)


@pytest.mark.parametrize("split", ["train", "test"])
def test_isic_2016(tmp_path: Path, split: str) -> None:
    image_dir, mask_dir = make_split(tmp_path, "ISIC 2016", split, IDS, "_Segmentation")
    assert image_dir.name.startswith("ISBI2016_ISIC_Part1_")
    assert_pairs(find_pairs(tmp_path, split), IDS, image_dir, mask_dir)


def test_plain_images_and_masks_with_same_stem(tmp_path: Path) -> None:
    image_dir, mask_dir = make_split(tmp_path, "images/ + masks/", "train", IDS,
                                     mask_suffix="", image_ext=".png")
    assert (image_dir.name, mask_dir.name) == ("images", "masks")
    pairs = find_pairs(tmp_path)
    assert_pairs(pairs, IDS, image_dir, mask_dir)
    assert all(p.mask.stem == p.id for p in pairs)
    with pytest.raises(DatasetError, match="no 'val' split"):
        find_pairs(tmp_path, "val")


def test_pairs_are_matched_by_id_not_by_listing_order(tmp_path: Path) -> None:
    ids = ["b_lesion", "a_lesion", "c_lesion"]
    image_dir, mask_dir = make_split(tmp_path, "images/ + masks/", "train", ids)
    write_mask(mask_dir / "c_lesion_segmentation.png")  # rewritten last: newest file
    pairs = find_pairs(tmp_path)
    assert [p.id for p in pairs] == sorted(ids)
    assert [p.mask.name for p in pairs] == [f"{i}_segmentation.png" for i in sorted(ids)]
    assert [p.image.name for p in pairs] == [f"{i}.jpg" for i in sorted(ids)]


# ---------------------------------------------------------------- unpaired and duplicate files


def test_image_without_mask_is_an_error_listing_the_ids(tmp_path: Path) -> None:
    image_dir, mask_dir = make_split(tmp_path, "ISIC 2018", "train", IDS)
    orphans = [f"ISIC_10000{i:02d}" for i in range(7)]
    for sample_id in orphans:
        write_image(image_dir / f"{sample_id}.jpg")
    with pytest.raises(DatasetError) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert "images without a mask" in message and str(mask_dir) in message
    assert "7 (" in message  # the count ...
    assert all(i in message for i in orphans[:5])  # ... the first few ids ...
    assert orphans[6] not in message  # ... and not a wall of text
    assert "--skip-unpaired" in message


def test_mask_without_image_is_an_error_listing_the_ids(tmp_path: Path) -> None:
    image_dir, mask_dir = make_split(tmp_path, "ISIC 2018", "train", IDS)
    write_mask(mask_dir / "ISIC_0000099_segmentation.png")
    with pytest.raises(DatasetError, match=r"masks without an image .*: 1 \(ISIC_0000099\)"):
        find_pairs(tmp_path)


def test_skip_unpaired_returns_the_rest_and_warns(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    image_dir, mask_dir = make_split(tmp_path, "ISIC 2018", "train", IDS)
    write_image(image_dir / "ISIC_0000098.jpg")
    write_mask(mask_dir / "ISIC_0000099_segmentation.png")
    with caplog.at_level(logging.WARNING, logger="data.layouts"):
        pairs = find_pairs(tmp_path, skip_unpaired=True)
    assert_pairs(pairs, IDS, image_dir, mask_dir)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ISIC_0000098" in warnings[0].getMessage()
    assert "ISIC_0000099" in warnings[0].getMessage()


def test_skip_unpaired_with_no_pair_at_all_is_an_error(tmp_path: Path) -> None:
    image_dir, mask_dir = make_split(tmp_path, "ISIC 2018", "train", IDS, mask_suffix="_other")
    with pytest.raises(DatasetError, match="has a mask"):
        find_pairs(tmp_path, skip_unpaired=True)


def test_duplicate_image_ids_are_an_error(tmp_path: Path) -> None:
    image_dir, _ = make_split(tmp_path, "ISIC 2018", "train", IDS)
    write_image(image_dir / f"{IDS[1]}.png")
    with pytest.raises(DatasetError, match=f"duplicate id '{IDS[1]}'"):
        find_pairs(tmp_path)


def test_two_masks_for_one_id_are_an_error(tmp_path: Path) -> None:
    _, mask_dir = make_split(tmp_path, "ISIC 2017", "train", IDS)
    write_mask(mask_dir / f"{IDS[0]}_Segmentation.png")
    with pytest.raises(DatasetError, match=f"two masks for id '{IDS[0]}'"):
        find_pairs(tmp_path)


# ---------------------------------------------------------------- missing data


def test_nonexistent_root_says_how_to_get_the_data(tmp_path: Path) -> None:
    missing = tmp_path / "ISIC2018"
    with pytest.raises(DatasetError) as info:
        find_pairs(missing)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "scripts/download_isic.py" in message and "--data synthetic" in message


def test_empty_root_lists_the_expected_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for image_folder, mask_folder in LAYOUTS.values():
        assert f"{image_folder}/ + {mask_folder}/" in message
    assert "scripts/download_isic.py" in message and "--data synthetic" in message


def test_image_folder_without_images(tmp_path: Path) -> None:
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    (image_dir / "LICENSE.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images .* in .*images"):
        find_pairs(tmp_path)


def test_missing_mask_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / f"{IDS[0]}.jpg")
    with pytest.raises(DatasetError, match="mask folder .*masks for .*images does not exist"):
        find_pairs(tmp_path)
