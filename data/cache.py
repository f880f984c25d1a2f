"""The preparation cache: each image and mask decoded once, resized, and kept as uint8 arrays.

Decoding and resizing a full-resolution ISIC JPEG takes 50 to 200 ms; reading the same sample
from a memory-mapped 256x256 array takes microseconds. One cache holds one split of one data
folder at one size, in a folder of the cache root (``data/cache/`` of the repository unless told
otherwise; the data folder itself may be read-only)::

    <data folder name>-<split>-<size>px-<fingerprint>/
        images.npy   uint8 (N, S, S, 3) RGB, opened with np.load(mmap_mode="r")
        masks.npy    uint8 (N, S, S) in {0, 1}
        index.json   format version, size, data folder, split, ids and image paths in row
                     order, masks that were not 0/255, build time

The fingerprint hashes the format version, the size, and the path, byte size and modification
time of every image and mask, so a changed, added or removed file or another size gets a new
folder. A cache is written to a temporary folder and renamed when complete, so a folder with the
final name is always whole. Building a cache removes the caches it supersedes (same data folder,
split and size) and those whose data folder no longer exists.

Samples are resized with :func:`data.preprocess.area_resize`, the first step of the training and
evaluation transforms (:func:`data.dataset.resize_transform`), so that a dataset reading the
cache gives the same items as one reading the original files. This module imports neither
PyTorch nor albumentations, so that ``scripts/prepare.py`` starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from tqdm import tqdm

from data.imageio import CorruptFileError, binarise_mask, decode_file, read_image_reduced
from data.layouts import (
    DatasetError,
    Pair,
    check_same_size,
    find_images,
    find_pairs,
    find_split_folders,
)
from data.preprocess import area_resize
from data.workers import STALL_SECONDS, DataStallError, init_pool_worker, worker_context

# Bump when the stored arrays would differ for the same files (resize method, mask encoding):
# 2 decodes large JPEGs at reduced scale and applies EXIF orientation.
CACHE_VERSION = 3
DEFAULT_CACHE_ROOT = Path(__file__).resolve().parent / "cache"
INDEX_FILE = "index.json"
IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"
SHOWN = 5  # names listed per finding in the scan report

Log = Callable[[str], None]


def fingerprint(pairs: Sequence[Pair], img_size: int) -> str:
    """A hex digest of the format version, ``img_size`` and every file's path, size and mtime."""
    digest = hashlib.sha256(f"isic-cache {CACHE_VERSION} {img_size}\n".encode())
    for pair in pairs:
        for path in (pair.image, pair.mask):
            stat = path.stat()
            digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def has_grey_values(raw: np.ndarray) -> bool:
    """Whether a decoded mask has values other than 0 and full scale (255 for 8 bit)."""
    if raw.dtype == np.uint8 and raw.ndim == 2:  # OpenCV: one fast pass, and the common case
        return cv2.countNonZero(cv2.inRange(raw, 1, 254)) > 0
    top = np.iinfo(raw.dtype).max if raw.dtype.kind in "ui" else 1.0
    return bool(np.any((raw != 0) & (raw != top)))


def unpaired_files(root: str | Path, split: str, pairs: Sequence[Pair]) -> tuple[list[str],
                                                                                  list[str]]:
    """File names in the image and mask folders of ``split`` that belong to none of ``pairs``
    (what ``find_pairs(..., skip_unpaired=True)`` left out): ``(images, masks)``."""
    image_dir, mask_dir = find_split_folders(root)[split]
    used = {path for pair in pairs for path in (pair.image, pair.mask)}
    return ([path.name for path in find_images(image_dir) if path not in used],
            [path.name for path in find_images(mask_dir) if path not in used])


# ---------------------------------------------------------------- decoding (worker processes)


@dataclass
class Decoded:
    """One pair resized, or why it could not be: ``problem`` is ``("unreadable" or
    "size_mismatches", message)``."""

    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    grey: bool = False
    problem: tuple[str, str] | None = None


