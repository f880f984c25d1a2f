"""A trained model loaded for prediction: the :class:`Predictor` API behind ``predict.py``,
``scripts/evaluate.py``, the notebook and torch.hub.

Images go through exactly the validation transform of training (area resize to the model's
square size, the model's normalisation); the logits are resized back to the image's size with
``INTER_LINEAR`` and thresholded there. Files are read at reduced scale when they are large
(see :func:`data.imageio.read_image_reduced`), and :meth:`Predictor.predict_files` decodes
the next images and finishes (resizes, writes) the previous ones in threads while the model
runs.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from common.device import Hardware
from common.errors import FlagError
from common.options import check_minimum
from data.imageio import CorruptFileError, read_image, read_image_reduced
from data.preprocess import model_input
from models.bundled import default_model
from models.checkpoint import ModelBundle, load_model_file
from models.onnx_model import is_onnx

# Probabilities are clamped this far from 0 and 1 before the logit, which would be infinite.
TTA_EPS = 1e-6
FLIPS = ((), (-1,), (-2,), (-2, -1))
OUTLINE_BGR = (0, 255, 0)
# Errors that make one input image fail without stopping the others.
IMAGE_ERRORS = (CorruptFileError, OSError, cv2.error)
Result = TypeVar("Result")


@dataclass
class Prediction:
    """The prediction for one image, at the image's original size.

    Attributes:
        mask: bool ``(H, W)``, the thresholded (and post-processed) lesion mask.
        logits: float32 ``(H, W)``, the model's logits resized to the image.
        probabilities: float32 ``(H, W)`` lesion probabilities in ``[0, 1]``, computed from
            the logits when first asked for.
    """

    mask: np.ndarray
    logits: np.ndarray = field(repr=False)

    @cached_property
    def probabilities(self) -> np.ndarray:
        return torch.from_numpy(self.logits).sigmoid().numpy()


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
                 colour: tuple[int, int, int] = OUTLINE_BGR) -> np.ndarray:
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


class TorchRunner:
    """The U-Net in PyTorch: normalised ``(N, 3, H, W)`` in, float32 logits ``(N, 1, H, W)``
    out, on the hardware's device and precision."""

    def __init__(self, model: torch.nn.Module, hardware: Hardware) -> None:
        self.hardware = hardware
        self.device = hardware.device
        self.model = hardware.module(model)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self.hardware.autocast():
            return self.model(self.hardware.images(batch)).float()

    def describe(self) -> str:
        return f"PyTorch on {self.hardware.describe()}"


def load_runner(path: Path, device: str, precision: str) -> tuple[ModelBundle, Any]:
    """The settings of a model file and what runs it: ONNX Runtime for an ``.onnx`` export
    (which computes in float32 whatever ``precision`` says), else PyTorch."""
    if is_onnx(path):
        from models.onnx_model import OnnxRunner, read_metadata

        return read_metadata(path), OnnxRunner(path, device)
    bundle = load_model_file(path)
    return bundle, TorchRunner(bundle.build(), Hardware.choose(device, precision))


