"""Tests of the ISIC downloader against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from data import download
from data.download import (
    DownloadError,
    RemoteFile,
    SplitFiles,
    download_file,
    extract_zip,
    fetch_isic,
    part_path,
    resolve_splits,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "download_isic.py"
IMAGES = "ISIC2018_Task1-2_Training_Input"
MASKS = "ISIC2018_Task1_Training_GroundTruth"


# --------------------------------------------------------------------------- helpers


def make_zip(entries: dict[str, bytes], symlinks: tuple[str, ...] = ()) -> bytes:
    """A stored (uncompressed) zip holding ``entries``; names in ``symlinks`` are symlinks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            mode = (stat.S_IFLNK | 0o777) if name in symlinks else (stat.S_IFREG | 0o644)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


def official_zips() -> dict[str, bytes]:
    """Tiny 2018 training zips in the official layout (each unpacks to a same-name folder)."""
    image = os.urandom(64 * 1024)  # random, so that the zip is not tiny and cuts are mid-file
    return {
        f"{IMAGES}.zip": make_zip({
            f"{IMAGES}/ISIC_0000000.jpg": image,
            f"{IMAGES}/LICENSE.txt": b"CC0\n",
            f"{IMAGES}/ATTRIBUTION.txt": b"ISIC Archive\n",
        }),
        f"{MASKS}.zip": make_zip({f"{MASKS}/ISIC_0000000_segmentation.png": b"\x89PNG mask"}),
    }


def table_for(zips: dict[str, bytes], **override: str) -> dict[tuple[int, str], SplitFiles]:
    """A download table with the real sizes and MD5s of ``zips`` (``override``: name -> md5)."""
    def remote(name: str) -> RemoteFile:
        md5 = override.get(name, hashlib.md5(zips[name]).hexdigest())
        return RemoteFile(name, size=len(zips[name]), md5=md5)

    return {(2018, "train"): SplitFiles(remote(f"{IMAGES}.zip"), remote(f"{MASKS}.zip"))}


def all_files(root: Path) -> set[Path]:
    """Every file and symlink under ``root``."""
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; supports ``Range: bytes=N-`` (206/416), cuts and stalls."""

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        srv = self.server
        name = unquote(self.path.lstrip("/"))
        rng = self.headers.get("Range")
        srv.requests.append((name, rng))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        if name in srv.stall:
            time.sleep(0.5)
        start = int(re.match(r"bytes=(\d+)-", rng).group(1)) if rng and not srv.ignore_range else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_body(name, data, start, partial=bool(rng) and not srv.ignore_range)

    def _send_body(self, name: str, data: bytes, start: int, partial: bool) -> None:
        body = data[start:]
        self.send_response(206 if partial else 200)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))  # the full length, even when cut
        self.end_headers()
        if name in self.server.cut:
            self.server.cut.discard(name)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hang up mid-transfer on purpose here; socketserver would print each
        traceback to stderr, where the tests read the downloader's one-line errors."""


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1 serving ``official_zips()``."""
    srv = _QuietServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = official_zips()
    srv.requests, srv.cut, srv.stall, srv.ignore_range = [], set(), set(), False
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def closed_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def cli():
    """The script's module, loaded in-process."""
    spec = importlib.util.spec_from_file_location("download_isic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fetch(server, dest: Path, logs: list[str] | None = None, **kwargs) -> list[Path]:
    """``fetch_isic`` for 2018 train from ``server`` with the real sizes/MD5s of its zips."""
    kwargs.setdefault("table", table_for(server.files))
    return fetch_isic(
        2018, dest, ["train"], base_url=server.url, progress=False,
        log=(logs if logs is not None else []).append, **kwargs,
    )


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("keep_zips", [False, True])
def test_full_download_and_extraction(server, tmp_path: Path, keep_zips: bool) -> None:
    dest = tmp_path / "ISIC2018"
    folders = fetch(server, dest, keep_zips=keep_zips)
    assert folders == [dest / IMAGES, dest / MASKS]
    names = {p.relative_to(dest).as_posix() for p in all_files(dest)}
    expected = {
        f"{IMAGES}/ISIC_0000000.jpg", f"{IMAGES}/LICENSE.txt", f"{IMAGES}/ATTRIBUTION.txt",
        f"{MASKS}/ISIC_0000000_segmentation.png",
    }
    if keep_zips:
        expected |= {f"{IMAGES}.zip", f"{MASKS}.zip"}
    assert names == expected
    with zipfile.ZipFile(io.BytesIO(server.files[f"{IMAGES}.zip"])) as zf:
        original = zf.read(f"{IMAGES}/ISIC_0000000.jpg")
    assert (dest / IMAGES / "ISIC_0000000.jpg").read_bytes() == original
    assert [rng for _, rng in server.requests] == [None, None]


def test_cut_transfer_is_resumed_with_range(server, tmp_path: Path) -> None:
    name = f"{IMAGES}.zip"
    server.cut.add(name)
    dest = tmp_path / "ISIC2018"
    with pytest.raises(DownloadError, match=rf"{re.escape(name)}.*rerun the same command"):
        fetch(server, dest, keep_zips=True)
    part = part_path(dest / name)
    half = len(server.files[name]) // 2
    assert part.stat().st_size == half
    assert not (dest / IMAGES).exists()

    fetch(server, dest, keep_zips=True)
    assert server.requests[-2] == (name, f"bytes={half}-")
    assert (dest / name).read_bytes() == server.files[name]
    assert not part.exists()
    assert (dest / IMAGES / "ISIC_0000000.jpg").is_file()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path) -> None:
    name = f"{MASKS}.zip"
    server.ignore_range = True
    part_path(tmp_path / name).write_bytes(b"stale bytes")
    download_file(server.url + name, tmp_path / name, progress=False)
    assert server.requests == [(name, "bytes=11-")]
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_complete_part_file_is_finished_on_416(server, tmp_path: Path) -> None:
    name = f"{MASKS}.zip"
    part_path(tmp_path / name).write_bytes(server.files[name])
    download_file(server.url + name, tmp_path / name, progress=False)
    assert (tmp_path / name).read_bytes() == server.files[name]


