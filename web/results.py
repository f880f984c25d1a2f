"""What the page holds for each request: the settings of the page's controls, and the result
or failure of each photo."""

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
class Settings:
    """One request's prediction settings, as the page's controls set them."""

    threshold: float
    tta: bool = False
    keep_largest: bool = False
    fill_holes: bool = False

    def describe(self) -> str:
        """The settings in words, for the summary under the results."""
        switches = (("test-time augmentation", self.tta), ("keep largest region",
                    self.keep_largest), ("fill holes", self.fill_holes))
        return ", ".join([f"threshold {self.threshold:.2f}"]
                         + [f"{name} {'on' if value else 'off'}" for name, value in switches])


@dataclass
class Failure:
    """A photo that could not be segmented: its place among the uploads, its row of
    ``predictions.csv`` and the message the page shows."""

    index: int
    row: dict[str, Any]
    message: str
