#!/usr/bin/env python
"""Build a simulated "second clinic" from ISIC image folders, to measure fine-tuning on it.

Example (from the repository root):

    python scripts/make_clinic.py --output clinic --corrections 40 \
        --source data/ISIC2017:val FULLRES:train

(``data/ISIC2017``: from ``scripts/download_isic.py --year 2017``; ``FULLRES``: a folder of
full-resolution ISIC photos in ``images/`` + ``masks/``.)

Every image/mask pair of the sources gets the same fixed "other dermatoscope" look: a colour
cast (RGB multiplied by --cast), a gamma (--gamma below 1 brightens the exposure) and a contrast
change about mid-grey (--contrast); sizes are kept and masks are only rewritten as 0/255. A seeded
pick of --corrections images goes to OUTPUT/corrections/ (the clinic's corrected masks, for
fine-tuning), the rest to OUTPUT/test/, each as images/ID.jpg + masks/ID_segmentation.png, the
layout train.py and scripts/evaluate.py read.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import UserError, run_script  # noqa: E402
from data.layouts import SPLITS, Pair, find_pairs  # noqa: E402

DEFAULT_CAST = (1.08, 0.97, 0.85)
JPEG_QUALITY = 95


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description="Build a simulated second clinic (corrections/ + test/) from ISIC folders.")
    parser.add_argument("--source", nargs="+", required=True, metavar="DIR[:SPLIT]",
                        help="data folders in any known layout, each with the split to read "
                        "(train, val or test; default: train)")
    parser.add_argument("--output", type=Path, required=True,
                        help="folder to write corrections/ and test/ into")
    parser.add_argument("--corrections", type=int, default=40,
                        help="images for OUTPUT/corrections (default: 40); the rest go to test")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the pick of corrections (default: 0)")
    parser.add_argument("--cast", type=float, nargs=3, default=DEFAULT_CAST,
                        metavar=("R", "G", "B"),
                        help="per-channel gain of the colour cast (default: 1.08 0.97 0.85)")
    parser.add_argument("--gamma", type=float, default=0.8,
                        help="exponent on [0, 1] intensities; below 1 brightens (default: 0.8)")
    parser.add_argument("--contrast", type=float, default=0.9,
                        help="contrast factor about mid-grey (default: 0.9)")
    return parser


def parse_source(text: str) -> tuple[Path, str]:
    """``DIR:SPLIT`` (or ``DIR``, meaning the train split) -> (folder, split)."""
    folder, sep, split = text.rpartition(":")
    if sep and split in SPLITS:
        return Path(folder), split
    return Path(text), "train"


def read_sources(sources: Sequence[str]) -> list[Pair]:
    """Every pair of the sources, sorted by id; an id found twice is an error."""
    pairs: dict[str, Pair] = {}
    for text in sources:
        for pair in find_pairs(*parse_source(text)):
            if pair.id in pairs:
                raise UserError(f"id {pair.id} is in more than one source")
            pairs[pair.id] = pair
    return [pairs[key] for key in sorted(pairs)]


def restyle(image: Image.Image, cast: Sequence[float], gamma: float,
            contrast: float) -> Image.Image:
    """The clinic's dermatoscope look: colour cast, then gamma, then contrast about 0.5."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    pixels = np.clip(pixels * np.asarray(cast, dtype=np.float32), 0.0, 1.0) ** gamma
    pixels = np.clip(0.5 + contrast * (pixels - 0.5), 0.0, 1.0)
    return Image.fromarray(np.round(pixels * 255.0).astype(np.uint8))


def binary_mask(path: Path) -> Image.Image:
    """The mask as 0/255 (lesion where the stored value is above 127)."""
    mask = np.asarray(Image.open(path).convert("L"))
    return Image.fromarray(np.where(mask > 127, 255, 0).astype(np.uint8))


def make_folders(root: Path) -> None:
    """``root/images`` and ``root/masks``; refuses to mix with files already there."""
    for name in ("images", "masks"):
        folder = root / name
        if folder.is_dir() and any(folder.iterdir()):
            raise UserError(f"{folder} is not empty; choose another --output")
        folder.mkdir(parents=True, exist_ok=True)


def write_pair(pair: Pair, root: Path, args: argparse.Namespace) -> None:
    """Write one restyled image and its mask under ``root``."""
    if pair.mask is None:
        raise UserError(f"{pair.image} has no mask")
    with Image.open(pair.image) as image:
        styled = restyle(image, args.cast, args.gamma, args.contrast)
    styled.save(root / "images" / f"{pair.id}.jpg", quality=JPEG_QUALITY)
    binary_mask(pair.mask).save(root / "masks" / f"{pair.id}_segmentation.png")


def split_pairs(pairs: list[Pair], count: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded pick of ``count`` pairs, and the others (both sorted by id)."""
    if not 0 <= count <= len(pairs):
        raise UserError(f"--corrections {count}: the sources hold {len(pairs)} pairs")
    picked = set(random.Random(seed).sample(range(len(pairs)), count))
    chosen = [pair for index, pair in enumerate(pairs) if index in picked]
    rest = [pair for index, pair in enumerate(pairs) if index not in picked]
    return chosen, rest


def make_clinic(args: argparse.Namespace) -> int:
    pairs = read_sources(args.source)
    corrections, test = split_pairs(pairs, args.corrections, args.seed)
    groups = {"corrections": corrections, "test": test}
    for name in groups:
        make_folders(args.output / name)
    for name, chosen in groups.items():
        for pair in chosen:
            write_pair(pair, args.output / name, args)
    print(f"{len(pairs)} images: {len(corrections)} to {args.output / 'corrections'}, "
          f"{len(test)} to {args.output / 'test'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Build the clinic; returns the exit status (0 on success, 1 on error)."""
    args = build_parser().parse_args(argv)
    return run_script(lambda: make_clinic(args))


if __name__ == "__main__":
    sys.exit(main())
