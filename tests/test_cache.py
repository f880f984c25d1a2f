"""Tests of the preparation cache (data/cache.py), its use by train.py, and scripts/prepare.py,
on tiny synthetic data sets."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import data.cache as cache_module
import train
from data.cache import IMAGES_FILE, MASKS_FILE, prepare_splits
from data.dataset import ISICDataset, eval_transforms, train_transforms
from data.layouts import LAYOUTS, DatasetError, find_pairs
from data.splits import split_pairs, training_splits
from tests.conftest import TINY_TRAIN_ARGS, load_script
from training.distributed import Cluster
from training.loaders import build_datasets
from training.options import parse_args, split_settings

CACHED_TRAIN_ARGS = [arg for arg in TINY_TRAIN_ARGS if arg != "--no-cache"]

IMG_SIZE = 32


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def lesion_mask(height: int, width: int, seed: int) -> np.ndarray:
    """A 0/255 ellipse at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    centre = (int(rng.integers(width // 4, 3 * width // 4)),
              int(rng.integers(height // 4, 3 * height // 4)))
    cv2.ellipse(mask, centre, (width // 4, height // 5), int(rng.integers(180)), 0, 360, 255, -1)
    return mask


def make_split(root: Path, ids: list[str], split: str = "train", height: int = 30,
               width: int = 40) -> tuple[Path, Path]:
    """Random PNG images and ellipse masks of ``ids`` in the ISIC 2018 folders of ``split``."""
    image_dir, mask_dir = (root / name for name in LAYOUTS[("ISIC 2018", split)])
    for seed, sample_id in enumerate(ids):
        pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
        write(image_dir / f"{sample_id}.png", pixels)
        write(mask_dir / f"{sample_id}_segmentation.png", lesion_mask(height, width, seed))
    return image_dir, mask_dir


def ids(count: int, start: int = 0) -> list[str]:
    return [f"ISIC_{i:07d}" for i in range(start, start + count)]


def caches_in(cache_root: Path) -> list[str]:
    return sorted(path.name for path in cache_root.iterdir()) if cache_root.is_dir() else []


def prepare_quietly(root: Path, cache_root: Path, img_size: int = IMG_SIZE,
                    splits: tuple[str, ...] = ("train",), **kwargs) -> tuple[dict, str]:
    """prepare_splits without progress bar and one process; returns (caches, report)."""
    logged: list[str] = []
    caches = prepare_splits(root, splits, img_size, cache_root=cache_root, progress=False,
                            log=logged.append, **{"workers": 1, **kwargs})
    return caches, "\n".join(logged)


# ---------------------------------------------------------------- build and reuse


def test_build_then_reuse(synthetic_root: Path, tmp_path: Path) -> None:
    caches, report = prepare_quietly(synthetic_root, tmp_path, splits=("train", "val"))
    assert report.count("built in") == 2 and "reused" not in report
    for split, count in (("train", 24), ("val", 8)):
        cache = caches[split]
        assert cache.ids == [pair.id for pair in find_pairs(synthetic_root, split)]
        images = np.load(cache.folder / IMAGES_FILE, mmap_mode="r")
        masks = np.load(cache.folder / MASKS_FILE, mmap_mode="r")
        assert images.shape == (count, IMG_SIZE, IMG_SIZE, 3) and images.dtype == np.uint8
        assert masks.shape == (count, IMG_SIZE, IMG_SIZE) and set(np.unique(masks)) == {0, 1}
    built = {split: cache.folder.stat().st_mtime_ns for split, cache in caches.items()}

    again, report = prepare_quietly(synthetic_root, tmp_path, splits=("train", "val"))
    assert report.count("reused") == 2 and "built in" not in report
    assert {split: cache.folder for split, cache in again.items()} == {
        split: cache.folder for split, cache in caches.items()}
    assert {split: cache.folder.stat().st_mtime_ns for split, cache in again.items()} == built


def test_pool_and_single_process_write_the_same_arrays(synthetic_root: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "POOL_MIN_IMAGES", 2)  # the pool even for a few images
    single, _ = prepare_quietly(synthetic_root, tmp_path / "one", workers=1)
    pooled, _ = prepare_quietly(synthetic_root, tmp_path / "two", workers=2)
    for name in (IMAGES_FILE, MASKS_FILE):
        assert np.array_equal(np.load(single["train"].folder / name),
                              np.load(pooled["train"].folder / name))


@pytest.mark.parametrize("img_size", [IMG_SIZE, 80])  # down- and up-scaling
@pytest.mark.parametrize("make_transform", [train_transforms, eval_transforms])
def test_cached_items_equal_items_from_files(synthetic_root: Path, tmp_path: Path,
                                             img_size: int, make_transform) -> None:
    caches, _ = prepare_quietly(synthetic_root, tmp_path, img_size)
    # A subset in another order than the cache's rows, as train.py's split gives.
    subset, _ = split_pairs(find_pairs(synthetic_root, "train"), 0.25, seed=3)
    subset = subset[::-1]
    transform = make_transform(img_size)
    raw = ISICDataset(subset, transform)
    cached = ISICDataset(caches["train"].source(subset), transform)
    assert len(cached) == len(raw) == 18
    for key in [(index, seed) for index in range(len(raw)) for seed in (0, 7)]:
        expected, item = raw[key], cached[key]
        assert item["id"] == expected["id"]
        assert torch.equal(item["image"], expected["image"]), key
        assert torch.equal(item["mask"], expected["mask"]), key


def test_cached_source_pickles_without_its_arrays(synthetic_root: Path, tmp_path: Path) -> None:
    caches, _ = prepare_quietly(synthetic_root, tmp_path)
    source = caches["train"].source(find_pairs(synthetic_root, "train"))
    image, mask = source.load(5)  # opens the memory maps
    copy = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 4096  # a DataLoader worker gets paths, not pixels
    again_image, again_mask = copy.load(5)
    assert np.array_equal(again_image, image) and np.array_equal(again_mask, mask)


# ---------------------------------------------------------------- what rebuilds


def test_changed_source_or_size_rebuilds(tmp_path: Path) -> None:
    root, cache_root = tmp_path / "data", tmp_path / "cache"
    image_dir, mask_dir = make_split(root, ids(4))
    first = prepare_quietly(root, cache_root)[0]["train"].folder

    mask = mask_dir / "ISIC_0000002_segmentation.png"
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    touched, report = prepare_quietly(root, cache_root)
    assert touched["train"].folder != first and "built in" in report
    assert caches_in(cache_root) == [touched["train"].folder.name]  # the stale one is gone

    white = np.full((30, 40, 3), 255, np.uint8)
    write(image_dir / "ISIC_0000001.png", white)  # new content
    modified = prepare_quietly(root, cache_root)[0]["train"]
    assert modified.folder != touched["train"].folder
    row = modified.source(find_pairs(root)[1:2]).load(0)[0]
    assert np.array_equal(row, np.full((IMG_SIZE, IMG_SIZE, 3), 255, np.uint8))

    other_size = prepare_quietly(root, cache_root, img_size=16)[0]["train"]
    assert other_size.folder != modified.folder and other_size.img_size == 16
    assert caches_in(cache_root) == sorted([modified.folder.name, other_size.folder.name])

    make_split(root, ids(1, start=9))  # an added pair
    added = prepare_quietly(root, cache_root)[0]["train"]
    assert len(added) == 5 and added.folder != modified.folder


def test_cache_of_a_removed_data_folder_is_deleted(tmp_path: Path) -> None:
    cache_root = tmp_path / "cache"
    make_split(tmp_path / "gone", ids(2))
    gone = prepare_quietly(tmp_path / "gone", cache_root)[0]["train"].folder
    shutil.rmtree(tmp_path / "gone")
    make_split(tmp_path / "kept", ids(2))
    kept = prepare_quietly(tmp_path / "kept", cache_root)[0]["train"].folder
    assert caches_in(cache_root) == [kept.name] and not gone.exists()


# ---------------------------------------------------------------- the scan report and errors


def test_unusable_files_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    root, cache_root = tmp_path / "data", tmp_path / "cache"
    image_dir, mask_dir = make_split(root, ids(5))
    data = (image_dir / "ISIC_0000001.png").read_bytes()
    (image_dir / "ISIC_0000001.png").write_bytes(data[: len(data) // 2])  # truncated
    write(mask_dir / "ISIC_0000003_segmentation.png", np.zeros((30, 41), np.uint8))
    with pytest.raises(DatasetError) as info:
        prepare_quietly(root, cache_root)
    message = str(info.value)
    assert "2 unusable sample(s)" in message
    assert "ISIC_0000001.png is truncated" in message
    assert "ISIC_0000003_segmentation.png" in message and "41x30" in message
    assert caches_in(cache_root) == []  # no cache, and no temporary folder left


def test_unusable_files_are_counted_in_the_report(tmp_path: Path) -> None:
    root = tmp_path / "data"
    image_dir, _ = make_split(root, ids(3))
    (image_dir / "ISIC_0000002.png").write_bytes(b"not an image")
    logged: list[str] = []
    with pytest.raises(DatasetError, match="ISIC_0000002.png is not a readable image"):
        prepare_splits(root, ["train"], IMG_SIZE, cache_root=tmp_path / "cache", workers=1,
                       progress=False, log=logged.append)
    report = logged[0]
    assert report_count(report, "unreadable files") == [1]
    assert report_count(report, "pairs found") == [3]
    assert "not written" in report


def report_count(report: str, label: str) -> list[int]:
    """The numbers of one row of the scan report's table."""
    row = next(line for line in report.splitlines() if line.strip().startswith(label))
    return [int(value) for value in row[len(label) + 2:].split()]


def test_report_counts_grey_masks_unpaired_files_and_shared_ids(tmp_path: Path) -> None:
    root = tmp_path / "data"
    image_dir, mask_dir = make_split(root, ids(4))
    grey = lesion_mask(30, 40, seed=1)
    grey[grey == 255] = 200  # still lesion after binarising (above 128), but reported
    write(mask_dir / "ISIC_0000001_segmentation.png", grey)
    write(image_dir / "ISIC_0000008.png", np.zeros((30, 40, 3), np.uint8))  # no mask
    write(mask_dir / "ISIC_0000009_segmentation.png", np.zeros((30, 40), np.uint8))  # no image
    make_split(root, ["ISIC_0000000", "ISIC_0000050"], split="val")  # one id also in train

    with pytest.raises(DatasetError, match="skip-unpaired"):
        prepare_quietly(root, tmp_path / "cache", splits=("train", "val"))
    caches, report = prepare_quietly(root, tmp_path / "cache", splits=("train", "val"),
                                     skip_unpaired=True)
    assert report_count(report, "pairs found") == [4, 2]
    assert report_count(report, "images without masks (skipped)") == [1, 0]
    assert report_count(report, "masks without images (skipped)") == [1, 0]
    assert report_count(report, "masks not 0/255 (binarised)") == [1, 0]
    assert report_count(report, "image/mask size mismatches") == [0, 0]
    assert "ids in more than one split: 1" in report
    assert "ISIC_0000008.png" in report and "ISIC_0000009_segmentation.png" in report
    assert "in train: ISIC_0000001" in report and "ids in more than one split: ISIC_0000000" \
        in report
    _, mask = caches["train"].source(find_pairs(root, skip_unpaired=True)[1:2]).load(0)
    assert set(np.unique(mask)) == {0, 1}
    reused = prepare_quietly(root, tmp_path / "cache", splits=("train", "val"),
                             skip_unpaired=True)[1]
    assert "(reused)" in reused
    assert report_count(reused, "masks not 0/255 (binarised)") == [1, 0]


def test_unwritable_cache_root_says_what_to_do(synthetic_root: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DatasetError, match="--cache-dir"):
        prepare_quietly(synthetic_root, blocker / "cache")


# ---------------------------------------------------------------- train.py and prepare.py


def test_train_builds_the_cache_once_and_no_cache_reads_files(
        synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cache_root = tmp_path / "cache"
    common = ["--data", str(synthetic_root), "--checkpoint-dir", str(tmp_path / "ckpt"),
              *CACHED_TRAIN_ARGS]
    assert train.main([*common, "--cache-dir", str(cache_root)]) == 0
    first = capsys.readouterr().out
    assert "scan of" in first and "(built in" in first
    folders = caches_in(cache_root)
    assert len(folders) == 1 and "-train-32px-" in folders[0]
    mtime = (cache_root / folders[0]).stat().st_mtime_ns

    assert train.main([*common, "--cache-dir", str(cache_root)]) == 0
    second = capsys.readouterr().out
    assert "(reused)" in second and "(built in" not in second
    assert caches_in(cache_root) == folders
    assert (cache_root / folders[0]).stat().st_mtime_ns == mtime

    unused = tmp_path / "unused"
    assert train.main([*common, "--cache-dir", str(unused), "--no-cache"]) == 0
    assert "scan of" not in capsys.readouterr().out and not unused.exists()


def test_train_datasets_from_cache_and_files_agree(synthetic_root: Path, tmp_path: Path) -> None:
    args = parse_args(["--data", str(synthetic_root), "--cache-dir", str(tmp_path),
                             "--official-val", *CACHED_TRAIN_ARGS])
    train_pairs, val_pairs = training_splits(synthetic_root, split_settings(args))
    single = Cluster(0, 1, torch.device("cpu"))
    cached = build_datasets(args, synthetic_root, train_pairs, val_pairs, single)
    args.cache = False
    raw = build_datasets(args, synthetic_root, train_pairs, val_pairs, single)
    for from_cache, from_files in zip(cached, raw):
        for key in [(0, 1), (len(from_files) - 1, 2)]:
            assert torch.equal(from_cache[key]["image"], from_files[key]["image"])
            assert torch.equal(from_cache[key]["mask"], from_files[key]["mask"])


def test_prepare_script_end_to_end(synthetic_root: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    argv = ["--data", str(synthetic_root), "--img-size", "24", "--cache-dir", str(tmp_path),
            "--workers", "1", "--no-progress"]
    prepare = load_script("prepare")
    assert prepare.main(argv) == 0
    out = capsys.readouterr().out
    assert "32 samples ready at 24x24" in out and report_count(out, "pairs found") == [24, 8]
    assert len(caches_in(tmp_path)) == 2
    assert prepare.main(argv) == 0
    assert capsys.readouterr().out.count("(reused)") == 2


def test_prepare_script_missing_data_is_one_line(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    prepare = load_script("prepare")
    assert prepare.main(["--data", str(missing), "--cache-dir", str(tmp_path / "c")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert str(missing) in captured.err and "does not exist" in captured.err
