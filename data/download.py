"""Download, check and safely extract the official ISIC challenge zips.

All file names, reported sizes and checksums live in one table, :data:`ISIC_FILES`, keyed by
``(year, split)``. Each zip unpacks to a folder of the same name under the destination folder,
e.g. ``data/ISIC2018/ISIC2018_Task1-2_Training_Input/``.

Downloads go to ``<name>.part`` and resume with an HTTP ``Range`` request when restarted. The
finished zip is checked against the reported size and MD5 (where known), its entries are checked
for unsafe paths, and it is extracted to a temporary folder that is renamed when complete.
Failures raise :class:`DownloadError` with a one-line message saying what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import socket
import stat
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from common.errors import UserError

DEFAULT_BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/{year}/"
DEFAULT_SPLITS = ("train", "val")
CHUNK_SIZE = 1 << 20
USER_AGENT = "isic-unet-downloader/0.1"
NETWORK_ERRORS = (
    urllib.error.URLError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
    socket.timeout,
)

Log = Callable[[str], None]


class DownloadError(UserError, RuntimeError):
    """A download, check or extraction failed; the message says which file and what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """One official zip: its file name and, where reported, its size in bytes and MD5."""

    name: str
    size: int | None = None
    md5: str | None = None

    @property
    def folder(self) -> str:
        """The folder the zip unpacks to (its name without ``.zip``)."""
        return self.name.removesuffix(".zip")


@dataclass(frozen=True)
class SplitFiles:
    """The images zip and the masks zip of one (year, split)."""

    images: RemoteFile
    masks: RemoteFile

    @property
    def files(self) -> tuple[RemoteFile, RemoteFile]:
        """Both zips, images first."""
        return (self.images, self.masks)


# The single table of official files. Sizes and MD5s are the values other public loaders report
# (2018 sizes, 2017 MD5s), not checked against the bucket; None means "not known, not checked".
ISIC_FILES: dict[tuple[int, str], SplitFiles] = {
    (2018, "train"): SplitFiles(
        RemoteFile("ISIC2018_Task1-2_Training_Input.zip"),
        RemoteFile("ISIC2018_Task1_Training_GroundTruth.zip", size=27_402_895),
    ),
    (2018, "val"): SplitFiles(
        RemoteFile("ISIC2018_Task1-2_Validation_Input.zip", size=239_231_159),
        RemoteFile("ISIC2018_Task1_Validation_GroundTruth.zip", size=759_706),
    ),
    (2018, "test"): SplitFiles(
        RemoteFile("ISIC2018_Task1-2_Test_Input.zip"),
        RemoteFile("ISIC2018_Task1_Test_GroundTruth.zip"),
    ),
    (2017, "train"): SplitFiles(
        RemoteFile("ISIC-2017_Training_Data.zip", md5="a14a7e622c67a358797ae59abb8a0b0c"),
        RemoteFile(
            "ISIC-2017_Training_Part1_GroundTruth.zip", md5="77fdbeb6fbec4139937224416b250f4c"
        ),
    ),
    (2017, "val"): SplitFiles(
        RemoteFile("ISIC-2017_Validation_Data.zip", md5="8d6419d942112f709894c0d82f6c9038"),
        RemoteFile(
            "ISIC-2017_Validation_Part1_GroundTruth.zip", md5="64d3e68fa2deeb8a5e89aa8dec2efd44"
        ),
    ),
    (2017, "test"): SplitFiles(
        RemoteFile("ISIC-2017_Test_v2_Data.zip", md5="5f6a0b5e1f2972bd1f5ea02680489f09"),
        RemoteFile(
            "ISIC-2017_Test_v2_Part1_GroundTruth.zip", md5="b1742de6bd257faca3b2b21a4aa3b781"
        ),
    ),
    (2016, "train"): SplitFiles(
        RemoteFile("ISBI2016_ISIC_Part1_Training_Data.zip"),
        RemoteFile("ISBI2016_ISIC_Part1_Training_GroundTruth.zip"),
    ),
    (2016, "test"): SplitFiles(
        RemoteFile("ISBI2016_ISIC_Part1_Test_Data.zip"),
        RemoteFile("ISBI2016_ISIC_Part1_Test_GroundTruth.zip"),
    ),
}

