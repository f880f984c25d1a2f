"""Tests of decoding (data/imageio.py), the Dataset and the train/validation split
(data/dataset.py)."""

from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochSampler,
    ISICDataset,
    eval_transforms,
    train_transforms,
)
from data.imageio import CorruptFileError, read_image, read_mask
from data.layouts import DatasetError, Pair, find_pairs
from data.splits import SplitSettings, fold_pairs, split_pairs, training_splits
from evaluation import read_scored_mask

IMG_SIZE = 32


def write(path: Path, array: np.ndarray, *params: int) -> Path:
    assert cv2.imwrite(str(path), array, list(params))
    return path


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def denormalise(image: torch.Tensor) -> np.ndarray:
    """``(3, S, S)`` normalised tensor -> ``(S, S, 3)`` RGB floats in [0, 1]."""
    return image.numpy().transpose(1, 2, 0) * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)


@pytest.fixture(scope="module")
def pairs(synthetic_root: Path) -> list[Pair]:
    return find_pairs(synthetic_root, "train")[:4]


# ---------------------------------------------------------------- read_image and read_mask


def test_read_image_returns_rgb(tmp_path: Path) -> None:
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[...] = (10, 20, 30)
    image = read_image(write(tmp_path / "colour.png", bgr))
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [30, 20, 10]


def test_read_image_grayscale(tmp_path: Path) -> None:
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    image = read_image(write(tmp_path / "gray.png", gray))
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_read_image_drops_alpha(tmp_path: Path) -> None:
    bgra = np.zeros((5, 7, 4), np.uint8)
    bgra[...] = (10, 20, 30, 40)
    image = read_image(write(tmp_path / "rgba.png", bgra))
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [30, 20, 10]


def test_read_image_scales_16_bit_down(tmp_path: Path) -> None:
    eight_bit = noise(5, 7)
    image = read_image(write(tmp_path / "deep.png", eight_bit.astype(np.uint16) * 257))
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, eight_bit[..., ::-1])


def test_read_mask_binarises_above_128_as_the_scorer_does(tmp_path: Path) -> None:
    values = np.array([[0, 1, 127, 128, 129, 200, 255]], np.uint8)
    path = write(tmp_path / "mask.png", values)
    mask = read_mask(path)
    assert mask.dtype == np.uint8
    assert mask.tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    np.testing.assert_array_equal(mask.astype(bool), read_scored_mask(path))


def test_read_mask_understands_0_1_masks(tmp_path: Path) -> None:
    values = np.array([[0, 1, 1], [0, 0, 1]], np.uint8)
    np.testing.assert_array_equal(read_mask(write(tmp_path / "mask01.png", values)), values)


def test_read_mask_16_bit_and_colour(tmp_path: Path) -> None:
    expected = np.array([[0, 1], [1, 0]], np.uint8)
    deep = write(tmp_path / "deep.png", expected.astype(np.uint16) * 65535)
    np.testing.assert_array_equal(read_mask(deep), expected)
    colour = write(tmp_path / "colour.png", np.repeat(expected[..., None] * 255, 3, axis=2))
    np.testing.assert_array_equal(read_mask(colour), expected)


def test_read_mask_all_background(tmp_path: Path) -> None:
    mask = read_mask(write(tmp_path / "empty.png", np.zeros((4, 4), np.uint8)))
    assert mask.shape == (4, 4) and not mask.any()


# ---------------------------------------------------------------- bad files


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ISIC_0000000.jpg"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(CorruptFileError, match="ISIC_0000000.jpg.*not a readable image"):
        read_image(path)


def test_truncated_jpeg_names_the_file(tmp_path: Path) -> None:
    whole = write(tmp_path / "whole.jpg", noise(64, 64), cv2.IMWRITE_JPEG_QUALITY, 90)
    data = whole.read_bytes()
    cut = tmp_path / "ISIC_0000001.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert read_image(whole).shape == (64, 64, 3)
    with pytest.raises(CorruptFileError, match="ISIC_0000001.jpg.*truncated"):
        read_image(cut)


