"""A folder of corrected masks that trains as it is: ``images/`` with the photos as they came
(their bytes, so their EXIF orientation and quality are kept) and ``masks/`` with
``<stem>_segmentation.png`` at the photo's full size, one channel of 0 and 255, the ISIC names.

    python train.py --init bundled --data corrections/ --replay data/ISIC2017
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from common.errors import UserError
from data.imageio import write_mask
from data.layouts import IMAGE_EXTENSIONS, MASK_SUFFIXES

IMAGES = "images"
MASKS = "masks"


class CorrectionExistsError(UserError, FileExistsError):
    """A correction of this photo is saved already and replacing it was not asked for."""


def mask_path(folder: Path, stem: str) -> Path:
    """Where the corrected mask of the photo named ``stem`` goes."""
    return folder / MASKS / f"{stem}{MASK_SUFFIXES[0]}.png"


def saved_images(folder: Path, stem: str) -> list[Path]:
    """The saved photos named ``stem`` (any image extension) in ``folder``."""
    images = folder / IMAGES
    if not images.is_dir():
        return []
    return sorted(path for path in images.iterdir()
                  if path.stem == stem and path.suffix.lower() in IMAGE_EXTENSIONS)


def is_saved(folder: Path, stem: str) -> bool:
    """Whether a correction of the photo named ``stem`` is in ``folder``."""
    return mask_path(folder, stem).is_file() or bool(saved_images(folder, stem))


def save_correction(folder: Path, photo: Path, mask: np.ndarray, replace: bool = False) -> Path:
    """Save ``photo`` and its corrected ``mask`` into ``folder`` (created).

    Args:
        folder: the corrections folder (``images/`` + ``masks/``).
        photo: the photo file; copied byte for byte, under its own name.
        mask: bool ``(H, W)`` at the photo's size as viewers show it.
        replace: overwrite a correction of a photo of the same name (stem).

    Returns:
        The mask file written.

    Raises:
        CorrectionExistsError: a correction of a photo of that name is saved and ``replace``
            is false; nothing is written.
    """
    stem = photo.stem
    if not replace and is_saved(folder, stem):
        raise CorrectionExistsError(
            f"a correction of {stem} is saved in {folder} already; tick \"Replace a saved "
            "correction\" to overwrite it")
    for old in saved_images(folder, stem):
        old.unlink()  # a photo of the same name in another format would pair twice
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    (folder / MASKS).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(photo, folder / IMAGES / photo.name)
    target = mask_path(folder, stem)
    write_mask(target, mask)
    return target


def count_corrections(folder: Path) -> int:
    """How many photos of ``folder`` have a corrected mask."""
    masks = folder / MASKS
    if not masks.is_dir():
        return 0
    suffix = f"{MASK_SUFFIXES[0]}.png"
    return sum(bool(saved_images(folder, path.name[:-len(suffix)]))
               for path in masks.glob(f"*{suffix}"))