def test_timeout_is_a_clear_error(server, tmp_path: Path) -> None:
    name = f"{MASKS}.zip"
    server.stall.add(name)
    with pytest.raises(DownloadError, match=rf"{re.escape(name)}.*timed out.*rerun"):
        download_file(server.url + name, tmp_path / name, timeout=0.1, progress=False)


def test_checksum_mismatch_is_an_error_and_nothing_is_extracted(server, tmp_path: Path) -> None:
    name = f"{IMAGES}.zip"
    table = table_for(server.files, **{name: "0" * 32})
    dest = tmp_path / "ISIC2018"
    with pytest.raises(DownloadError) as info:
        fetch(server, dest, table=table)
    message = str(info.value)
    got = hashlib.md5(server.files[name]).hexdigest()
    assert name in message and "0" * 32 in message and got in message
    assert "--no-verify" in message and "\n" not in message
    assert not any(p.is_dir() for p in dest.iterdir())  # no folder, not even a temporary one

    fetch(server, dest, table=table, verify=False)  # the override
    assert (dest / IMAGES / "ISIC_0000000.jpg").is_file()


def test_size_mismatch_names_expected_and_got(server, tmp_path: Path) -> None:
    table = table_for(server.files)
    masks = table[(2018, "train")].masks
    table[(2018, "train")] = SplitFiles(
        table[(2018, "train")].images, RemoteFile(masks.name, size=123, md5=masks.md5)
    )
    dest = tmp_path / "ISIC2018"
    got = len(server.files[masks.name])
    expected = rf"{MASKS}\.zip: size mismatch, expected 123 bytes .*got {got} bytes"
    with pytest.raises(DownloadError, match=expected):
        fetch(server, dest, table=table)
    assert not (dest / MASKS).exists()