def decode_resized(job: tuple[Pair, int]) -> Decoded:
    """Decode one pair, check it and resize it to ``img_size`` (the job's second item); a
    large JPEG is decoded at reduced scale (:func:`data.imageio.read_image_reduced`)."""
    pair, img_size = job
    try:
        (image, size), raw_mask = read_image_reduced(pair.image, img_size), decode_file(pair.mask)
        mask = binarise_mask(raw_mask)
        check_same_size(pair, size, mask.shape)
        # The report tells whether binarising changed anything.
        grey = has_grey_values(raw_mask)
    except (CorruptFileError, OSError) as exc:
        return Decoded(problem=("unreadable", str(exc)))
    except DatasetError as exc:
        return Decoded(problem=("size_mismatches", str(exc)))
    return Decoded(area_resize(image, img_size), area_resize(mask, img_size), grey)


# Starting the decoding pool's processes costs about 2 s (a fresh interpreter imports PyTorch and
# OpenCV, see data.workers); fewer images than this decode about as fast in the process itself.
POOL_MIN_IMAGES = 500


def decode_all(pairs: Sequence[Pair], img_size: int, workers: int) -> Iterator[Decoded]:
    """:func:`decode_resized` of every pair, in order, on ``workers`` processes.

    Raises:
        DataStallError: a chunk of images took longer than :data:`data.workers.STALL_SECONDS`
            (a process or the file system stopped answering).
    """
    jobs = [(pair, img_size) for pair in pairs]
    if workers <= 1 or len(jobs) < POOL_MIN_IMAGES:
        yield from map(decode_resized, jobs)
        return
    processes = min(workers, len(jobs))
    size = max(1, min(8, len(jobs) // (4 * processes)))
    chunks = [jobs[start:start + size] for start in range(0, len(jobs), size)]
    with worker_context().Pool(processes, initializer=init_pool_worker) as pool:
        decoded = pool.imap(decode_chunk, chunks)
        for chunk in chunks:
            try:
                yield from decoded.next(timeout=STALL_SECONDS)
            except multiprocessing.TimeoutError:
                raise DataStallError(
                    f"decoding {len(chunk)} images from {chunk[0][0].image} on for the "
                    f"preparation cache took longer than {STALL_SECONDS:.0f} s: a "
                    "decoding process or the file system stopped answering; check that the "
                    "data folder can be read, or train with --no-cache") from None


def decode_chunk(jobs: Sequence[tuple[Pair, int]]) -> list[Decoded]:
    """:func:`decode_resized` of a few jobs: one task of the decoding pool."""
    return [decode_resized(job) for job in jobs]


# ---------------------------------------------------------------- the scan report


@dataclass
class SplitReport:
    """What preparing one split found: counts come from the lengths of the name lists."""

    pairs: int
    images_without_mask: list[str] = field(default_factory=list)
    masks_without_image: list[str] = field(default_factory=list)
    grey_masks: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    cache: str = ""


REPORT_ROWS = (
    ("pairs found", "pairs"),
    ("images without masks (skipped)", "images_without_mask"),
    ("masks without images (skipped)", "masks_without_image"),
    ("masks not 0/255 (binarised)", "grey_masks"),
    ("image/mask size mismatches", "size_mismatches"),
    ("unreadable files", "unreadable"),
)
ERROR_FIELDS = ("size_mismatches", "unreadable")


def _shown(names: Sequence[str]) -> str:
    more = f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


@dataclass
class ScanReport:
    """The scan of a data folder's splits; :meth:`format` is what scripts print."""

    root: Path
    img_size: int
    splits: dict[str, SplitReport]
    duplicate_ids: list[str]

    def errors(self) -> list[str]:
        """Messages of the findings that make the data unusable (each names its file)."""
        return [message for report in self.splits.values() for name in ERROR_FIELDS
                for message in getattr(report, name)]

    def format(self) -> str:
        width = max(len(label) for label, _ in REPORT_ROWS) + 2
        lines = [f"scan of {self.root} at {self.img_size}x{self.img_size}:",
                 " " * (width + 2) + "".join(f"{split:>8}" for split in self.splits)]
        details = []
        for label, name in REPORT_ROWS:
            values = [getattr(report, name) for report in self.splits.values()]
            counts = "".join(f"{v if isinstance(v, int) else len(v):>8}" for v in values)
            lines.append(f"  {label:<{width}}{counts}")
            details += [f"  {label} in {split}: {_shown(v)}"
                        for split, v in zip(self.splits, values) if isinstance(v, list) and v]
        if len(self.splits) > 1:
            lines.append(f"  ids in more than one split: {len(self.duplicate_ids)}")
            if self.duplicate_ids:
                details.append(f"  ids in more than one split: {_shown(self.duplicate_ids)}")
        lines += details
        lines += [f"  cache of {split}: {report.cache}" for split, report in self.splits.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------- cache folders


def _read_index(folder: Path) -> dict | None:
    try:
        return json.loads((folder / INDEX_FILE).read_text())
    except (OSError, ValueError):
        return None


class CachedSource:
    """Rows of a prepared cache in the order of some pairs (see :class:`data.dataset.Source`):
    ``load`` returns a uint8 RGB image ``(S, S, 3)`` and a uint8 mask ``(S, S)`` in ``{0, 1}``.
    """

    def __init__(self, folder: Path, rows: Sequence[int], ids: Sequence[str]) -> None:
        self.folder = folder
        self.rows = list(rows)
        self.ids = list(ids)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        # A memory map pickles as its whole contents: DataLoader workers reopen it instead.
        return {**self.__dict__, "_arrays": None}

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.load(self.folder / IMAGES_FILE, mmap_mode="r"),
                            np.load(self.folder / MASKS_FILE, mmap_mode="r"))
        images, masks = self._arrays
        row = self.rows[index]
        # Copies: the maps are read-only and transforms may write in place.
        return np.array(images[row]), np.array(masks[row])


class PreparedCache:
    """A complete cache folder: its ids and image paths in row order, and its size."""

    def __init__(self, folder: Path) -> None:
        index = _read_index(folder)
        if index is None:
            raise DatasetError(f"{folder} is not a complete preparation cache; delete it")
        self.folder = folder
        self.img_size: int = index["img_size"]
        self.ids: list[str] = index["ids"]
        self._rows = {path: row for row, path in enumerate(index["images"])}

    def __len__(self) -> int:
        return len(self.ids)

    def source(self, pairs: Sequence[Pair]) -> CachedSource:
        """The cached samples of ``pairs`` (a subset of the cached split), in their order."""
        try:
            rows = [self._rows[str(pair.image.resolve())] for pair in pairs]
        except KeyError as exc:
            raise DatasetError(f"{exc.args[0]} is not in the cache {self.folder}; prepare the "
                               "split it belongs to, or pass --no-cache") from None
        return CachedSource(self.folder, rows, [pair.id for pair in pairs])


def _write_arrays(tmp: Path, pairs: Sequence[Pair], img_size: int, workers: int,
                  progress: str | None, report: SplitReport) -> None:
    """Decode ``pairs`` into ``tmp``'s arrays, recording findings in ``report``; ``progress``
    is the label of the progress bar, ``None`` for none."""
    shape = (len(pairs), img_size, img_size)
    images = np.lib.format.open_memmap(tmp / IMAGES_FILE, "w+", np.uint8, (*shape, 3))
    masks = np.lib.format.open_memmap(tmp / MASKS_FILE, "w+", np.uint8, shape)
    bar = tqdm(decode_all(pairs, img_size, workers), total=len(pairs), unit="img",
               desc=progress, disable=progress is None, leave=False)
    for row, (pair, item) in enumerate(zip(pairs, bar)):
        if item.problem is not None:
            getattr(report, item.problem[0]).append(item.problem[1])
            continue
        images[row], masks[row] = item.image, item.mask
        if item.grey:
            report.grey_masks.append(pair.id)
    images.flush()
    masks.flush()


def _build(folder: Path, pairs: Sequence[Pair], img_size: int, index: dict, workers: int,
           progress: str | None, report: SplitReport) -> None:
    """Write the cache of ``pairs`` to ``folder`` atomically, unless a file is unusable."""
    tmp = folder.parent / f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(parents=True)
    except OSError as exc:
        raise DatasetError(f"cannot write the preparation cache in {folder.parent} ({exc}); "
                           "pass --cache-dir with a writable folder, or --no-cache") from None
    started = time.perf_counter()
    try:
        _write_arrays(tmp, pairs, img_size, workers, progress, report)
        if any(getattr(report, name) for name in ERROR_FIELDS):
            report.cache = "not written (unusable files)"
            return
        seconds = time.perf_counter() - started
        index.update(grey_masks=report.grey_masks, seconds=round(seconds, 2))
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1))
        try:
            tmp.rename(folder)
        except OSError:
            if _read_index(folder) is None:  # not another process's finished copy
                raise
        report.cache = f"{folder} (built in {seconds:.1f} s)"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_superseded(cache_root: Path, keep: Path, root: str, split: str,
                       img_size: int) -> None:
    """Delete the caches of the same data folder, split and size other than ``keep``, and those
    whose data folder is gone."""
    for folder in cache_root.iterdir():
        index = None if folder == keep else _read_index(folder)
        if index is None:  # also temporary folders, and anything that is not a cache
            continue
        same = (index.get("root"), index.get("split"), index.get("img_size")) == (
            root, split, img_size)
        if same or not Path(index.get("root", "")).is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _prepare_split(root: Path, split: str, pairs: Sequence[Pair], img_size: int,
                   cache_root: Path, workers: int, progress: bool,
                   report: SplitReport) -> Path:
    """Reuse or build the cache of one split; returns its folder (which may be unwritten)."""
    key = fingerprint(pairs, img_size)
    folder = cache_root / f"{root.name}-{split}-{img_size}px-{key}"
    index = _read_index(folder)
    if index is not None:
        report.grey_masks = index["grey_masks"]
        report.cache = f"{folder} (reused)"
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # an unreadable index: start again
    index = {"version": CACHE_VERSION, "img_size": img_size, "fingerprint": key,
             "root": str(root), "split": split, "ids": [pair.id for pair in pairs],
             "images": [str(pair.image.resolve()) for pair in pairs]}
    label = f"preparing {split} at {img_size}px" if progress else None
    _build(folder, pairs, img_size, index, workers, label, report)
    if folder.is_dir():
        _remove_superseded(cache_root, folder, str(root), split, img_size)
    return folder


