"""Predict lesion masks for new images, in the ISIC submission format.

    python predict.py --input img.jpg                     # -> results/img_segmentation.png
    python predict.py --input photos/ 'more/*.png' --overlay --tta --output masks/

Each mask is a one-channel 8-bit PNG of values 0 and 255 with the input image's height and
width, in the orientation image viewers show it in (a JPEG's EXIF orientation applied): the
model's logits are resized to the original size and thresholded there. The model, image size,
normalisation and threshold come from the model file: ``--checkpoint`` (a ``best.pt`` of
train.py, or an exported ``.safetensors``), else ``models/checkpoints/best.pt`` when you have
trained one, else the ISIC model bundled in ``models/pretrained/``. The :class:`Predictor` API
is what the notebook, torch.hub and the evaluation script use.
"""

from __future__ import annotations

import argparse
import glob
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from common.device import Hardware, add_hardware_options
from common.errors import FlagError, MissingFileError, run_script
from data.dataset import eval_transforms
from data.imageio import IMAGE_EXTENSIONS, CorruptFileError, read_image, read_image_bgr
from data.layouts import find_images
from models.bundled import default_model, describe_model
from models.checkpoint import load_model_file

DEFAULT_OUTPUT = "results"
# Probabilities are clamped this far from 0 and 1 before the logit, which would be infinite.
TTA_EPS = 1e-6
FLIPS = ((), (-1,), (-2,), (-2, -1))
OVERLAY_BGR = (0, 255, 0)
JPEG_QUALITY = 90
# Errors that make one input image fail without stopping the others.
IMAGE_ERRORS = (CorruptFileError, OSError, cv2.error)


@dataclass
class Prediction:
    """The prediction for one image, at the image's original size.

    Attributes:
        probabilities: float32 ``(H, W)`` lesion probabilities in ``[0, 1]``.
        mask: bool ``(H, W)``, the thresholded (and post-processed) lesion mask.
    """

    probabilities: np.ndarray
    mask: np.ndarray


def postprocess(mask: np.ndarray, keep_largest: bool = False,
                fill_holes: bool = False) -> np.ndarray:
    """Clean a binary mask: a lesion is one solid region.

    Args:
        mask: bool ``(H, W)``.
        keep_largest: keep only the largest 8-connected component.
        fill_holes: set background regions that do not touch the image border to lesion.

    Returns:
        bool ``(H, W)``; ``mask`` itself when nothing is asked.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    if keep_largest:
        mask = _largest_component(mask)
    if fill_holes:
        mask = _fill_holes(mask)
    return mask


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
    if count <= 2:  # background plus at most one component
        return mask
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # A one-pixel background frame joins every region that touches the border, so a single
    # flood fill from a corner marks all of them (4-connected, dual to 8-connected lesions).
    canvas = np.pad(mask.view(np.uint8), 1)
    cv2.floodFill(canvas, None, (0, 0), 2)
    return canvas[1:-1, 1:-1] != 2


def draw_contour(image: np.ndarray, mask: np.ndarray,
                 colour: tuple[int, int, int] = OVERLAY_BGR) -> np.ndarray:
    """Draw the outline of ``mask`` on ``image`` in place, with a width that scales with the
    image (about 1 pixel per 500), and return ``image``.

    Args:
        image: uint8 ``(H, W, 3)``, in the channel order of ``colour``.
        mask: bool ``(H, W)``.
        colour: three values in ``[0, 255]``.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(mask.shape) / 500))
    cv2.drawContours(image, contours, -1, colour, thickness, cv2.LINE_AA)
    return image