Table = Mapping[tuple[int, str], SplitFiles]


# --------------------------------------------------------------------------- table look-ups


def available_splits(year: int, table: Table | None = None) -> list[str]:
    """The splits known for ``year`` (e.g. 2016 has no ``val``)."""
    table = ISIC_FILES if table is None else table
    return [split for (y, split) in table if y == year]


def resolve_splits(
    year: int, splits: Iterable[str] | None = None, table: Table | None = None
) -> list[SplitFiles]:
    """Look up the files of ``splits`` for ``year``.

    ``None`` means the default splits (train and val) that exist for that year.
    """
    table = ISIC_FILES if table is None else table
    known = available_splits(year, table)
    if not known:
        years = ", ".join(str(y) for y in sorted({y for (y, _) in table}))
        raise DownloadError(f"no ISIC files known for year {year}; known years: {years}")
    wanted = [s for s in DEFAULT_SPLITS if s in known] if splits is None else list(splits)
    missing = [s for s in wanted if s not in known]
    if missing:
        raise DownloadError(
            f"ISIC {year} has no split(s) {', '.join(missing)}; available: {', '.join(known)}"
        )
    return [table[(year, s)] for s in dict.fromkeys(wanted)]


def file_url(base_url: str | None, year: int, name: str) -> str:
    """URL of ``name``: ``base_url`` (may contain ``{year}``) joined with the file name."""
    base = (base_url or DEFAULT_BASE_URL).replace("{year}", str(year))
    return base.rstrip("/") + "/" + urllib.request.quote(name)


# --------------------------------------------------------------------------- downloading


def part_path(dest: Path) -> Path:
    """The file a download of ``dest`` is written to until it is complete."""
    return dest.with_name(dest.name + ".part")