def test_truncated_png_mask_names_the_file(tmp_path: Path) -> None:
    whole = write(tmp_path / "whole.png", (noise(32, 32)[..., 0] > 128).astype(np.uint8) * 255)
    data = whole.read_bytes()
    cut = tmp_path / "ISIC_0000001_segmentation.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="ISIC_0000001_segmentation.png.*truncated"):
        read_mask(cut)


def test_empty_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ISIC_0000002.jpg"
    path.touch()
    with pytest.raises(CorruptFileError, match="ISIC_0000002.jpg.*empty"):
        read_image(path)
    with pytest.raises(CorruptFileError, match="ISIC_0000002.jpg.*empty"):
        read_mask(path)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "gone.jpg")


def test_dataset_reports_a_corrupt_image(tmp_path: Path) -> None:
    image = tmp_path / "ISIC_0000003.jpg"
    image.write_bytes(b"\x00garbage" * 100)
    mask = write(tmp_path / "ISIC_0000003_segmentation.png", np.zeros((8, 8), np.uint8))
    dataset = ISICDataset([Pair("ISIC_0000003", image, mask)], eval_transforms(IMG_SIZE))
    with pytest.raises(CorruptFileError, match="ISIC_0000003.jpg"):
        dataset[0]


def test_dataset_reports_a_mask_of_another_size(tmp_path: Path) -> None:
    image = write(tmp_path / "ISIC_0000004.png", noise(8, 10))
    mask = write(tmp_path / "ISIC_0000004_segmentation.png", np.zeros((8, 12), np.uint8))
    dataset = ISICDataset([Pair("ISIC_0000004", image, mask)], eval_transforms(IMG_SIZE))
    with pytest.raises(DatasetError) as info:
        dataset[0]
    message = str(info.value)
    assert str(image) in message and str(mask) in message
    assert "12x8" in message and "10x8" in message


def test_empty_dataset_is_refused() -> None:
    with pytest.raises(DatasetError, match="empty"):
        ISICDataset([], eval_transforms(IMG_SIZE))


# ---------------------------------------------------------------- items


def test_eval_item_shapes_dtypes_and_values(pairs: list[Pair]) -> None:
    dataset = ISICDataset(pairs, eval_transforms(IMG_SIZE))
    assert len(dataset) == len(pairs)
    item = dataset[1]
    assert item["id"] == pairs[1].id
    assert item["image"].shape == (3, IMG_SIZE, IMG_SIZE) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, IMG_SIZE, IMG_SIZE) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}  # synthetic lesions are visible

    # Independently: INTER_AREA resize of the RGB image and ImageNet normalisation; the mask's
    # lesion fraction per output pixel (area average) binarised at 0.5.
    size = (IMG_SIZE, IMG_SIZE)
    image = cv2.cvtColor(cv2.imread(str(pairs[1].image)), cv2.COLOR_BGR2RGB)
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA) / 255.0
    np.testing.assert_allclose(denormalise(item["image"]), resized, atol=1e-5)
    lesion = (cv2.imread(str(pairs[1].mask), cv2.IMREAD_GRAYSCALE) > 128).astype(np.float32)
    fraction = cv2.resize(lesion, size, interpolation=cv2.INTER_AREA)
    decided = np.abs(fraction - 0.5) > 1e-3  # a pixel exactly half lesion may round either way
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(item["mask"][0].numpy()[decided], fraction[decided] > 0.5)


def test_eval_transforms_are_deterministic(pairs: list[Pair]) -> None:
    dataset = ISICDataset(pairs, eval_transforms(IMG_SIZE))
    first = dataset[0]
    for key in (0, (0, 1), (0, 2)):
        item = dataset[key]
        assert torch.equal(item["image"], first["image"])
        assert torch.equal(item["mask"], first["mask"])


