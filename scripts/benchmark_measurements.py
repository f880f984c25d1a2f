#!/usr/bin/env python
"""Time inference.measurements.measure() on one CPU thread, on a synthetic lesion of a given
image size.

Example (from the repository root):

    python scripts/benchmark_measurements.py --width 6000 --height 4000 --repeat 20

Builds an irregular lesion (a star-like outline with several harmonics) covering about 30 % of
the image, and an RGB image of skin with the lesion painted in light and dark brown and a
blue-gray patch, then times ``measure(mask, image)`` (all measurements, colours included) with
OpenCV and the BLAS on one thread. One warm-up call is not timed. Prints one Markdown table
row:

    | CPU | image | lesion | median ms | best ms | repeats |

(``--header`` prints the table's header first). The CPU is the ``model name`` of
/proc/cpuinfo. Other jobs on the machine lengthen the times; the best of the repeats is the
least disturbed.
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    # One thread for the BLAS as well, set before numpy loads it (OpenCV's is set while
    # timing); a program importing this module keeps its own settings.
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import FlagError, run_script  # noqa: E402
from inference.measurements import measure  # noqa: E402

HEADER = ("| CPU | image | lesion | median ms | best ms | repeats |\n"
          "|---|---|---|---|---|---|")
LESION_SHARE = 0.30
SKIN_RGB = (226, 184, 160)
LESION_RGB = {"light brown": (160, 108, 62), "dark brown": (92, 56, 36),
              "blue-gray": (96, 118, 132)}
MIN_SIDE = 16


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description="Time inference.measurements.measure() (all measurements, colours included) "
        "on one CPU thread on a synthetic lesion; prints one Markdown table row.")
    parser.add_argument("--width", type=int, default=6000, help="image width (default: 6000)")
    parser.add_argument("--height", type=int, default=4000,
                        help="image height (default: 4000)")
    parser.add_argument("--repeat", type=int, default=20,
                        help="timed calls after one warm-up call (default: 20)")
    parser.add_argument("--header", action="store_true",
                        help="print the table's header before the row")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (0 on success, 1 on a bad flag)."""
    args = build_parser().parse_args(argv)
    return run_script(lambda: benchmark(args))


def benchmark(args: argparse.Namespace) -> int:
    if min(args.width, args.height) < MIN_SIDE:
        raise FlagError(f"--width and --height must be at least {MIN_SIDE}")
    if args.repeat < 1:
        raise FlagError("--repeat must be at least 1")
    mask, image = synthetic_lesion(args.width, args.height)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        times = time_calls(mask, image, args.repeat)
    finally:
        cv2.setNumThreads(threads)
    if args.header:
        print(HEADER)
    print(f"| {cpu_model()} | {args.width}x{args.height} | {mask.mean():.0%} | "
          f"{statistics.median(times):.1f} | {min(times):.1f} | {args.repeat} |")
    return 0


def time_calls(mask: np.ndarray, image: np.ndarray, repeat: int) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``measure(mask, image)``, after one untimed call."""
    measure(mask, image)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        measure(mask, image)
        times.append((time.perf_counter() - started) * 1000)
    return times


def synthetic_lesion(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An irregular lesion mask, bool ``(height, width)``, covering about
    :data:`LESION_SHARE` of the image (less in a narrow image), and an RGB ``uint8`` image of
    skin with the lesion painted in :data:`LESION_RGB`."""
    rng = np.random.default_rng(seed)
    centre = np.array([width / 2, height / 2])
    radius = min(math.sqrt(LESION_SHARE * width * height / math.pi), 0.4 * min(width, height))
    outline = _outline(centre, radius, rng)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [outline], 1)
    image = np.empty((height, width, 3), np.uint8)
    image[:] = SKIN_RGB
    cv2.fillPoly(image, [outline], LESION_RGB["light brown"])
    cv2.fillPoly(image, [_outline(centre, 0.55 * radius, rng)], LESION_RGB["dark brown"])
    patch = centre + (0.45 * radius, -0.2 * radius)
    cv2.fillPoly(image, [_outline(patch, 0.25 * radius, rng)], LESION_RGB["blue-gray"])
    image[mask == 0] = SKIN_RGB
    return mask.view(bool), image


def _outline(centre: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Closed polygon ``(N, 2)`` int32 of a radius modulated by a few random harmonics."""
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    profile = np.ones_like(angles)
    for harmonic, amplitude in ((3, 0.08), (5, 0.06), (9, 0.03), (17, 0.015)):
        profile += amplitude * np.sin(harmonic * angles + rng.uniform(0, 2 * np.pi))
    points = centre + (radius * profile)[:, None] * np.column_stack([np.cos(angles),
                                                                     np.sin(angles)])
    return np.round(points).astype(np.int32)


def cpu_model() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo, else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
