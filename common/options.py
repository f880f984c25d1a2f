"""Command-line flags that several scripts share, defined once (and without importing PyTorch,
so that ``--help`` answers at once)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from common.errors import FlagError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps (default: %(default)s)"
PRECISION_HELP = ("auto: bf16 autocast on Ampere+ GPUs and CPUs with bf16 instructions, fp16 on "
                  "older GPUs, else fp32 (default: %(default)s)")


def add_hardware_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                         channels_last: bool = False) -> None:
    """``--device`` and ``--precision`` (and ``--no-channels-last`` when asked)."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    if channels_last:
        parser.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                            help="keep the NCHW memory format (channels_last is faster with "
                            "autocast)")


def check_minimum(values: Mapping[str, float], minimum: float = 1) -> None:
    """Refuse a flag below ``minimum``.

    Args:
        values: ``{flag name with underscores: value}``, e.g. ``{"batch_size": 8}``.

    Raises:
        FlagError: naming the first flag below the minimum (``--batch-size must be at least 1,
            got 0``).
    """
    for name, value in values.items():
        if value < minimum:
            raise FlagError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")
