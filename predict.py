"""Predict lesion masks for new images, in the ISIC submission format.

    python predict.py --input img.jpg                     # -> results/img_segmentation.png
    python predict.py --input photos/ 'more/*.png' --overlay --tta --output masks/

Each mask is a one-channel 8-bit PNG of values 0 and 255 with the input image's height and
width, in the orientation image viewers show it in (a JPEG's EXIF orientation applied): the
model's logits are resized to the original size and thresholded there. The model, image size,
normalisation and threshold come from the model file: ``--checkpoint`` (a ``best.pt`` of
train.py, or an exported ``.safetensors`` or ``.onnx``), else ``models/checkpoints/best.pt``
when you have trained one, else the ISIC model bundled in ``models/pretrained/``.

From Python, ``from predict import Predictor`` (the API the notebook, torch.hub and the
evaluation use; it lives in ``models/predictor.py`` and is imported on first use, so that
``--help`` does not wait for PyTorch).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import FlagError, MissingFileError, run_script
from common.options import add_hardware_options
from data.layouts import IMAGE_EXTENSIONS, find_images
from inference.outputs import (
    OUTPUT_SUFFIXES,
    PREDICTIONS_CSV,
    failed_row,
    prediction_row,
    write_predictions_csv,
)

if TYPE_CHECKING:
    from models.predictor import Prediction, Predictor

DEFAULT_OUTPUT = "results"
JPEG_QUALITY = 90
# The public API, re-exported from models/predictor.py.
API = ("Predictor", "Prediction", "postprocess", "draw_contour", "draw_prediction",
       "describe_prediction")


def __getattr__(name: str) -> Any:
    if name in API:
        from models import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="image files, folders and glob patterns (" + ", ".join(IMAGE_EXTENSIONS)
                   + "); in folders, other files and hidden files are skipped")
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help="folder for <stem>_segmentation.png and the optional outputs "
                   "(default: %(default)s)")
    add_checkpoint_option(p)
    p.add_argument("--overlay", action="store_true",
                   help="also write <stem>_overlay.jpg, the image with the lesion outlined")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <stem>_probability.png, the probabilities scaled to 0-255")
    add_prediction_options(p)
    return p


def add_checkpoint_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--checkpoint``, the model file, as predict.py and app.py take it."""
    parser.add_argument("--checkpoint", default=None,
                        help="best.pt of train.py, or an exported .safetensors or .onnx "
                        "(default: models/checkpoints/best.pt if you trained one on real "
                        "images, else the bundled ISIC model)")


