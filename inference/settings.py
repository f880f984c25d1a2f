"""How a :class:`inference.predictor.Predictor` predicts: one frozen object whose fields are
the prediction flags of ``predict.py`` and ``scripts/evaluate.py`` (defined here once, with
their help) and the keyword arguments of ``Predictor``. Nothing here imports PyTorch, so that
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from common.errors import FlagError
from common.options import DEVICE_HELP, PRECISION_HELP, PRECISIONS, check_minimum

# Settings that choose how the model is loaded: a loaded Predictor cannot change them.
LOADING = ("device", "precision")


def option(help_text: str, flag: str | None = None, **argparse_options: Any) -> dict[str, Any]:
    """A field's metadata: its flag's help (``%(default)s`` allowed), its flag when it is not
    ``--`` plus the field name with dashes, and further ``add_argument`` options (``type``
    for a value flag; a boolean field is a switch)."""
    return {"help": help_text, "flag": flag, "argparse": argparse_options}


@dataclass(frozen=True)
class PredictionSettings:
    """Every option of a prediction. ``threshold`` and ``review_below`` left ``None`` take the
    model file's; the others have the defaults shown.

    Raises:
        FlagError: from :meth:`checked`, for a value that cannot work (the message names the
            flag).
    """

    threshold: float | None = field(default=None, metadata=option(
        "lesion probability threshold in (0, 1) (default: the checkpoint's)", type=float))
    tta: bool = field(default=False, metadata=option(
        "average the probabilities over horizontal and vertical flips"))
    keep_largest: bool = field(default=False, metadata=option(
        "keep only the largest connected lesion region"))
    fill_holes: bool = field(default=False, metadata=option("fill holes inside the lesion"))
    device: str = field(default="auto", metadata=option(DEVICE_HELP))
    precision: str = field(default="auto", metadata=option(PRECISION_HELP, choices=PRECISIONS))
    batch_size: int = field(default=8, metadata=option(
        "images per forward pass, after resizing to the model's size (default: %(default)s)",
        type=int))
    workers: int = field(default=min(4, os.cpu_count() or 1), metadata=option(
        "threads that decode the next images and finish (resize, write) the last ones while "
        "the model runs; each holds one full-size prediction (default: min(4, cores) = "
        "%(default)s)", type=int))
    full_decode: bool = field(default=False, metadata=option(
        "decode large JPEGs in full instead of at the decoder's 1/2, 1/4 or 1/8 scale "
        "(slower; masks differ only along the border)"))
    quality: bool = field(default=True, metadata=option(
        "do not estimate each mask's quality (which runs the model on the image's mirror "
        "image too)", flag="--no-quality"))
    review_below: float | None = field(default=None, metadata=option(
        "flag masks whose estimated quality (Dice) is below this for review (default: the "
        "model's, chosen on held-out images)", type=float))
    mm_per_pixel: float | None = field(default=None, metadata=option(
        "pixel size in millimetres for the measurements in mm (default: a believable "
        "resolution tag of the image file, else pixels only)", type=float))

    def checked(self) -> PredictionSettings:
        """These settings, or :class:`FlagError` naming the flag of a value that cannot work."""
        check_minimum({"batch_size": self.batch_size, "workers": self.workers})
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise FlagError(f"--threshold must be between 0 and 1 (exclusive), got "
                            f"{self.threshold}")
        if self.review_below is not None and not 0 <= self.review_below <= 1:
            raise FlagError(f"--review-below must be between 0 and 1, got {self.review_below}")
        if self.mm_per_pixel is not None and not self.mm_per_pixel > 0:
            raise FlagError(f"--mm-per-pixel must be positive, got {self.mm_per_pixel}")
        if self.precision not in PRECISIONS:
            raise FlagError(f"--precision must be one of {', '.join(PRECISIONS)}, got "
                            f"{self.precision}")
        return self

    def with_changes(self, **changes: Any) -> PredictionSettings:
        """These settings with ``changes`` (``None`` values keep the current ones), checked.

        Raises:
            FlagError: an unknown setting, or a value :meth:`checked` refuses.
        """
        unknown = set(changes) - {item.name for item in fields(self)}
        if unknown:
            raise FlagError(f"unknown prediction settings: {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(item.name for item in fields(self))}")
        return replace(self, **{name: value for name, value in changes.items()
                                if value is not None}).checked()

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PredictionSettings:
        """The settings of the flags :func:`add_prediction_options` defined."""
        return cls(**{item.name: getattr(args, item.name) for item in fields(cls)}).checked()

    def describe(self) -> str:
        """The request-level settings in words, for people."""
        threshold = "the model's" if self.threshold is None else f"{self.threshold:.2f}"
        switches = (("test-time augmentation", self.tta), ("keep largest region",
                    self.keep_largest), ("fill holes", self.fill_holes))
        return ", ".join([f"threshold {threshold}"]
                         + [f"{name} {'on' if value else 'off'}" for name, value in switches])


def add_prediction_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """One flag per field of :class:`PredictionSettings`, with its default and help."""
    for item in fields(PredictionSettings):
        meta = item.metadata
        flag = meta["flag"] or "--" + item.name.replace("_", "-")
        if isinstance(item.default, bool):
            action = "store_false" if item.default else "store_true"
            parser.add_argument(flag, dest=item.name, action=action, help=meta["help"])
        else:
            parser.add_argument(flag, dest=item.name, default=item.default, help=meta["help"],
                                **meta["argparse"])


def add_checkpoint_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--checkpoint``, the model file, as predict.py, app.py and the scripts take it."""
    parser.add_argument("--checkpoint", default=None,
                        help="best.pt of train.py, or an exported .safetensors or .onnx "
                        "(default: models/checkpoints/best.pt if you trained one on real "
                        "images, else the bundled ISIC model)")