class Predictor:
    """A model loaded once, ready to predict images of any size.

    Images go through exactly the validation transform of training (square resize with
    ``INTER_AREA``, the model's normalisation); the logits are resized back to the image's
    size with ``INTER_LINEAR`` and thresholded there.

    Args:
        checkpoint: a ``best.pt`` or ``last.pt`` written by ``train.py``, or a
            ``.safetensors`` export; ``None``: :func:`models.bundled.default_model` (your
            ``models/checkpoints/best.pt``, else the bundled ISIC model).
        device: ``auto`` (CUDA, MPS, CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        threshold: probability above which a pixel is lesion, in ``(0, 1)``; default the
            checkpoint's.
        tta: average the probabilities over horizontal and vertical flips (4 passes).
        keep_largest: see :func:`postprocess`.
        fill_holes: see :func:`postprocess`.
        batch_size: images per forward pass in :meth:`predict_batch`.
        precision: ``auto`` (bf16 autocast where the hardware has it), ``fp32``, ``bf16``,
            ``fp16``; as in ``train.py``.

    Attributes:
        checkpoint_path: the model file in use.
        info: how the model was trained (``epoch``, ``metrics``, ``args``; what the file
            recorded).

    Raises:
        CheckpointError: the model file is missing, unsafe or not of this project.
        FlagError: a bad threshold, batch size, device or precision.
    """

    def __init__(self, checkpoint: str | Path | None = None, device: str = "auto",
                 threshold: float | None = None, tta: bool = False, keep_largest: bool = False,
                 fill_holes: bool = False, batch_size: int = 8, precision: str = "auto") -> None:
        if batch_size < 1:
            raise FlagError(f"--batch-size must be at least 1, got {batch_size}")
        self.hardware = Hardware.choose(device, precision)
        self.device = self.hardware.device
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else default_model()
        bundle = load_model_file(self.checkpoint_path)
        self.model = self.hardware.module(bundle.build())
        self.info: dict[str, Any] = bundle.info
        self.img_size = bundle.img_size
        self.mean, self.std = bundle.mean, bundle.std
        self.threshold = bundle.threshold if threshold is None else float(threshold)
        if not 0 < self.threshold < 1:
            raise FlagError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
        self.tta = tta
        self.keep_largest = keep_largest
        self.fill_holes = fill_holes
        self.batch_size = batch_size
        self.transform = eval_transforms(self.img_size, self.mean, self.std)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, S, S)`` normalised, ``S = img_size``."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} "
                             f"{image.shape}; read files with data.imageio.read_image")
        resized = self.transform(image=image)["image"]
        return torch.from_numpy(resized.transpose(2, 0, 1).copy())

    @torch.no_grad()
    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` -> float32 logits ``(N, 1, S, S)`` on the model's device.

        With ``tta``: the logit of the mean probability over the flips, clamped to
        ``logit(1e-6) .. logit(1 - 1e-6)``.
        """
        batch = self.hardware.images(batch)
        if not self.tta:
            return self._forward(batch)
        probabilities = sum(_flip(torch.sigmoid(self._forward(_flip(batch, dims))), dims)
                            for dims in FLIPS) / len(FLIPS)
        return torch.logit(probabilities, eps=TTA_EPS)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        with self.hardware.autocast():
            return self.model(batch).float()

    def predict(self, image: np.ndarray) -> Prediction:
        """RGB uint8 ``(H, W, 3)`` -> its :class:`Prediction` at ``(H, W)``."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """RGB uint8 ``(H_i, W_i, 3)`` images of any sizes -> one :class:`Prediction` each,
        at each image's size; the model runs on ``batch_size`` images at a time."""
        predictions: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = torch.stack([self.preprocess(image) for image in chunk])
            logits = self.predict_logits(batch).cpu()
            predictions.extend(self.restore(image_logits, image.shape[:2])
                               for image_logits, image in zip(logits, chunk))
        return predictions

    def restore(self, logits: torch.Tensor, size: tuple[int, int]) -> Prediction:
        """Model-size logits ``(1, S, S)`` or ``(S, S)`` -> :class:`Prediction` at ``size``
        ``(height, width)``: resized as logits, then thresholded and post-processed."""
        height, width = size
        small = logits.reshape(logits.shape[-2:]).float().cpu().numpy()
        full = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        mask = postprocess(full > _logit(self.threshold), self.keep_largest, self.fill_holes)
        probabilities = torch.from_numpy(full).sigmoid_().numpy()  # in place: one array less
        return Prediction(probabilities=probabilities, mask=mask)


def _flip(batch: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return batch.flip(dims) if dims else batch


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="image files, folders and glob patterns (" + ", ".join(IMAGE_EXTENSIONS)
                   + "); in folders, other files and hidden files are skipped")
    p.add_argument("--output", default=DEFAULT_OUTPUT,
                   help="folder for <stem>_segmentation.png and the optional outputs "
                   "(default: %(default)s)")
    p.add_argument("--checkpoint", default=None,
                   help="best.pt of train.py or an exported .safetensors (default: "
                   "models/checkpoints/best.pt if you trained one, else the bundled ISIC model)")
    p.add_argument("--overlay", action="store_true",
                   help="also write <stem>_overlay.jpg, the image with the lesion outlined")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write <stem>_probability.png, the probabilities scaled to 0-255")
    add_prediction_options(p)
    return p


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


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    """The :class:`Predictor` of the options :func:`add_prediction_options` defines."""
    return Predictor(args.checkpoint, device=args.device, threshold=args.threshold,
                     tta=args.tta, keep_largest=args.keep_largest, fill_holes=args.fill_holes,
                     batch_size=args.batch_size, precision=args.precision)


def collect_inputs(patterns: Sequence[str]) -> list[Path]:
    """Image files named by files, folders and glob patterns, in order, without duplicates.

    Raises:
        MissingFileError: a pattern matches nothing, or a folder holds no image.
        FlagError: two inputs share a stem, so their masks would overwrite each other.
    """
    paths: dict[Path, None] = {}  # an ordered set
    for pattern in patterns:
        matches = _expand(pattern)
        if not matches:
            raise MissingFileError(f"--input {pattern} matches no image file "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")
        paths.update(dict.fromkeys(path.resolve() for path in matches))
    _check_unique_stems(list(paths))
    return list(paths)


OUTPUT_SUFFIXES = ("_segmentation.png", "_probability.png", "_overlay.jpg")


def is_output(path: Path) -> bool:
    """Whether ``path`` is named like a file this script writes (or an ISIC mask)."""
    return path.name.endswith(OUTPUT_SUFFIXES)


def _expand(pattern: str) -> list[Path]:
    path = Path(pattern)
    if path.is_dir():
        # Masks and earlier outputs in the folder (--output may be the input folder) are no
        # images to predict.
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


def _batches(paths: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def read_for_model(predictor: Predictor, path: Path) -> tuple[torch.Tensor, tuple[int, int]]:
    """The image at ``path`` as :meth:`Predictor.preprocess` makes it, and its original
    ``(height, width)``; the full-size image is released on return."""
    image = read_image(path)
    return predictor.preprocess(image), image.shape[:2]


def predict_files(predictor: Predictor, paths: Sequence[Path], args: argparse.Namespace,
                  progress: tqdm) -> int:
    """Write the outputs for every readable image; returns the number that failed.

    Images are read and resized one by one, run through the model ``batch_size`` at a time,
    and their full-size results made and written one at a time.
    """
    failed = 0
    for chunk in _batches(paths, predictor.batch_size):
        read, tensors, sizes = [], [], []
        for path in chunk:
            try:
                tensor, size = read_for_model(predictor, path)
            except IMAGE_ERRORS as exc:
                failed += 1
                progress.update()
                tqdm.write(f"failed: {exc}", file=sys.stderr)
                continue
            read.append(path)
            tensors.append(tensor)
            sizes.append(size)
        if not read:
            continue
        logits = predictor.predict_logits(torch.stack(tensors)).cpu()
        for path, image_logits, size in zip(read, logits, sizes):
            write_outputs(path, predictor.restore(image_logits, size), Path(args.output), args)
            progress.update()
    return failed


def write_outputs(path: Path, prediction: Prediction, out_dir: Path,
                  args: argparse.Namespace) -> None:
    """``<stem>_segmentation.png`` (0/255, the image's size) and the optional outputs."""
    # Encoded arrays are passed as temporaries, freed before the next is made.
    write_image(out_dir / f"{path.stem}{OUTPUT_SUFFIXES[0]}",
                prediction.mask.view(np.uint8) * np.uint8(255))
    if args.save_probabilities:
        write_image(out_dir / f"{path.stem}{OUTPUT_SUFFIXES[1]}",
                    cv2.convertScaleAbs(prediction.probabilities, alpha=255))
    if args.overlay:
        # Decoded again rather than kept, so that one full-size image at most is alive.
        image = read_image_bgr(path)
        draw_contour(image, prediction.mask)
        write_image(out_dir / f"{path.stem}{OUTPUT_SUFFIXES[2]}", image,
                    (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY))


def write_image(path: Path, array: np.ndarray, params: Sequence[int] = ()) -> None:
    """Encode ``array`` (gray or BGR uint8) by ``path``'s extension and write it."""
    ok, buffer = cv2.imencode(path.suffix, array, list(params))
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    path.write_bytes(buffer.tobytes())


def run(args: argparse.Namespace) -> int:
    paths = collect_inputs(args.input)
    predictor = predictor_from_args(args)
    print(describe_model(predictor.checkpoint_path), flush=True)
    Path(args.output).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tqdm(total=len(paths), unit="image", disable=None, file=sys.stderr) as progress:
        failed = predict_files(predictor, paths, args, progress)
    seconds = time.perf_counter() - started
    done = len(paths) - failed
    print(f"done: {done} of {len(paths)} images, {failed} failed, {seconds:.1f} s, "
          f"{done / max(seconds, 1e-9):.2f} images/s; masks in {args.output}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_script(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
