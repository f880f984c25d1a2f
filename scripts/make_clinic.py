#!/usr/bin/env python
"""Build a simulated "second clinic" from ISIC image folders, to measure fine-tuning on it.

Example (from the repository root):

    python scripts/make_clinic.py --output clinic --corrections 40 \
        --source data/ISIC2017:val FULLRES:train

(``data/ISIC2017``: from ``scripts/download_isic.py --year 2017``; ``FULLRES``: a folder of
full-resolution ISIC photos in ``images/`` + ``masks/``.)

Every image/mask pair of the sources gets the same fixed "other clinic" look:

- another dermatoscope's magnification: the central 1/--zoom of the field of view (image and
  mask cropped alike), so that lesions fill more of the frame;
- its colour and exposure: a colour cast (RGB multiplied by --cast), a gamma (--gamma below 1
  brightens) and a contrast change about mid-grey (--contrast);
- its experts' way of outlining: each mask grown by --margin times the lesion's equivalent
  diameter (a negative margin shrinks it), as where a clinic's protocol draws the outline
  around the pigment's outer edge.

Masks are rewritten as 0/255. A seeded pick of --corrections images goes to
OUTPUT/corrections/ (the clinic's corrected masks, for fine-tuning), the rest to OUTPUT/test/,
each as images/ID.jpg + masks/ID_segmentation.png, the layout train.py and scripts/evaluate.py
read. On the 84 held-out ISIC 2017 images of the example, the defaults cost the bundled model
0.030 Dice (0.836 -> 0.806), the colour alone 0.004 (docs/training.md, "Fine-tuning").
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
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
    parser.add_argument("--zoom", type=float, default=1.4,
                        help="magnification: keep the central 1/ZOOM of each side (default: 1.4; "
                        "1 keeps the whole picture)")
    parser.add_argument("--margin", type=float, default=0.0,
                        help="grow each mask by this fraction of the lesion's equivalent "
                        "diameter; negative shrinks (default: 0, the ISIC experts' outline)")
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


def central_crop(pixels: np.ndarray, zoom: float) -> np.ndarray:
    """The central ``1 / zoom`` of each side of an ``(H, W, ...)`` array."""
    height, width = pixels.shape[:2]
    keep_h, keep_w = max(1, round(height / zoom)), max(1, round(width / zoom))
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    return pixels[top:top + keep_h, left:left + keep_w]


def outlined(mask: np.ndarray, margin: float) -> np.ndarray:
    """A bool mask grown (``margin > 0``) or shrunk by ``|margin|`` times the lesion's
    equivalent diameter (that of a disc of its area), at least one pixel; an empty mask or a
    zero margin is returned as it is."""
    if margin == 0 or not mask.any():
        return mask
    radius = max(1, round(abs(margin) * 2 * np.sqrt(mask.sum() / np.pi)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    change = cv2.dilate if margin > 0 else cv2.erode
    return change(mask.astype(np.uint8), disc).astype(bool)


def clinic_mask(path: Path, zoom: float, margin: float) -> Image.Image:
    """The mask as the clinic's experts would give it, 0/255 (lesion where the stored value is
    above 127): cropped as the image, then outlined with the clinic's margin."""
    mask = central_crop(np.asarray(Image.open(path).convert("L")) > 127, zoom)
    return Image.fromarray(np.where(outlined(mask, margin), 255, 0).astype(np.uint8))


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
        cropped = Image.fromarray(central_crop(np.asarray(image.convert("RGB")), args.zoom))
    styled = restyle(cropped, args.cast, args.gamma, args.contrast)
    styled.save(root / "images" / f"{pair.id}.jpg", quality=JPEG_QUALITY)
    clinic_mask(pair.mask, args.zoom, args.margin).save(
        root / "masks" / f"{pair.id}_segmentation.png")


def split_pairs(pairs: list[Pair], count: int, seed: int) -> tuple[list[Pair], list[Pair]]:
    """A seeded pick of ``count`` pairs, and the others (both sorted by id)."""
    if not 0 <= count <= len(pairs):
        raise UserError(f"--corrections {count}: the sources hold {len(pairs)} pairs")
    picked = set(random.Random(seed).sample(range(len(pairs)), count))
    chosen = [pair for index, pair in enumerate(pairs) if index in picked]
    rest = [pair for index, pair in enumerate(pairs) if index not in picked]
    return chosen, rest


def make_clinic(args: argparse.Namespace) -> int:
    if args.zoom < 1:
        raise UserError(f"--zoom {args.zoom}: must be 1 or more (a crop of the field of view)")
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