class Predictor:
    """A model loaded once, ready to predict images of any size.

    Args:
        checkpoint: a ``best.pt`` or ``last.pt`` written by ``train.py``, or a ``.safetensors``
            or ``.onnx`` export (run by ONNX Runtime); ``None``:
            :func:`models.bundled.default_model` (your ``models/checkpoints/best.pt``, else
            the bundled ISIC model).
        device: ``auto`` (CUDA, MPS, CPU), ``cpu``, ``cuda``, ``cuda:1``, ...
        threshold: probability above which a pixel is lesion, in ``(0, 1)``; default the
            model file's.
        tta: average the probabilities over horizontal and vertical flips (4 passes).
        keep_largest: see :func:`postprocess`.
        fill_holes: see :func:`postprocess`.
        batch_size: images per forward pass in :meth:`predict_batch` and
            :meth:`predict_files`.
        precision: ``auto`` (bf16 autocast where the hardware has it), ``fp32``, ``bf16``,
            ``fp16``; as in ``train.py`` (ONNX models compute in fp32).
        workers: threads of :meth:`predict_files`.
        full_decode: decode image files in full, never at the JPEG decoder's reduced scale
            (slower; the masks differ only along the border, see the README).

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
                 fill_holes: bool = False, batch_size: int = 8, precision: str = "auto",
                 workers: int = 2, full_decode: bool = False) -> None:
        check_minimum({"batch_size": batch_size, "workers": workers})
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else default_model()
        bundle, self.runner = load_runner(self.checkpoint_path, device, precision)
        self.device = self.runner.device
        self.info: dict[str, Any] = bundle.info
        self.img_size = bundle.img_size
        self.mean, self.std = bundle.mean, bundle.std
        self.threshold = _checked_threshold(bundle.threshold if threshold is None else threshold)
        self.tta = tta
        self.keep_largest = keep_largest
        self.fill_holes = fill_holes
        self.batch_size = batch_size
        self.workers = workers
        self.full_decode = full_decode

    def with_settings(self, threshold: float | None = None, tta: bool | None = None,
                      keep_largest: bool | None = None,
                      fill_holes: bool | None = None) -> Predictor:
        """A predictor that shares this one's loaded model with other settings (``None``: keep
        this one's), so that a server can honour each request's options without reloading or
        changing the predictor other requests use.

        Raises:
            FlagError: a threshold outside ``(0, 1)``.
        """
        other = copy.copy(self)
        if threshold is not None:
            other.threshold = _checked_threshold(threshold)
        for name, value in (("tta", tta), ("keep_largest", keep_largest),
                            ("fill_holes", fill_holes)):
            if value is not None:
                setattr(other, name, bool(value))
        return other

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, S, S)`` normalised, ``S = img_size``."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} "
                             f"{image.shape}; read files with data.imageio.read_image")
        return torch.from_numpy(model_input(image, self.img_size, self.mean, self.std))

    def read(self, path: str | Path) -> tuple[torch.Tensor, tuple[int, int]]:
        """An image file as :meth:`preprocess` makes it, and its original ``(height, width)``
        (decoded at reduced scale when it is large enough, unless ``full_decode``; see
        :func:`data.imageio.read_image_reduced`).

        Raises:
            MissingFileError, CorruptFileError: the file is missing or cannot be decoded.
        """
        if self.full_decode:
            image = read_image(path)
            return self.preprocess(image), image.shape[:2]
        image, size = read_image_reduced(path, self.img_size)
        return self.preprocess(image), size

    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` -> float32 logits ``(N, 1, S, S)``.

        With ``tta``: the logit of the mean probability over the flips, clamped to
        ``logit(1e-6) .. logit(1 - 1e-6)``.
        """
        if not self.tta:
            return self.runner(batch)
        probabilities = sum(_flip(torch.sigmoid(self.runner(_flip(batch, dims))), dims)
                            for dims in FLIPS) / len(FLIPS)
        return torch.logit(probabilities, eps=TTA_EPS)

    def predict(self, image: np.ndarray) -> Prediction:
        """RGB uint8 ``(H, W, 3)`` -> its :class:`Prediction` at ``(H, W)``."""
        return self.predict_batch([image])[0]

    def predict_file(self, path: str | Path) -> Prediction:
        """An image file -> its :class:`Prediction` at the image's original size."""
        tensor, size = self.read(path)
        return self.restore(self.predict_logits(tensor[None])[0].cpu(), size)

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
        return Prediction(mask=mask, logits=full)

    def predict_files(self, paths: Sequence[Path], finish: Callable[[Path, Prediction], Result]
                      ) -> Iterator[tuple[Path, Result | BaseException]]:
        """Predict image files and hand each :class:`Prediction` to ``finish`` (writing it,
        scoring it), yielding ``(path, what finish returned)``, or ``(path, the error)`` for
        an image that could not be read or finished; in the order they complete.

        ``workers`` threads read and decode the next batch while the model runs on this one,
        and resize and finish the predictions of the last; at most ``workers`` full-size
        predictions exist at a time.
        """
        chunks = [paths[start:start + self.batch_size]
                  for start in range(0, len(paths), self.batch_size)]
        finishing: deque[tuple[Path, Future]] = deque()
        with ThreadPoolExecutor(self.workers) as pool:
            reads = [pool.submit(self.read, path) for path in chunks[0]] if chunks else []
            for index, chunk in enumerate(chunks):
                current = reads
                if index + 1 < len(chunks):
                    reads = [pool.submit(self.read, path) for path in chunks[index + 1]]
                ready = []
                for path, future in zip(chunk, current):
                    try:
                        ready.append((path, *future.result()))
                    except IMAGE_ERRORS as exc:
                        yield path, exc
                if ready:
                    logits = self.predict_logits(torch.stack([t for _, t, _ in ready])).cpu()
                    for (path, _, size), image_logits in zip(ready, logits):
                        finishing.append((path, pool.submit(self._finish, finish, path,
                                                            image_logits, size)))
                while len(finishing) > self.workers or (finishing and finishing[0][1].done()):
                    yield _outcome(*finishing.popleft())
            while finishing:
                yield _outcome(*finishing.popleft())

    def _finish(self, finish: Callable[[Path, Prediction], Result], path: Path,
                logits: torch.Tensor, size: tuple[int, int]) -> Result:
        return finish(path, self.restore(logits, size))


def _outcome(path: Path, future: Future) -> tuple[Path, Any]:
    try:
        return path, future.result()
    except IMAGE_ERRORS as exc:
        return path, exc


def _flip(batch: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return batch.flip(dims) if dims else batch


def _checked_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0 < threshold < 1:
        raise FlagError(f"--threshold must be between 0 and 1 (exclusive), got {threshold}")
    return threshold


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))
