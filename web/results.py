"""What the page holds for each photo of a request: its result, or its failure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class PhotoResult:
    """What the page shows and offers for one photo: the row of ``predictions.csv`` and the
    files written for it (the outline, mask and probability views, and the ISIC mask)."""

    row: dict[str, Any]
    outline: Path
    mask_view: Path
    probability_view: Path
    mask: Path


@dataclass
class Failure:
    """A photo that could not be segmented: its place among the uploads, its row of
    ``predictions.csv`` and the message the page shows."""

    index: int
    row: dict[str, Any]
    message: str
