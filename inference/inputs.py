"""The image files a prediction is asked for: files, folders and glob patterns, in order,
without duplicates, leaving out the masks and outputs a previous run wrote beside them."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from common.errors import FlagError, MissingFileError
from data.layouts import IMAGE_EXTENSIONS, find_images
from inference.outputs import OUTPUT_SUFFIXES


def collect_inputs(patterns: Sequence[str], flag: str = "--input") -> list[Path]:
    """Image files named by files, folders and glob patterns, in order, without duplicates
    (``flag``: the option that named them, for the errors).

    Raises:
        MissingFileError: a pattern matches nothing, or a folder holds no image.
        FlagError: two inputs share a stem, so their masks would overwrite each other.
    """
    paths: dict[Path, None] = {}  # an ordered set
    for pattern in patterns:
        matches = _expand(pattern)
        if not matches:
            raise MissingFileError(f"{flag} {pattern} matches no image file "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
        paths.update(dict.fromkeys(path.resolve() for path in matches))
    _check_unique_stems(list(paths))
    return list(paths)


def is_output(path: Path) -> bool:
    """Whether ``path`` is named like a file this script writes (or an ISIC mask)."""
    return path.name.endswith(OUTPUT_SUFFIXES)


def _expand(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        # Masks and outputs of a previous run in the folder (--output may be the input folder)
        # are no images to predict.
        return [image for image in find_images(path) if not is_output(image)]
    if path.exists():
        return [path]  # named explicitly: taken whatever its extension
    # A pattern keeps only image files, as a folder does; folders it matches are listed.
    return [image for match in sorted(glob.glob(pattern, recursive=True))
            for image in _expand(match)
            if image.suffix.lower() in IMAGE_EXTENSIONS and not is_output(image)]


def _check_unique_stems(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise FlagError(f"{seen[path.stem]} and {path} would both write "
                             f"{path.stem}_segmentation.png; predict them into different "
                             "--output folders")
        seen[path.stem] = path