def add_prediction_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The :class:`Predictor` options, shared by predict.py and scripts/evaluate.py."""
    parser.add_argument("--threshold", type=float, default=None,
                        help="lesion probability threshold in (0, 1) (default: the checkpoint's)")
    parser.add_argument("--tta", action="store_true",
                        help="average the probabilities over horizontal and vertical flips")
    parser.add_argument("--keep-largest", action="store_true",
                        help="keep only the largest connected lesion region")
    parser.add_argument("--fill-holes", action="store_true",
                        help="fill holes inside the lesion")
    add_hardware_options(parser)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images per forward pass, after resizing to the model's size "
                        "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="threads that decode the next images and finish (resize, write) "
                        "the last ones while the model runs; each holds one full-size "
                        "prediction (default: min(4, cores) = %(default)s)")
    parser.add_argument("--full-decode", action="store_true",
                        help="decode large JPEGs in full instead of at the decoder's 1/2, 1/4 "
                        "or 1/8 scale (slower; masks differ only along the border)")
    parser.add_argument("--no-quality", dest="quality", action="store_false",
                        help="do not estimate each mask's quality (which runs the model on the "
                        "image's four flips, as --tta does)")
    parser.add_argument("--review-below", type=float, default=None,
                        help="flag masks whose estimated quality (Dice) is below this for "
                        "review (default: the model's, chosen on held-out images)")
    parser.add_argument("--mm-per-pixel", type=float, default=None,
                        help="pixel size in millimetres for the measurements in mm (default: "
                        "a believable resolution tag of the image file, else pixels only)")


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    """The :class:`Predictor` of the options :func:`add_prediction_options` defines."""
    from models.predictor import Predictor

    return Predictor(args.checkpoint, device=args.device, threshold=args.threshold,
                     tta=args.tta, keep_largest=args.keep_largest, fill_holes=args.fill_holes,
                     batch_size=args.batch_size, precision=args.precision,
                     workers=args.workers, full_decode=args.full_decode, quality=args.quality,
                     review_below=args.review_below, mm_per_pixel=args.mm_per_pixel)


def collect_inputs(patterns: Sequence[str], flag: str = "--input") -> list[Path]:
    """Image files named by files, folders and glob patterns, in order, without duplicates
    (``flag``: the option that named them, for the errors).

    Raises:
        MissingFileError: a pattern matches nothing, or a folder holds no image.
        FlagError: two inputs share a stem, so their masks would overwrite each other.
    """
    paths: dict[Path, None] = {}  # an ordered set
    for pattern in patterns:
        matches = _expand(pattern)
        if not matches:
            raise MissingFileError(f"{flag} {pattern} matches no image file "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
        paths.update(dict.fromkeys(path.resolve() for path in matches))
    _check_unique_stems(list(paths))
    return list(paths)


def is_output(path: Path) -> bool:
    """Whether ``path`` is named like a file this script writes (or an ISIC mask)."""
    return path.name.endswith(OUTPUT_SUFFIXES)


def _expand(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        # Masks and outputs of a previous run in the folder (--output may be the input folder)
        # are no images to predict.
        return [image for image in find_images(path) if not is_output(image)]
    if path.exists():
        return [path]  # named explicitly: taken whatever its extension
    # A pattern keeps only image files, as a folder does; folders it matches are listed.
    return [image for match in sorted(glob.glob(pattern, recursive=True))
            for image in _expand(match)
            if image.suffix.lower() in IMAGE_EXTENSIONS and not is_output(image)]


def _check_unique_stems(paths: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise FlagError(f"{seen[path.stem]} and {path} would both write "
                             f"{path.stem}_segmentation.png; predict them into different "
                             "--output folders")
        seen[path.stem] = path


def check_output_folder(folder: Path) -> None:
    """Raises :class:`FlagError` when ``--output`` names something that is not a folder."""
    if folder.exists() and not folder.is_dir():
        raise FlagError(f"--output {folder} is a file, not a folder; name a folder for the "
                        "masks (it is created if missing)")


def write_outputs(path: Path, prediction: Prediction, args: argparse.Namespace
                  ) -> dict[str, Any]:
    """``<stem>_segmentation.png`` (0/255, the image's size) and the optional outputs; returns
    the image's row of ``predictions.csv``."""
    import cv2

    from data.imageio import write_image, write_mask

    out_dir = Path(args.output)
    # Encoded arrays are passed as temporaries, freed before the next is made.
    write_mask(out_dir / f"{path.stem}{OUTPUT_SUFFIXES[0]}", prediction.mask)
    if args.save_probabilities:
        write_image(out_dir / f"{path.stem}{OUTPUT_SUFFIXES[1]}",
                    cv2.convertScaleAbs(prediction.probabilities, alpha=255))
    if args.overlay:
        from data.imageio import read_image_bgr
        from models.predictor import draw_prediction

        # Decoded in full only here, and not kept.
        image = read_image_bgr(path)
        draw_prediction(image, prediction)
        write_image(out_dir / f"{path.stem}{OUTPUT_SUFFIXES[2]}", image,
                    (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
    return prediction_row(path.name, prediction)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.bundled import describe_model

    paths = collect_inputs(args.input)
    check_output_folder(Path(args.output))
    predictor = predictor_from_args(args)
    print(describe_model(predictor.checkpoint_path, predictor.info), flush=True)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: dict[Path, dict[str, Any]] = {}
    with tqdm(total=len(paths), unit="image", disable=None, file=sys.stderr) as progress:
        for path, outcome in predictor.predict_files(
                paths, lambda path, prediction: write_outputs(path, prediction, args)):
            if isinstance(outcome, BaseException):
                tqdm.write(f"failed: {outcome}", file=sys.stderr)
                outcome = failed_row(path.name, outcome)
            rows[path] = outcome
            progress.update()
    seconds = time.perf_counter() - started
    write_predictions_csv([rows[path] for path in paths], Path(args.output) / PREDICTIONS_CSV)
    failed = sum(row["reason"].startswith("unreadable") for row in rows.values())
    done = len(paths) - failed
    flagged = sum(row["review"] == "yes" for row in rows.values())
    print(f"done: {done} of {len(paths)} images, {failed} failed, {seconds:.1f} s, "
          f"{done / max(seconds, 1e-9):.2f} images/s; masks in {args.output}")
    print(f"{flagged} of {len(paths)} masks flagged for review "
          f"({Path(args.output) / PREDICTIONS_CSV})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_script(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
