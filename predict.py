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
evaluation use; it lives in ``inference/predictor.py`` and is imported on first use, so that
``--help`` does not wait for PyTorch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import FlagError, run_script
from data.layouts import IMAGE_EXTENSIONS
from inference.inputs import collect_inputs
from inference.outputs import (
    OUTPUT_SUFFIXES,
    PREDICTIONS_CSV,
    failed_row,
    prediction_row,
    write_predictions_csv,
)
from inference.settings import PredictionSettings, add_checkpoint_option, add_prediction_options

if TYPE_CHECKING:
    from inference.predictor import Prediction

DEFAULT_OUTPUT = "results"
JPEG_QUALITY = 90
# The public API, re-exported from inference/predictor.py.
API = ("Predictor", "Prediction", "postprocess", "draw_contour", "draw_prediction",
       "describe_prediction")


def __getattr__(name: str) -> Any:
    if name in API:
        from inference import predictor

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
        from inference.predictor import draw_prediction

        # Decoded in full only here, and not kept.
        image = read_image_bgr(path)
        draw_prediction(image, prediction)
        write_image(out_dir / f"{path.stem}{OUTPUT_SUFFIXES[2]}", image,
                    (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))
    return prediction_row(path.name, prediction)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from inference.predictor import Predictor
    from models.bundled import describe_model

    paths = collect_inputs(args.input)
    check_output_folder(Path(args.output))
    predictor = Predictor(args.checkpoint, PredictionSettings.from_args(args))
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
