#!/usr/bin/env python
"""Decode and resize a data set once into the preparation cache that train.py reads.

Example (from the repository root):

    python scripts/prepare.py --data data/ISIC2018 --img-size 256

Prints a scan report (pairs, unpaired files, masks that were not 0/255, size mismatches,
unreadable files). train.py builds the same cache on first use; running this first only moves
the wait, and checks the data before a training job is queued. Rerunning reuses a cache whose
files are unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import run_script  # noqa: E402
from common.options import check_minimum  # noqa: E402
from data.cache import DEFAULT_CACHE_ROOT, prepare_splits  # noqa: E402
from data.layouts import find_split_folders  # noqa: E402

DEFAULT_SPLITS = ("train", "val")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description="Decode, check and resize the images and masks of a data folder once, "
        "into the cache that train.py reads.")
    parser.add_argument("--data", type=Path, required=True,
                        help="folder in an ISIC layout (or images/ + masks/)")
    parser.add_argument("--img-size", type=int, default=256,
                        help="square size in pixels, as train.py's --img-size (default: 256)")
    parser.add_argument("--splits", nargs="+", choices=("train", "val", "test"), default=None,
                        help="splits to prepare (default: train and val, where their masks are "
                        "present)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_ROOT,
                        help="where caches are kept (default: data/cache/ of the repository)")
    parser.add_argument("--skip-unpaired", action="store_true",
                        help="ignore images without masks and masks without images")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="decoding processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def default_splits(root: Path) -> list[str]:
    """The splits of :data:`DEFAULT_SPLITS` whose image and mask folders exist under ``root``
    (or ``train``, for find_pairs to say what is missing)."""
    folders = find_split_folders(root)
    present = [split for split in DEFAULT_SPLITS
               if split in folders and folders[split][1].is_dir()]
    return present or ["train"]


def main(argv: Sequence[str] | None = None) -> int:
    """Prepare the cache; returns the exit status (0 on success, 1 on error)."""
    args = build_parser().parse_args(argv)
    return run_script(lambda: prepare(args),
                      interrupted="interrupted: no partial cache was kept; rerun the same command")


def prepare(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_minimum({"img_size": args.img_size, "workers": args.workers})
    splits = args.splits or default_splits(args.data)
    caches = prepare_splits(args.data, splits, args.img_size, skip_unpaired=args.skip_unpaired,
                            cache_root=args.cache_dir, workers=args.workers,
                            progress=not args.no_progress)
    images = sum(len(cache) for cache in caches.values())
    print(f"{images} samples ready at {args.img_size}x{args.img_size} in "
          f"{time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
