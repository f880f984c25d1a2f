"""Reading images and masks with OpenCV, treating truncated or undecodable files as errors.

OpenCV returns ``None`` for garbage without raising, and decodes a truncated JPEG (a download cut
short) with only a warning on stderr; both are reported here as :class:`CorruptFileError`.

Images are returned in the orientation every image viewer shows them in: an EXIF orientation
tag (which phone dermatoscopes write) is applied, so masks drawn on the photo as it is seen fit
it. Masks are read as stored (PNG masks carry no orientation).

A model that sees 128x128 pixels needs no 6000x4000 decode: :func:`read_image_reduced` lets
the JPEG decoder scale by 1/2, 1/4 or 1/8 in its DCT (a proper low-pass, several times faster
than decoding everything), as long as the result keeps at least twice the pixels the model
needs on each side, and takes the original size from the file's header.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from common.errors import MissingFileError, UserError


class CorruptFileError(UserError, ValueError):
    """An image or mask file that cannot be decoded completely."""


def _is_truncated(data: bytes) -> bool:
    # A complete JPEG ends with the EOI marker (some writers pad after it); a complete PNG with
    # the IEND chunk. Other formats are left to the decoder.
    if data[:3] == b"\xff\xd8\xff":
        return data[-4096:].rfind(b"\xff\xd9") == -1
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return data[-64:].rfind(b"IEND") == -1
    return False


def decode_file(path: str | Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an image file as OpenCV does (BGR/BGRA/gray, 8 or 16 bit), refusing corrupt files.

    Raises:
        MissingFileError: ``path`` does not exist.
        CorruptFileError: the file is empty, truncated or not a decodable image.
    """
    path = Path(path)
    return decode_bytes(read_bytes(path), path, flags)


def decode_bytes(data: bytes, path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """:func:`decode_file` of a file's bytes already read (``path`` names it in errors)."""
    if not data:
        raise CorruptFileError(f"{path} is empty; download or copy it again")
    if _is_truncated(data):
        raise CorruptFileError(f"{path} is truncated (an interrupted download?); replace it")
    array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if array is None or array.size == 0:
        raise CorruptFileError(f"{path} is not a readable image; replace or remove it")
    return array


# EXIF orientation (tag 0x0112) -> how to turn the stored pixels into what a viewer shows.
# Lesion where an 8-bit mask value is above this: the rule of the ISIC challenge's scorer,
# used for training masks and for scoring alike.
MASK_THRESHOLD = 128
EXIF_ORIENTATION = 0x0112
ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


JPEG_START = b"\xff\xd8\xff"
# The JPEG decoder's DCT scalings, largest first.
REDUCTIONS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
              (2, cv2.IMREAD_REDUCED_COLOR_2))