def test_train_items_keep_binary_masks(pairs: list[Pair]) -> None:
    dataset = ISICDataset(pairs, train_transforms(IMG_SIZE))
    for seed in range(8):
        item = dataset[(seed % len(pairs), seed)]
        assert item["image"].shape == (3, IMG_SIZE, IMG_SIZE)
        assert item["mask"].shape == (1, IMG_SIZE, IMG_SIZE)
        assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def test_same_index_and_seed_give_the_same_augmentation(pairs: list[Pair]) -> None:
    dataset = ISICDataset(pairs, train_transforms(IMG_SIZE))
    first = dataset[(2, 1234)]
    dataset[(0, 99)]  # other items in between, and other global seeds, change nothing
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    again = dataset[(2, 1234)]
    assert torch.equal(first["image"], again["image"])
    assert torch.equal(first["mask"], again["mask"])


def test_different_seeds_give_different_augmentations(pairs: list[Pair]) -> None:
    dataset = ISICDataset(pairs, train_transforms(IMG_SIZE))
    images = [dataset[(0, seed)]["image"] for seed in range(4)]
    for i, a in enumerate(images):
        for b in images[i + 1:]:
            assert not torch.equal(a, b)


def test_augmentation_moves_image_and_mask_together(tmp_path: Path) -> None:
    # An image that is its own mask (white lesion on black), so any misalignment shows.
    mask = np.zeros((48, 64), np.uint8)
    cv2.ellipse(mask, (24, 20), (18, 10), 30, 0, 360, 255, -1)
    image = write(tmp_path / "x.png", np.repeat(mask[..., None], 3, axis=2))
    dataset = ISICDataset([Pair("x", image, write(tmp_path / "x_segmentation.png", mask))],
                          train_transforms(IMG_SIZE))
    for seed in range(10):
        item = dataset[(0, seed)]
        lesion_in_image = denormalise(item["image"]).mean(axis=2) > 0.5
        agreement = (lesion_in_image == (item["mask"][0].numpy() > 0.5)).mean()
        assert agreement > 0.95, f"seed {seed}: image and mask agree on {agreement:.1%}"


def test_epoch_sampler_is_reproducible_per_epoch() -> None:
    sampler = EpochSampler(10, seed=7)
    first = list(sampler)
    assert sorted(index for index, _ in first) == list(range(10)) and len(sampler) == 10
    assert list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert [index for index, _ in second] != [index for index, _ in first]
    assert {s for _, s in second}.isdisjoint({s for _, s in first})
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_epoch_sampler_deals_one_order_out_to_the_processes() -> None:
    alone = list(EpochSampler(10, seed=7))
    two = [list(EpochSampler(10, seed=7, rank=rank, world=2)) for rank in range(2)]
    assert [item for pair in zip(*two) for item in pair] == alone  # in turn, seeds included
    three = [list(EpochSampler(10, seed=7, rank=rank, world=3)) for rank in range(3)]
    assert [len(items) for items in three] == [3, 3, 3]  # the tenth is skipped: equal steps
    assert [item for triple in zip(*three) for item in triple] == alone[:9]


def test_epoch_sampler_resumes_mid_epoch_for_any_number_of_processes() -> None:
    alone = list(EpochSampler(10, seed=7))
    resumed = EpochSampler(10, seed=7)
    resumed.set_epoch(0, start=4)
    assert list(resumed) == alone[4:] and len(resumed) == 6
    halves = []
    for rank in range(2):
        sampler = EpochSampler(10, seed=7, rank=rank, world=2)
        sampler.set_epoch(0, start=4)
        halves.append(list(sampler))
    assert [item for pair in zip(*halves) for item in pair] == alone[4:]


# ---------------------------------------------------------------- split_pairs


def fake_pairs(count: int) -> list[Pair]:
    return [Pair(f"ISIC_{i:07d}", Path(f"{i}.jpg"), Path(f"{i}.png")) for i in range(count)]


@pytest.mark.parametrize("count, fraction, expected_val", [(20, 0.25, 5), (24, 0.1, 2),
                                                           (20, 0.01, 1), (20, 0.0, 0)])
