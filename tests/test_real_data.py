"""Tests on real ISIC sample data (see tests/conftest.py: shared_data; skipped where it is
absent)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data.dataset import ISICDataset, eval_transforms
from data.imageio import read_image, read_mask
from data.layouts import DatasetError, find_pairs
from tests.conftest import shared_data

IMG_SIZE = 64


def test_isic2017_256_official_folders() -> None:
    root = shared_data("isic2017-256")
    train = find_pairs(root, "train")
    val = find_pairs(root, "val")
    assert (len(train), len(val)) == (1797, 52)
    assert {p.image.parent.name for p in train} == {"ISIC-2017_Training_Data"}
    assert {p.mask.parent.name for p in train} == {"ISIC-2017_Training_Part1_GroundTruth"}
    assert {p.image.parent.name for p in val} == {"ISIC-2017_Validation_Data"}
    assert {p.mask.parent.name for p in val} == {"ISIC-2017_Validation_Part1_GroundTruth"}
    assert all(p.mask.stem.lower() == f"{p.id}_segmentation".lower() for p in train + val)
    assert not {p.id for p in train} & {p.id for p in val}
    with pytest.raises(DatasetError, match="no 'test' split"):
        find_pairs(root, "test")


def test_isic_fullres_sample_images_and_masks() -> None:
    pairs = find_pairs(shared_data("isic-fullres-sample"))
    assert len(pairs) == 32
    assert {p.image.parent.name for p in pairs} == {"images"}
    assert {p.mask.parent.name for p in pairs} == {"masks"}


def test_full_resolution_pair_decodes() -> None:
    # The largest file: the full-resolution case the readers must handle.
    pair = max(find_pairs(shared_data("isic-fullres-sample")), key=lambda p: p.image.stat().st_size)
    image, mask = read_image(pair.image), read_mask(pair.mask)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[:2] == mask.shape and min(mask.shape) > 256
    assert set(np.unique(mask).tolist()) == {0, 1}


@pytest.mark.parametrize("name", ["isic2017-256", "isic-fullres-sample"])
def test_one_dataset_item(name: str) -> None:
    pairs = find_pairs(shared_data(name))
    item = ISICDataset(pairs[:1], eval_transforms(IMG_SIZE))[0]
    assert item["id"] == pairs[0].id
    assert item["image"].shape == (3, IMG_SIZE, IMG_SIZE) and item["image"].dtype == torch.float32
    assert torch.isfinite(item["image"]).all()
    assert item["mask"].shape == (1, IMG_SIZE, IMG_SIZE)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