def image_header(data: bytes) -> tuple[int, tuple[int, int] | None]:
    """The EXIF orientation (1 to 8; 1 when there is none) of an encoded image, and its stored
    ``(height, width)`` (``None`` when the header cannot be read); only the header is parsed.
    """
    if data[:3] != JPEG_START and b"Exif" not in data[:65536]:
        return 1, None
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Only the header is read: Pillow's guard against decoding huge images does not
            # apply (OpenCV decodes, within its own limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                value = image.getexif().get(EXIF_ORIENTATION, 1)
                width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError):
        return 1, None
    return (value if value in ORIENT else 1), (height, width)


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` ``(H, W, ...)`` as a viewer shows it for an EXIF ``orientation``."""
    turn = ORIENT.get(orientation)
    return np.ascontiguousarray(turn(array)) if turn else array


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    # Float images (TIFF) are taken to be in [0, 1].
    return (np.clip(array, 0, 1) * 255 + 0.5).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB, as a viewer shows it (EXIF orientation applied).

    Returns:
        ``(H, W, 3)`` uint8 array in ``[0, 255]``; grayscale is repeated to 3 channels, an alpha
        channel dropped, 16-bit scaled down to 8-bit.

    Raises:
        MissingFileError, CorruptFileError: see :func:`decode_file`.
    """
    return cv2.cvtColor(read_image_bgr(path), cv2.COLOR_BGR2RGB)


def read_image_bgr(path: str | Path) -> np.ndarray:
    """:func:`read_image` in OpenCV's BGR channel order."""
    path = Path(path)
    data = read_bytes(path)
    return orient(_to_bgr(decode_bytes(data, path, cv2.IMREAD_UNCHANGED)), image_header(data)[0])


def _to_bgr(array: np.ndarray) -> np.ndarray:
    array = _to_uint8(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return array


def read_bytes(path: Path) -> bytes:
    """The file's bytes; raises :class:`MissingFileError` when it does not exist."""
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    return path.read_bytes()


def reduction(height: int, width: int, min_side: int) -> int:
    """The largest JPEG decoder scaling (8, 4, 2; else 1) that leaves at least ``2 * min_side``
    pixels on each side of a ``height`` x ``width`` image."""
    return next((factor for factor, _ in REDUCTIONS
                 if min(height, width) >= 2 * min_side * factor), 1)


def read_image_reduced(path: str | Path, min_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read an image as RGB (EXIF orientation applied) for a model that resizes it to
    ``min_side`` pixels or fewer: a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (see
    :func:`reduction`), anything else in full.

    Returns:
        The RGB uint8 image (perhaps smaller than the file's), and the original ``(height,
        width)`` as a viewer shows it: the size a full-resolution mask must have.

    Raises:
        MissingFileError, CorruptFileError: see :func:`decode_file`.
    """
    path = Path(path)
    return decode_image(read_bytes(path), path, min_side)


def decode_image(data: bytes, path: Path, min_side: int | None = None
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`read_image_reduced` of a file's bytes already read (``path`` names it in
    errors); ``min_side`` ``None`` decodes in full, as :func:`read_image` does."""
    orientation, stored = image_header(data)
    factor = (reduction(*stored, min_side)
              if min_side and stored and data[:3] == JPEG_START else 1)
    if factor == 1:
        image = orient(_to_bgr(decode_bytes(data, path, cv2.IMREAD_UNCHANGED)), orientation)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), image.shape[:2]
    flag = dict(REDUCTIONS)[factor] | cv2.IMREAD_IGNORE_ORIENTATION
    image = orient(decode_bytes(data, path, flag), orientation)
    height, width = stored
    size = (width, height) if orientation >= 5 else (height, width)  # 5 to 8 turn by 90
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), size


def read_mask(path: str | Path) -> np.ndarray:
    """Read a lesion mask and binarise it (see :func:`binarise_mask`)."""
    return binarise_mask(decode_file(path))


def binarise_mask(array: np.ndarray) -> np.ndarray:
    """A decoded mask as lesion (1) and background (0).

    Pixels above :data:`MASK_THRESHOLD` (128) are lesion (ISIC masks are 0/255); a mask whose
    maximum is 1 is taken to be a 0/1 mask (for training; the scorer refuses those, see
    :func:`evaluation.scores.read_scored_mask`). Colour masks use their first channel.

    Returns:
        ``(H, W)`` uint8 array with values in ``{0, 1}``.
    """
    if array.ndim == 3:
        array = array[:, :, 0]
    if array.max() == 1:
        return (array > 0).astype(np.uint8)
    # OpenCV's threshold: one fast pass over a full-resolution mask.
    return cv2.threshold(_to_uint8(array), MASK_THRESHOLD, 1, cv2.THRESH_BINARY)[1]


def mask_png_options() -> list[int]:
    """PNG settings for a 0/255 mask: no row filter and run-length deflate (3 times faster
    than OpenCV's defaults and smaller); OpenCV before 4.10 knows no filter setting."""
    options = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
               cv2.IMWRITE_PNG_STRATEGY_RLE]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):
        options += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
    return options


def write_image(path: Path, array: np.ndarray, params: Sequence[int] = ()) -> None:
    """Encode ``array`` (gray or BGR uint8) by ``path``'s extension and write it.

    Raises:
        OSError: OpenCV cannot encode it, or the file cannot be written.
    """
    ok, buffer = cv2.imencode(path.suffix, array, list(params))
    if not ok:
        raise OSError(f"OpenCV could not encode {path}")
    path.write_bytes(buffer.tobytes())


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A mask in the ISIC format: bool ``(H, W)`` as a one-channel PNG of 0 and 255."""
    write_image(path, mask.view(np.uint8) * np.uint8(255), mask_png_options())
