"""Finding image/mask pairs in the folder layouts of the ISIC challenge zips, or images/ + masks/.

Pairs are matched by id: ``ISIC_0000000.jpg`` with ``ISIC_0000000_segmentation.png`` (or
``_Segmentation``, or the same stem). Files that belong to no pair in the official zips
(``*_superpixels.png``, ``LICENSE.txt``, ``ATTRIBUTION.txt``, hidden files) are ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# (layout name, split) -> (image folder, mask folder), as the official zips unpack.
LAYOUTS: dict[tuple[str, str], tuple[str, str]] = {
    ("ISIC 2018", "train"): (
        "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
    ("ISIC 2018", "val"): (
        "ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
    ("ISIC 2018", "test"): ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    ("ISIC 2017", "train"): ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
    ("ISIC 2017", "val"): ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
    ("ISIC 2017", "test"): ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    ("ISIC 2016", "train"): (
        "ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"),
    ("ISIC 2016", "test"): (
        "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
    ("images/ + masks/", "train"): ("images", "masks"),
}

MASK_SUFFIXES = ("_segmentation", "_Segmentation")
IGNORED_SUFFIXES = ("_superpixels",)
HOW_TO_GET_DATA = (
    "download ISIC 2018 Task 1 with `python scripts/download_isic.py --year 2018`, "
    "or try the offline demo with `python train.py --data synthetic`"
)


class DatasetError(UserError, ValueError):
    """The data folder is missing, empty, or its images and masks do not pair up."""


@dataclass(frozen=True)
class Pair:
    """One sample: its id (``ISIC_0000000``), image path and mask path (``None`` if unknown)."""

    id: str
    image: Path
    mask: Path | None


def expected_layouts() -> str:
    """A human-readable list of the folder layouts the reader understands."""
    lines = [f"  {name} ({split}): {images}/ + {masks}/"
             for (name, split), (images, masks) in LAYOUTS.items()]
    return "\n".join(lines)


def find_split_folders(root: str | Path) -> dict[str, tuple[Path, Path]]:
    """The splits present under ``root``: ``{"train": (image_dir, mask_dir), ...}``.

    Raises:
        DatasetError: ``root`` does not exist or holds none of the known layouts.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist; {HOW_TO_GET_DATA}")
    found: dict[str, tuple[Path, Path]] = {}
    for (_, split), (images, masks) in LAYOUTS.items():
        if split not in found and (root / images).is_dir():
            found[split] = (root / images, root / masks)
    if not found:
        raise DatasetError(
            f"no image folder of a known layout in {root}; expected one of:\n"
            f"{expected_layouts()}\n{HOW_TO_GET_DATA}"
        )
    return found


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem, skipping hidden files and non-pair files."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if (path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS
                or path.stem.endswith(IGNORED_SUFFIXES) or not path.is_file()):
            continue
        if path.stem in files:
            raise DatasetError(f"duplicate id {path.stem!r}: {files[path.stem]} and {path}")
        files[path.stem] = path
    return files


def mask_id_of(stem: str) -> str:
    """The image id a mask file's stem belongs to: ``ISIC_0000000_segmentation`` ->
    ``ISIC_0000000``."""
    for suffix in MASK_SUFFIXES:
        if stem.endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _list_ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:5])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > 5 else ''})"


def find_pairs(root: str | Path, split: str = "train", skip_unpaired: bool = False) -> list[Pair]:
    """Image/mask pairs of one split under ``root``, sorted by id.

    Args:
        root: the folder holding the official ISIC folders (or ``images/`` and ``masks/``).
        split: ``train``, ``val`` or ``test``.
        skip_unpaired: drop images without a mask and masks without an image (and log the
            count) instead of raising.

    Raises:
        DatasetError: the split is missing, has no images, or has unpaired files.
    """
    folders = find_split_folders(root)
    if split not in folders:
        raise DatasetError(
            f"{root} has no {split!r} split (found: {', '.join(folders)}); expected one of:\n"
            f"{expected_layouts()}"
        )
    image_dir, mask_dir = folders[split]
    images = _image_files(image_dir)
    if not images:
        raise DatasetError(f"no images (.jpg, .png, ...) in {image_dir}; {HOW_TO_GET_DATA}")
    if not mask_dir.is_dir():
        raise DatasetError(f"mask folder {mask_dir} for {image_dir} does not exist")
    masks: dict[str, Path] = {}
    for stem, path in _image_files(mask_dir).items():
        mask_id = mask_id_of(stem)
        if mask_id in masks:
            raise DatasetError(f"two masks for id {mask_id!r}: {masks[mask_id]} and {path}")
        masks[mask_id] = path
    _check_unpaired(images, masks, image_dir, mask_dir, skip_unpaired)
    return [Pair(i, images[i], masks[i]) for i in sorted(images) if i in masks]


def _check_unpaired(images: dict, masks: dict, image_dir: Path, mask_dir: Path,
                    skip_unpaired: bool) -> None:
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if not (no_mask or no_image):
        return
    problems = []
    if no_mask:
        problems.append(f"images without a mask in {mask_dir}: {_list_ids(no_mask)}")
    if no_image:
        problems.append(f"masks without an image in {image_dir}: {_list_ids(no_image)}")
    if not skip_unpaired:
        raise DatasetError("; ".join(problems) + "; pass --skip-unpaired to train on the rest")
    log.warning("skipping unpaired files: %s", "; ".join(problems))
    if len(no_mask) == len(images):
        raise DatasetError(f"no image in {image_dir} has a mask in {mask_dir}")


def find_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (no masks needed), sorted by name."""
    return list(_image_files(Path(folder)).values())


def check_same_size(pair: Pair, image: tuple[int, int], mask: tuple[int, int]) -> None:
    """Raises :class:`DatasetError` naming both files when the image and mask ``(height,
    width)`` of ``pair`` differ (the image's as a viewer shows it, EXIF orientation applied)."""
    if tuple(image) == tuple(mask):
        return
    turned = ("; the image has an EXIF orientation: draw masks on the image as viewers show "
              "it" if tuple(image) == tuple(mask)[::-1] else "")
    raise DatasetError(f"mask {pair.mask} is {mask[1]}x{mask[0]} but image {pair.image} is "
                       f"{image[1]}x{image[0]}; they must have the same size{turned}")