@pytest.mark.parametrize("bad", ["../evil.txt", "ABSOLUTE", f"{IMAGES}/link"])
def test_unsafe_zip_is_refused(server, tmp_path: Path, bad: str) -> None:
    dest = tmp_path / "deep" / "ISIC2018"
    if bad == "ABSOLUTE":
        bad = str(tmp_path / "evil.txt")
    symlinks = (bad,) if bad.endswith("link") else ()
    entries = {f"{IMAGES}/ISIC_0000000.jpg": b"safe, first", bad: b"../../../evil.txt"}
    data = make_zip(entries, symlinks=symlinks)
    assert bad in zipfile.ZipFile(io.BytesIO(data)).namelist()
    name = f"{IMAGES}.zip"
    server.files[name] = data
    before = all_files(tmp_path)
    with pytest.raises(DownloadError, match=re.escape(repr(bad))):
        fetch(server, dest)
    assert not (dest / IMAGES).exists()
    assert not (dest / f"{IMAGES}.extracting").exists()
    assert all_files(tmp_path) - before == {dest / name}  # only the (kept, unextracted) zip


def test_extract_zip_checks_every_entry_before_writing(tmp_path: Path) -> None:
    zip_path = tmp_path / "dest" / f"{IMAGES}.zip"
    zip_path.parent.mkdir()
    zip_path.write_bytes(make_zip({
        f"{IMAGES}/a.jpg": b"a", "../x.txt": b"x", "/y.txt": b"y", f"{IMAGES}/b.jpg": b"b",
    }))
    with pytest.raises(DownloadError, match=r"'\.\./x\.txt'.*'/y\.txt'.*nothing was extracted"):
        extract_zip(zip_path, zip_path.parent)
    assert all_files(tmp_path) == {zip_path}


def test_second_run_does_nothing_and_says_so(server, tmp_path: Path) -> None:
    dest = tmp_path / "ISIC2018"
    fetch(server, dest)
    requests = len(server.requests)
    logs: list[str] = []
    fetch(server, dest, logs)
    assert len(server.requests) == requests
    assert f"{IMAGES} already extracted, skipping" in logs
    assert f"{MASKS} already extracted, skipping" in logs
    assert any(line.startswith("Nothing to do") for line in logs)


def test_cli_downloads_then_skips(server, tmp_path: Path, cli, monkeypatch, capsys) -> None:
    monkeypatch.setattr(download, "ISIC_FILES", table_for(server.files))
    argv = ["--year", "2018", "--splits", "train", "--dest", str(tmp_path / "d"),
            "--base-url", server.url, "--no-progress"]
    assert cli.main(argv) == 0
    assert (tmp_path / "d" / IMAGES / "LICENSE.txt").is_file()
    capsys.readouterr()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"{IMAGES} already extracted, skipping" in out and "Nothing to do" in out


def test_cli_cut_transfer_one_line_then_resume(server, tmp_path: Path, cli, monkeypatch,
                                               capsys) -> None:
    monkeypatch.setattr(download, "ISIC_FILES", table_for(server.files))
    server.cut.add(f"{IMAGES}.zip")
    argv = ["--splits", "train", "--dest", str(tmp_path), "--base-url", server.url,
            "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "partial file kept" in err[0] and "rerun" in err[0]
    assert cli.main(argv) == 0
    assert (tmp_path / IMAGES / "ISIC_0000000.jpg").is_file()


def test_cli_network_failure_in_process(tmp_path: Path, cli, closed_url: str, capsys) -> None:
    argv = ["--year", "2018", "--dest", str(tmp_path), "--base-url", closed_url, "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: download of ISIC2018_Task1-2_Training_Input.zip")
    assert "rerun the same command" in err[0] and "Traceback" not in err[0]


def test_cli_network_failure_subprocess(tmp_path: Path, closed_url: str) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--year", "2017", "--splits", "val",
         "--dest", str(tmp_path / "ISIC2017"), "--base-url", closed_url],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "ISIC-2017_Validation_Data.zip" in lines[0] and "Traceback" not in result.stderr


def test_splits_and_table() -> None:
    default_2016 = [s.images.name for s in resolve_splits(2016)]
    assert default_2016 == ["ISBI2016_ISIC_Part1_Training_Data.zip"]
    with pytest.raises(DownloadError, match="ISIC 2016 has no split.*val.*available: train, test"):
        resolve_splits(2016, ["val"])
    with pytest.raises(DownloadError, match="known years: 2016, 2017, 2018"):
        resolve_splits(2019)
    val = resolve_splits(2018, ["val"])[0]
    assert (val.images.size, val.masks.size) == (239_231_159, 759_706)
    assert download.file_url(None, 2017, "a.zip") == (
        "https://isic-challenge-data.s3.amazonaws.com/2017/a.zip"
    )
