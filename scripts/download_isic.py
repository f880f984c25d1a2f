#!/usr/bin/env python
"""Download and extract the official ISIC challenge zips (lesion segmentation).

Example (from the repository root):

    python scripts/download_isic.py --year 2018 --splits train val test --dest data/ISIC2018

Rerunning the same command resumes an interrupted download and skips folders already extracted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import run_script  # noqa: E402
from data.download import DEFAULT_BASE_URL, fetch_isic  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description="Download, check and extract the official ISIC challenge zips "
        "(images and segmentation masks). Rerun the same command to resume.",
    )
    parser.add_argument("--year", type=int, choices=(2016, 2017, 2018), default=2018,
                        help="challenge year (default: 2018)")
    parser.add_argument("--splits", nargs="+", choices=("train", "val", "test"), default=None,
                        help="splits to fetch (default: train val; 2016 has only train and test, "
                        "so its default is train)")
    parser.add_argument("--dest", type=Path, default=None,
                        help="destination folder (default: data/ISIC<year>, relative to the "
                        "current directory)")
    parser.add_argument("--base-url", default=None,
                        help="mirror folder holding the zips; '{year}' is replaced by the year "
                        f"(default: {DEFAULT_BASE_URL})")
    parser.add_argument("--keep-zips", action="store_true",
                        help="keep each zip after extracting it (default: delete it to save disk)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the size and MD5 checks against the reported values")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="network timeout in seconds (default: 60)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the downloader; returns the exit status (0 on success, 1 on error)."""
    args = build_parser().parse_args(argv)
    return run_script(lambda: download(args),
                      interrupted="interrupted: partial downloads are kept as *.part; rerun the "
                      "same command to resume")


def download(args: argparse.Namespace) -> int:
    dest = args.dest if args.dest is not None else Path("data") / f"ISIC{args.year}"
    fetch_isic(args.year, dest, args.splits, base_url=args.base_url, verify=not args.no_verify,
               keep_zips=args.keep_zips, progress=not args.no_progress, timeout=args.timeout)
    print(f"ISIC {args.year} data ready in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