def download_file(
    url: str,
    dest: Path,
    *,
    size_hint: int | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming a partial ``.part`` file.

    ``size_hint`` (the expected size, if known) lets a ``.part`` file that is already complete
    be used without a request. On a network failure the ``.part`` file is kept and
    :class:`DownloadError` says to rerun; running again resumes with ``Range: bytes=N-``.
    """
    part = part_path(dest)
    try:
        _download_to_part(url, part, size_hint, timeout, progress)
    except urllib.error.HTTPError as err:
        raise DownloadError(_http_error_message(dest.name, url, err)) from err
    except NETWORK_ERRORS as err:
        raise DownloadError(_network_error_message(dest.name, url, part, err, timeout)) from err
    part.replace(dest)
    return dest


def _download_to_part(
    url: str, part: Path, size_hint: int | None, timeout: float, progress: bool
) -> None:
    """Fetch the missing bytes of ``url`` into ``part``."""
    offset = part.stat().st_size if part.exists() else 0
    if offset and size_hint is not None and offset == size_hint:
        return  # a previous run finished the transfer but did not rename the file
    response, offset = _open_resumable(url, offset, timeout)
    if response is None:
        return
    with response:
        _stream(response, part, offset, progress)


def _request(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Open ``url``, asking for the bytes from ``offset`` on when it is non-zero."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _open_resumable(
    url: str, offset: int, timeout: float
) -> tuple[http.client.HTTPResponse | None, int]:
    """Open ``url`` to continue from ``offset``; returns the response and the actual offset.

    A server that answers 200 instead of 206 (or a 206 for other bytes) restarts from zero.
    A 416 whose total equals ``offset`` means the file is complete: returns ``(None, offset)``.
    """
    if not offset:
        return _request(url, 0, timeout), 0
    try:
        response = _request(url, offset, timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416:
            raise
        total = _content_range(err.headers.get("Content-Range"))[1]
        err.close()
        if total == offset:
            return None, offset
        return _request(url, 0, timeout), 0
    start = _content_range(response.headers.get("Content-Range"))[0]
    if response.status == 206 and start == offset:
        return response, offset
    if response.status == 200:
        return response, 0
    response.close()
    return _request(url, 0, timeout), 0


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse ``bytes START-END/TOTAL`` or ``bytes */TOTAL`` into (start, total)."""
    match = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _stream(response: http.client.HTTPResponse, part: Path, offset: int, progress: bool) -> None:
    """Write the body of ``response`` to ``part`` (appending after ``offset`` bytes)."""
    length = response.headers.get("Content-Length")
    remaining = int(length) if length and length.isdigit() else None
    total = offset + remaining if remaining is not None else None
    received = 0
    bar = tqdm(
        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
        desc=part.name.removesuffix(".part"), disable=not progress,
    )
    with bar, part.open("ab" if offset else "wb") as fh:
        while chunk := response.read(CHUNK_SIZE):
            fh.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
    if remaining is not None and received < remaining:
        raise ConnectionError(f"connection closed after {received} of {remaining} bytes")


def _one_line(text: object) -> str:
    """``text`` as a single line."""
    return " ".join(str(text).split())


def _network_error_message(
    name: str, url: str, part: Path, err: BaseException, timeout: float
) -> str:
    """One actionable line for a network failure while downloading ``name``."""
    cause = err.reason if isinstance(err, urllib.error.URLError) else err
    reason = _one_line(cause) or type(cause).__name__
    if "timed out" in reason:
        reason += f" (timeout {timeout:g}s)"
    size = part.stat().st_size if part.exists() else 0
    kept = f"partial file kept ({size} bytes in {part})" if size else "no data was saved"
    return (
        f"download of {name} from {url} failed: {reason}; {kept}; "
        "rerun the same command to resume"
    )


def _http_error_message(name: str, url: str, err: urllib.error.HTTPError) -> str:
    """One actionable line for an HTTP error status."""
    status = f"HTTP {err.code} {_one_line(err.reason)}"
    if err.code in (403, 404):
        hint = "check --year/--splits and --base-url (mirror URL)"
    else:
        hint = "rerun the same command later to resume"
    return f"download of {name} from {url} failed: {status}; {hint}"


# --------------------------------------------------------------------------- verification


def md5sum(path: Path) -> str:
    """The hex MD5 digest of the file at ``path``."""
    digest = hashlib.md5()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected: RemoteFile) -> None:
    """Check ``path`` against the size and MD5 of ``expected`` where they are known."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise DownloadError(_mismatch(path, "size", f"{expected.size} bytes", f"{size} bytes"))
    if expected.md5:
        got = md5sum(path)
        if got != expected.md5.lower():
            raise DownloadError(_mismatch(path, "MD5", expected.md5.lower(), got))


def _mismatch(path: Path, what: str, expected: str, got: str) -> str:
    """One actionable line for a failed size or checksum check."""
    return (
        f"{path.name}: {what} mismatch, expected {expected} (reported), got {got}; not extracted. "
        f"Delete {path} and rerun to download it again, or rerun with --no-verify "
        "to accept the file as it is"
    )


# --------------------------------------------------------------------------- extraction


def unsafe_entries(zf: zipfile.ZipFile) -> list[str]:
    """Describe every entry of ``zf`` that is absolute, has a ``..`` component or is a symlink."""
    found = []
    for info in zf.infolist():
        reason = _unsafe_reason(info)
        if reason:
            found.append(f"{info.filename!r} ({reason})")
    return found


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why the entry ``info`` must not be extracted, or None when it is safe."""
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[\\/]", name):
        return "'..' component"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symlink"
    return None


def check_zip_entries(zf: zipfile.ZipFile, root: Path, zip_name: str) -> None:
    """Refuse (naming them) all entries of ``zf`` that would not land inside ``root``."""
    bad = unsafe_entries(zf)
    base = root.resolve()
    for info in zf.infolist():
        target = (base / info.filename).resolve()
        outside = target != base and base not in target.parents
        if outside and _unsafe_reason(info) is None:
            bad.append(f"{info.filename!r} (outside the destination)")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DownloadError(
            f"refusing to extract {zip_name}: unsafe entries {shown}; nothing was extracted"
        )


