"""Reading images and masks with OpenCV, treating truncated or undecodable files as errors.

OpenCV returns ``None`` for garbage without raising, and decodes a truncated JPEG (a download cut
short) with only a warning on stderr; both are reported here as :class:`CorruptFileError`.

Images are returned in the orientation every image viewer shows them in: an EXIF orientation
tag (which phone dermatoscopes write) is applied, so masks drawn on the photo as it is seen fit
it. Masks are read as stored (PNG masks carry no orientation).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from common.errors import MissingFileError, UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


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
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    return decode_bytes(path.read_bytes(), path, flags)


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


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1 to 8) of an encoded image, 1 when it has none; only the header
    is parsed."""
    if data[:3] != b"\xff\xd8\xff" and b"Exif" not in data[:65536]:
        return 1
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return 1
    return value if value in ORIENT else 1


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
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist")
    data = path.read_bytes()
    array = _to_uint8(decode_bytes(data, path, cv2.IMREAD_UNCHANGED))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    return orient(array, exif_orientation(data))


def read_mask(path: str | Path) -> np.ndarray:
    """Read a lesion mask and binarise it (see :func:`binarise_mask`)."""
    return binarise_mask(decode_file(path))


def binarise_mask(array: np.ndarray) -> np.ndarray:
    """A decoded mask as lesion (1) and background (0).

    Pixels above 127 are lesion (ISIC masks are 0/255); a mask whose maximum is 1 is taken to be
    a 0/1 mask. Colour masks use their first channel.

    Returns:
        ``(H, W)`` uint8 array with values in ``{0, 1}``.
    """
    if array.ndim == 3:
        array = array[:, :, 0]
    if array.max() == 1:
        return (array > 0).astype(np.uint8)
    return (_to_uint8(array) > 127).astype(np.uint8)