def test_split_sizes_are_disjoint_and_cover_everything(count: int, fraction: float,
                                                       expected_val: int) -> None:
    pairs = fake_pairs(count)
    train, val = split_pairs(pairs, fraction, seed=0)
    assert len(val) == expected_val and len(train) == count - expected_val
    assert {p.id for p in train}.isdisjoint({p.id for p in val})
    assert sorted(train + val, key=lambda p: p.id) == pairs
    assert train == sorted(train, key=lambda p: p.id) and val == sorted(val, key=lambda p: p.id)


def test_split_is_deterministic_and_ignores_listing_order() -> None:
    pairs = fake_pairs(30)
    shuffled = list(pairs)
    random.Random(0).shuffle(shuffled)
    assert shuffled != pairs
    assert split_pairs(shuffled, 0.2, seed=3) == split_pairs(pairs, 0.2, seed=3)
    assert split_pairs(pairs, 0.2, seed=3) == split_pairs(pairs, 0.2, seed=3)


def test_split_depends_on_the_seed() -> None:
    pairs = fake_pairs(30)
    assert split_pairs(pairs, 0.2, seed=0)[1] != split_pairs(pairs, 0.2, seed=1)[1]


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_split_refuses_bad_fractions(fraction: float) -> None:
    with pytest.raises(ValueError, match="--val-fraction"):
        split_pairs(fake_pairs(10), fraction, seed=0)


def test_split_refuses_too_few_pairs() -> None:
    with pytest.raises(DatasetError, match="too few"):
        split_pairs(fake_pairs(1), 0.5, seed=0)


def test_folds_hold_out_every_pair_once_whatever_the_listing_order() -> None:
    pairs = fake_pairs(23)
    shuffled = list(pairs)
    random.Random(1).shuffle(shuffled)
    held_out = []
    for fold in range(5):
        train, val = fold_pairs(shuffled, fold, 5, seed=0)
        assert (train, val) == fold_pairs(pairs, fold, 5, seed=0)
        assert len(val) in (4, 5) and sorted(train + val, key=lambda p: p.id) == pairs
        held_out += val
    assert sorted(held_out, key=lambda p: p.id) == pairs
    assert fold_pairs(pairs, 0, 5, seed=0)[1] != fold_pairs(pairs, 0, 5, seed=1)[1]
    with pytest.raises(DatasetError, match="too few"):
        fold_pairs(fake_pairs(3), 0, 5, seed=0)


def test_training_splits_take_the_fold(synthetic_root: Path) -> None:
    pairs = find_pairs(synthetic_root, "train")
    train, val = training_splits(synthetic_root, SplitSettings(fold=2, folds=4))
    assert (train, val) == fold_pairs(pairs, 2, 4, seed=0) and len(val) == 6


def test_large_jpeg_from_its_files_gives_the_cached_item(tmp_path: Path) -> None:
    # A JPEG of many times the training size is decoded at reduced scale; its mask is not. Read
    # from the files (--no-cache) the item must be the one the preparation cache stores.
    from data.cache import decode_resized
    from data.dataset import FileSource

    image = cv2.GaussianBlur(noise(600, 900), (0, 0), 5)
    mask = np.zeros((600, 900), np.uint8)
    cv2.ellipse(mask, (450, 300), (300, 180), 20, 0, 360, 255, -1)
    pair = Pair("ISIC_0000001", write(tmp_path / "ISIC_0000001.jpg", image),
                write(tmp_path / "ISIC_0000001_segmentation.png", mask))
    from_files = ISICDataset(FileSource([pair], IMG_SIZE), eval_transforms(IMG_SIZE))[0]
    cached = decode_resized((pair, IMG_SIZE))
    expected = ISICDataset(_ArraySource(cached.image, cached.mask), eval_transforms(IMG_SIZE))[0]
    assert from_files["image"].shape == (3, IMG_SIZE, IMG_SIZE)
    assert torch.equal(from_files["image"], expected["image"])
    assert torch.equal(from_files["mask"], expected["mask"])


class _ArraySource:
    """One already decoded sample, as the preparation cache hands it out."""

    def __init__(self, image: np.ndarray, mask: np.ndarray) -> None:
        self.ids, self.image, self.mask = ["ISIC_0000001"], image, mask

    def __len__(self) -> int:
        return 1

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.image, self.mask
