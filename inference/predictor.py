"""A trained model loaded for prediction: the :class:`Predictor` API behind ``predict.py``,
``scripts/evaluate.py``, the notebook, the web page and torch.hub.

Images go through exactly the validation transform of training (area resize to the model's
square size, the model's normalisation); the logits, divided by the model's temperature
(:mod:`inference.calibration`), are resized back to the image's size with ``INTER_LINEAR`` and
thresholded there. Each mask comes with an estimate of its quality (:mod:`inference.quality`, from
the image and its mirror image) and a review flag with its reasons
(:mod:`inference.review`). Files are read at reduced scale when they are large (see
:func:`data.imageio.read_image_reduced`), and :meth:`Predictor.predict_files` decodes the next
images and finishes (resizes, writes) the previous ones in threads while the model runs.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch

from common.device import Hardware
from common.errors import FlagError
from data.imageio import CorruptFileError, decode_image, read_bytes
from data.preprocess import model_input
from inference.calibration import Calibration
from inference.image_check import image_statistics
from inference.measurements import LesionMeasurements, measure, pixel_size_of
from inference.quality import flip_features
from inference.review import review_reasons
from inference.settings import LOADING, PredictionSettings
from models.bundled import default_model
from models.checkpoint import ModelBundle, load_model_file
from models.onnx_model import is_onnx

# Probabilities are clamped this far from 0 and 1 before the logit, which would be infinite.
TTA_EPS = 1e-6
FLIPS = ((), (-1,), (-2,), (-2, -1))
# The variants the quality estimate reads: the image and its mirror image (docs/experiments.md,
# "Quality estimate": as informative as all four flips, at one extra pass instead of three).
QUALITY_FLIPS = FLIPS[:2]
OUTLINE_BGR = (0, 255, 0)
# Longest side of the copy of an image a prediction keeps for its lesion's colours.
COLOUR_IMAGE_SIDE = 1024
# Errors that make one input image fail without stopping the others.
IMAGE_ERRORS = (CorruptFileError, OSError, cv2.error)
Result = TypeVar("Result")


@dataclass
class Prediction:
    """The prediction for one image, at the image's original size.

    Attributes:
        mask: bool ``(H, W)``, the thresholded (and post-processed) lesion mask.
        logits: float32 ``(H, W)``, the model's logits divided by its temperature, resized to
            the image.
        quality: the estimated Dice of ``mask`` against an expert's mask, in ``[0, 1]``
            (:mod:`inference.quality`); ``None`` when the predictor does not estimate it.
        reason: why the mask should be reviewed, ``""`` when it need not be: ``not
            dermoscopy``, ``no lesion found``, ``lesion larger than the frame``, ``low
            quality``, joined by ``"; "``.
        image: RGB uint8, the image or a copy reduced by a whole factor (for the lesion's
            colours); ``None`` when unknown.
        mm_per_pixel: the pixel size in millimetres, when known.
        probabilities: float32 ``(H, W)`` lesion probabilities in ``[0, 1]``, computed from
            the logits when first asked for.
        measurements: the lesion's :class:`inference.measurements.LesionMeasurements`, computed when
            first asked for.
    """

    mask: np.ndarray
    logits: np.ndarray = field(repr=False)
    quality: float | None = None
    reason: str = ""
    image: np.ndarray | None = field(default=None, repr=False)
    mm_per_pixel: float | None = None

    @property
    def review(self) -> bool:
        """Whether a person should look at this mask (see :attr:`reason`)."""
        return bool(self.reason)

    @cached_property
    def probabilities(self) -> np.ndarray:
        return torch.from_numpy(self.logits).sigmoid().numpy()

    def review_columns(self) -> dict[str, Any]:
        """``quality`` (rounded to 4 decimals, ``""`` when not estimated), ``review``
        (``yes``/``no``) and ``reason``, as ``predictions.csv`` has them."""
        return {"quality": "" if self.quality is None else round(self.quality, 4),
                "review": "yes" if self.review else "no", "reason": self.reason}

    @cached_property
    def measurements(self) -> LesionMeasurements:
        return measure(self.mask, self.image, self.mm_per_pixel)


@dataclass
class LoadedImage:
    """An image ready for the model: its normalised tensor ``(3, S, S)``, original ``(height,
    width)``, the statistics of the dermoscopy check, a copy for the colours, and its pixel
    size in millimetres when known."""

    tensor: torch.Tensor
    size: tuple[int, int]
    statistics: dict[str, float]
    colour_image: np.ndarray
    mm_per_pixel: float | None = None


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


def draw_prediction(image: np.ndarray, prediction: Prediction,
                    colour: tuple[int, int, int] = OUTLINE_BGR) -> np.ndarray:
    """Draw on ``image`` in place, and return it: the lesion's outline, its largest diameter,
    and a line of text with the quality estimate, the review reason and the diameter.

    Args:
        image: uint8 ``(h, w, 3)``, the photo at the prediction's size or scaled down (for a
            page), in the channel order of ``colour``.
        prediction: its :class:`Prediction`.
        colour: three values in ``[0, 255]``.
    """
    height, width = image.shape[:2]
    mask = prediction.mask
    if mask.shape != (height, width):
        mask = cv2.resize(mask.view(np.uint8), (width, height), interpolation=cv2.INTER_AREA) > 0
    draw_contour(image, mask, colour)
    thickness = max(1, round(max(height, width) / 500))
    ends = prediction.measurements.diameter_ends
    if ends is not None:
        scale = width / prediction.mask.shape[1]
        start, end = (tuple(round(value * scale) for value in point) for point in ends)
        cv2.line(image, start, end, colour, thickness, cv2.LINE_AA)
    size = max(height, width) / 1400
    origin = (round(12 * size) + 2, round(34 * size) + 8)
    for ink, stroke in (((0, 0, 0), 3 * thickness), ((255, 255, 255), thickness)):
        cv2.putText(image, describe_prediction(prediction), origin, cv2.FONT_HERSHEY_SIMPLEX,
                    size, ink, stroke, cv2.LINE_AA)
    return image


def describe_prediction(prediction: Prediction) -> str:
    """One line for people: quality, review reason and largest diameter."""
    parts = [] if prediction.quality is None else [f"quality {prediction.quality:.2f}"]
    parts.append(f"review: {prediction.reason}" if prediction.review else "no review needed")
    found = prediction.measurements
    if found.area_px:
        parts.append(f"diameter {found.max_diameter_mm:.1f} mm" if found.max_diameter_mm
                     else f"diameter {found.max_diameter_px:.0f} px")
    return " | ".join(parts)


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
            :func:`models.bundled.default_model` (your ``models/checkpoints/best.pt`` trained
            on real images, else the bundled ISIC model).
        settings: how to predict (:class:`inference.settings.PredictionSettings`: threshold,
            test-time augmentation, post-processing, device, precision, batch size, threads,
            decoding, quality estimate, review threshold, pixel size); default its defaults.
        **changes: fields of ``settings`` to change, as in ``Predictor("best.pt",
            device="cpu", tta=True)``.

    Attributes:
        checkpoint_path: the model file in use.
        settings: the settings in use, ``threshold`` and ``review_below`` resolved to the
            model file's where they were not given.
        info: how the model was trained (``epoch``, ``metrics``, ``args``; what the file
            recorded).
        calibration: the model's temperature, quality estimate, review threshold and
            dermoscopy check (defaults when the file holds none).

    Raises:
        CheckpointError: the model file is missing, unsafe or not of this project.
        FlagError: an unknown setting, or a bad threshold, review threshold, batch size, pixel
            size, device or precision.
    """

    def __init__(self, checkpoint: str | Path | None = None,
                 settings: PredictionSettings | None = None, **changes: Any) -> None:
        settings = (settings or PredictionSettings()).with_changes(**changes)
        self.checkpoint_path = Path(checkpoint) if checkpoint is not None else default_model()
        bundle, self.runner = load_runner(self.checkpoint_path, settings.device,
                                          settings.precision)
        self.device = self.runner.device
        self.info: dict[str, Any] = bundle.info
        self.calibration = Calibration.from_dict(bundle.calibration)
        self.img_size = bundle.img_size
        self.mean, self.std = bundle.mean, bundle.std
        self.settings = replace(
            settings, threshold=bundle.threshold if settings.threshold is None
            else settings.threshold, review_below=self.calibration.review_below
            if settings.review_below is None else settings.review_below).checked()

    @property
    def threshold(self) -> float:
        """The probability above which a pixel is lesion, in ``(0, 1)``."""
        return self.settings.threshold

    def with_settings(self, **changes: Any) -> Predictor:
        """A predictor that shares this one's loaded model with ``changes`` to its settings
        (``None`` values keep this one's), so that a server honours each request's options
        without reloading or changing the predictor other requests use.

        Raises:
            FlagError: a value :meth:`PredictionSettings.checked` refuses, or a change of the
                device or precision (which needs the model loaded again).
        """
        reloading = [name for name in LOADING
                     if changes.get(name) not in (None, getattr(self.settings, name))]
        if reloading:
            raise FlagError(f"{', '.join(reloading)} cannot change on a loaded model; make a "
                            "new Predictor")
        other = copy.copy(self)
        other.settings = self.settings.with_changes(**changes)
        return other

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``(H, W, 3)`` -> float32 ``(3, S, S)`` normalised, ``S = img_size``."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 (H, W, 3) image, got {image.dtype} "
                             f"{image.shape}; read files with data.imageio.read_image")
        return torch.from_numpy(model_input(image, self.img_size, self.mean, self.std))

    def load(self, image: np.ndarray, size: tuple[int, int] | None = None,
             mm_per_pixel: float | None = None) -> LoadedImage:
        """An RGB uint8 image ``(h, w, 3)`` ready for the model: ``size`` is the original
        ``(height, width)`` when ``image`` is a reduced copy (default its own)."""
        step = -(-max(image.shape[:2]) // COLOUR_IMAGE_SIDE)
        colours = np.ascontiguousarray(image[::step, ::step]) if step > 1 else image
        return LoadedImage(self.preprocess(image), size or image.shape[:2],
                           image_statistics(image), colours,
                           self.settings.mm_per_pixel or mm_per_pixel)

    def read(self, path: str | Path) -> LoadedImage:
        """An image file ready for the model (decoded at reduced scale when it is large enough,
        unless ``full_decode``; see :func:`data.imageio.read_image_reduced`), with the pixel
        size its header states, where believable; the file is read once.

        Raises:
            MissingFileError, CorruptFileError: the file is missing or cannot be decoded.
        """
        path = Path(path)
        data = read_bytes(path)
        image, size = decode_image(data, path,
                                   None if self.settings.full_decode else self.img_size)
        pixel_size = None if self.settings.mm_per_pixel else pixel_size_of(data)
        return self.load(image, size, pixel_size)

    def flip_logits(self, batch: torch.Tensor,
                    flips: Sequence[tuple[int, ...]] = FLIPS) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` -> float32 logits ``(N, K, S, S)`` of the image and its
        flipped variants (``flips``: dims to flip, :data:`FLIPS` by default: none, horizontal,
        vertical, both), flipped back onto the image; the model runs once on the ``K N``
        images. Before the model's temperature."""
        logits = self.runner(torch.cat([_flip(batch, dims) for dims in flips]))[:, 0]
        variants = logits.float().cpu().split(len(batch))
        return torch.stack([_flip(variant, dims) for variant, dims in zip(variants, flips)],
                           dim=1)

    def model_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised ``(N, 3, S, S)`` -> the logits of the masks ``(N, 1, S, S)`` after the
        temperature, and, when ``quality`` is on, the probabilities of the variants the quality
        estimate reads, :data:`QUALITY_FLIPS` ``(N, 2, S, S)`` (else ``None``).

        With ``tta`` the logits are those of the mean probability over the four flips, clamped
        to ``logit(1e-6) .. logit(1 - 1e-6)``.
        """
        temperature, tta = self.calibration.temperature, self.settings.tta
        if not (self.settings.quality or tta):
            return self.runner(batch).float().cpu() / temperature, None
        logits = self.flip_logits(batch, FLIPS if tta else QUALITY_FLIPS) / temperature
        probabilities = torch.sigmoid(logits)
        quality_probabilities = (probabilities[:, :len(QUALITY_FLIPS)]
                                 if self.settings.quality else None)
        if tta:
            return (torch.logit(probabilities.mean(1, keepdim=True), eps=TTA_EPS),
                    quality_probabilities)
        return logits[:, :1], quality_probabilities

    def predict_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised ``(N, 3, S, S)`` -> float32 logits ``(N, 1, S, S)`` of the masks (see
        :meth:`model_outputs`)."""
        return self.model_outputs(batch)[0]

    def predict(self, image: np.ndarray) -> Prediction:
        """RGB uint8 ``(H, W, 3)`` -> its :class:`Prediction` at ``(H, W)``."""
        return self.predict_batch([image])[0]

    def predict_file(self, path: str | Path) -> Prediction:
        """An image file -> its :class:`Prediction` at the image's original size."""
        loaded = self.read(path)
        logits, flips = self.model_outputs(loaded.tensor[None])
        return self.restore(logits[0], loaded, None if flips is None else flips[0])

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """RGB uint8 ``(H_i, W_i, 3)`` images of any sizes -> one :class:`Prediction` each,
        at each image's size; the model runs on ``batch_size`` images at a time."""
        predictions: list[Prediction] = []
        for start in range(0, len(images), self.settings.batch_size):
            chunk = [self.load(image) for image in images[start:start + self.settings.batch_size]]
            predictions.extend(self._predict_loaded(chunk))
        return predictions

    def _predict_loaded(self, chunk: Sequence[LoadedImage]) -> list[Prediction]:
        logits, flips = self.model_outputs(torch.stack([loaded.tensor for loaded in chunk]))
        return [self.restore(logits[i], loaded, None if flips is None else flips[i])
                for i, loaded in enumerate(chunk)]

    def full_size_mask(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Model-size logits (after the temperature) ``(1, S, S)`` or ``(S, S)`` -> the
        post-processed bool mask at ``size`` ``(height, width)``."""
        return self._resized(logits, size)[1]

    def _resized(self, logits: torch.Tensor, size: tuple[int, int]
                 ) -> tuple[np.ndarray, np.ndarray]:
        height, width = size
        small = logits.reshape(logits.shape[-2:]).float().cpu().numpy()
        full = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        return full, postprocess(full > _logit(self.settings.threshold), self.settings.keep_largest,
                                 self.settings.fill_holes)

    def restore(self, logits: torch.Tensor, loaded: LoadedImage,
                flips: torch.Tensor | None = None) -> Prediction:
        """The :class:`Prediction` at ``loaded.size`` of model-size logits ``(1, S, S)`` (after
        the temperature; resized as logits, then thresholded and post-processed), with the
        quality estimated from the probabilities of :data:`QUALITY_FLIPS` ``(2, S, S)`` and the
        review flag."""
        full, mask = self._resized(logits, loaded.size)
        quality = None
        if self.settings.quality and flips is not None:
            signals = flip_features(flips.numpy(), self.settings.threshold)
            quality = self.calibration.quality.estimate(signals, empty=not mask.any())
        check = self.calibration.dermoscopy
        dermoscopy = check is None or not check.failures(loaded.statistics)
        reasons = review_reasons(mask, quality, self.settings.review_below, dermoscopy)
        return Prediction(mask, full, quality, "; ".join(reasons), loaded.colour_image,
                          loaded.mm_per_pixel)

    def predict_files(self, paths: Sequence[Path], finish: Callable[[Path, Prediction], Result]
                      ) -> Iterator[tuple[Path, Result | BaseException]]:
        """Predict image files and hand each :class:`Prediction` to ``finish`` (writing it,
        scoring it), yielding ``(path, what finish returned)``, or ``(path, the error)`` for
        an image that could not be read or finished; in the order they complete.

        ``workers`` threads read and decode the next batch while the model runs on this one,
        and resize and finish the predictions of the last; at most ``workers`` full-size
        predictions exist at a time.
        """
        chunks = [paths[start:start + self.settings.batch_size]
                  for start in range(0, len(paths), self.settings.batch_size)]
        finishing: deque[tuple[Path, Future]] = deque()
        with ThreadPoolExecutor(self.settings.workers) as pool:
            reads = [pool.submit(self.read, path) for path in chunks[0]] if chunks else []
            for index, chunk in enumerate(chunks):
                current = reads
                if index + 1 < len(chunks):
                    reads = [pool.submit(self.read, path) for path in chunks[index + 1]]
                ready = []
                for path, future in zip(chunk, current):
                    try:
                        ready.append((path, future.result()))
                    except IMAGE_ERRORS as exc:
                        yield path, exc
                if ready:
                    logits, flips = self.model_outputs(
                        torch.stack([loaded.tensor for _, loaded in ready]))
                    for i, (path, loaded) in enumerate(ready):
                        image_flips = None if flips is None else flips[i]
                        finishing.append((path, pool.submit(
                            self._finish, finish, path, logits[i], loaded, image_flips)))
                while (len(finishing) > self.settings.workers
                       or (finishing and finishing[0][1].done())):
                    yield _outcome(*finishing.popleft())
            while finishing:
                yield _outcome(*finishing.popleft())

    def _finish(self, finish: Callable[[Path, Prediction], Result], path: Path,
                logits: torch.Tensor, loaded: LoadedImage,
                flips: torch.Tensor | None) -> Result:
        return finish(path, self.restore(logits, loaded, flips))


def _outcome(path: Path, future: Future) -> tuple[Path, Any]:
    try:
        return path, future.result()
    except IMAGE_ERRORS as exc:
        return path, exc


def _flip(batch: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return batch.flip(dims) if dims else batch


def _logit(probability: float) -> float:
    return math.log(probability / (1 - probability))