def prepare_splits(root: str | Path, splits: Sequence[str], img_size: int, *,
                   skip_unpaired: bool = False, cache_root: str | Path = DEFAULT_CACHE_ROOT,
                   workers: int | None = None, progress: bool = True,
                   log: Log | None = print) -> dict[str, PreparedCache]:
    """Scan ``splits`` of the data folder ``root`` and reuse or build their caches.

    Args:
        root: a data folder in one of the layouts of :mod:`data.layouts`.
        splits: e.g. ``("train",)`` or ``("train", "val")``.
        img_size: the square size ``S`` in pixels.
        skip_unpaired: as in :func:`data.layouts.find_pairs`.
        cache_root: the folder holding the caches (created when missing).
        workers: decoding processes; all cores by default.
        progress: show a progress bar while decoding.
        log: receives the scan report (one multi-line string); ``None`` for silence.

    Returns:
        ``{split: PreparedCache}``.

    Raises:
        DatasetError: the folder or a split is missing or unpaired (from ``find_pairs``), the
            cache root is not writable, or files are unreadable or of mismatched sizes (after
            the report is logged; no cache is written for such a split).
    """
    root = Path(root).resolve()
    cache_root = Path(cache_root)
    workers = workers or os.cpu_count() or 1
    pairs = {split: find_pairs(root, split, skip_unpaired=skip_unpaired) for split in splits}
    reports, folders = {}, {}
    for split, split_pairs in pairs.items():
        report = SplitReport(len(split_pairs), *unpaired_files(root, split, split_pairs))
        folders[split] = _prepare_split(root, split, split_pairs, img_size, cache_root, workers,
                                        progress, report)
        reports[split] = report
    counts = Counter(pair.id for split_pairs in pairs.values() for pair in split_pairs)
    scan = ScanReport(root, img_size, reports, sorted(i for i, n in counts.items() if n > 1))
    if log is not None:
        log(scan.format())
    errors = scan.errors()
    if errors:
        shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3
                                         else "")
        raise DatasetError(f"{len(errors)} unusable sample(s) in {root} (see the scan report): "
                           f"{shown}")
    return {split: PreparedCache(folder) for split, folder in folders.items()}