def extract_zip(zip_path: Path, dest_dir: Path) -> Path:
    """Safely extract ``zip_path`` into ``dest_dir / <zip name without .zip>`` and return it.

    All entries are checked before any is written; the zip is extracted into
    ``<folder>.extracting`` and renamed to ``<folder>`` only when complete.
    """
    target = dest_dir / zip_path.name.removesuffix(".zip")
    tmp = dest_dir / f"{target.name}.extracting"
    if target.exists():
        return target
    try:
        with zipfile.ZipFile(zip_path) as zf:
            check_zip_entries(zf, tmp, zip_path.name)
            shutil.rmtree(tmp, ignore_errors=True)
            zf.extractall(tmp)
    except zipfile.BadZipFile as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DownloadError(
            f"{zip_path.name} is not a valid zip ({_one_line(err)}); "
            f"delete {zip_path} and rerun to download it again"
        ) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _promote(tmp, target)
    return target


def _promote(tmp: Path, target: Path) -> None:
    """Rename the extracted folder into place (unwrapping ``tmp/<folder>`` when present)."""
    inner = tmp / target.name
    others = [p for p in tmp.iterdir() if p.name not in (target.name, "__MACOSX")]
    if inner.is_dir() and not others:
        inner.rename(target)
        shutil.rmtree(tmp)
    else:
        tmp.rename(target)


# --------------------------------------------------------------------------- whole data set


def fetch_file(
    remote: RemoteFile,
    url: str,
    dest_dir: Path,
    *,
    verify: bool = True,
    keep_zip: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    log: Log = print,
) -> Path:
    """Download (or reuse), check and extract one zip; returns the extracted folder."""
    zip_path = dest_dir / remote.name
    if zip_path.exists():
        log(f"{remote.name} already downloaded, reusing it")
    else:
        log(f"Downloading {url}")
        download_file(url, zip_path, size_hint=remote.size, timeout=timeout, progress=progress)
    if verify and (remote.size is not None or remote.md5):
        log(f"Checking {remote.name}")
        verify_file(zip_path, remote)
    log(f"Extracting {remote.name} -> {dest_dir / remote.folder}")
    target = extract_zip(zip_path, dest_dir)
    if not keep_zip:
        zip_path.unlink()
        log(f"Deleted {zip_path} (use --keep-zips to keep it)")
    return target


def fetch_isic(
    year: int,
    dest: Path,
    splits: Iterable[str] | None = None,
    *,
    base_url: str | None = None,
    verify: bool = True,
    keep_zips: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    table: Table | None = None,
    log: Log = print,
) -> list[Path]:
    """Download and extract the images and masks of ``splits`` of ISIC ``year`` into ``dest``.

    Folders already extracted are skipped. ``table`` replaces :data:`ISIC_FILES` (tests,
    mirrors with other files). Returns the extracted folders.
    """
    files = [f for split in resolve_splits(year, splits, table) for f in split.files]
    folders, skipped = [], 0
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for remote in files:
            target = dest / remote.folder
            if target.is_dir():
                log(f"{remote.folder} already extracted, skipping")
                skipped += 1
            else:
                url = file_url(base_url, year, remote.name)
                target = fetch_file(
                    remote, url, dest, verify=verify, keep_zip=keep_zips, progress=progress,
                    timeout=timeout, log=log,
                )
            folders.append(target)
    except OSError as err:  # the network's errors are DownloadErrors already: this is the disk
        raise DownloadError(f"cannot write {err.filename or dest}: {err.strerror or err}; free "
                            "some disk space or choose another --dest, then rerun to resume"
                            ) from err
    if skipped == len(files):
        log(f"Nothing to do: all {len(files)} folders are already in place in {dest}")
    return folders
