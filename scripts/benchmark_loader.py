#!/usr/bin/env python
"""Images per second of train.py's training loader, from the original files and from the
preparation cache, as a Markdown table.

Example (from the repository root):

    python scripts/benchmark_loader.py --data data/ISIC2018 --img-size 256 --workers 2 \\
        --batch-size 16 --seconds 20

The loader is train.py's own (same ISICDataset, training augmentations, sampler, batch size and
worker count); nothing trains, so the rate is what the loader can feed. A small data set is
repeated so that an epoch holds enough batches to keep every worker busy, as a full-size one
does. Building the cache, if needed, happens before timing and is not counted.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import run_script  # noqa: E402
from data.cache import DEFAULT_CACHE_ROOT  # noqa: E402
from data.splits import data_root, training_splits  # noqa: E402
from data.workers import end_workers  # noqa: E402
from training.distributed import Cluster  # noqa: E402
from training.loaders import build_datasets, build_loaders  # noqa: E402
from training.options import check_args, parse_args, split_settings  # noqa: E402

MIN_EPOCH_IMAGES = 256
LOADERS = (("original files", False), ("preparation cache", True))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description="Measure the training loader's images per "
                                     "second from the original files and from the cache.")
    parser.add_argument("--data", required=True,
                        help="folder in an ISIC layout (or images/ + masks/), or 'synthetic'")
    parser.add_argument("--img-size", type=int, default=256, help="square size (default: 256)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="timed seconds per loader, after the first batch (default: 20)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_ROOT),
                        help="where caches are kept (default: data/cache/ of the repository)")
    return parser


def endless_batches(loader: torch.utils.data.DataLoader) -> Iterator[dict]:
    """Batches of epoch after epoch, as training draws them."""
    epoch = 0
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def images_per_second(loader: torch.utils.data.DataLoader, seconds: float) -> float:
    """Images per second over about ``seconds``, after the first batch (worker start-up)."""
    batches = endless_batches(loader)
    next(batches)
    started, images = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        images += len(next(batches)["id"])
    return images / (time.perf_counter() - started)


def measure(options: argparse.Namespace) -> list[tuple[str, float]]:
    """``[(loader name, images per second)]`` for the original files and the cache."""
    args = parse_args(["--data", options.data, "--img-size", str(options.img_size),
                       "--workers", str(options.workers), "--batch-size",
                       str(options.batch_size), "--cache-dir", options.cache_dir])
    check_args(args)
    root = data_root(args.data)
    train_pairs, val_pairs = training_splits(root, split_settings(args))
    repeated = train_pairs * math.ceil(MIN_EPOCH_IMAGES / len(train_pairs))
    single = Cluster(0, 1, torch.device("cpu"))
    rates = []
    for name, cache in LOADERS:
        args.cache = cache
        datasets = build_datasets(args, root, repeated, val_pairs, single)
        loader, _ = build_loaders(args, *datasets, single)
        rates.append((name, images_per_second(loader, options.seconds)))
        end_workers(loader)  # before the next loader starts its own
    return rates


def markdown_table(rates: list[tuple[str, float]], options: argparse.Namespace) -> str:
    setting = f"{options.img_size}x{options.img_size}, {options.workers} workers, batch " \
              f"{options.batch_size}"
    lines = ["| loader | setting | images/s |", "| --- | --- | ---: |"]
    lines += [f"| {name} | {setting} | {rate:.1f} |" for name, rate in rates]
    lines.append(f"\nspeed-up of the cache: {rates[1][1] / rates[0][1]:.1f}x")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run both loaders and print the table; returns the exit status."""
    options = build_parser().parse_args(argv)
    return run_script(lambda: report(options))


def report(options: argparse.Namespace) -> int:
    print(markdown_table(measure(options), options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
