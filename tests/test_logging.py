"""Tests of the run's logging: W&B without a network (simulated on 127.0.0.1, nothing leaves
the machine), W&B failing mid-run, and the local metrics record and its curves."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import train
from tests.conftest import TINY_TRAIN_ARGS
from training.record import MetricsRecord, read_record
from training.wandb_log import PROBE_SECONDS

FAKE_KEY = "f" * 40


def tiny_args(data: Path, checkpoint_dir: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--checkpoint-dir", str(checkpoint_dir), *TINY_TRAIN_ARGS,
            *extra]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections but never answers: a service that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


@pytest.fixture
def refusing_service() -> Iterator[int]:
    """An HTTP server that answers every request with 404: reachable, but no W&B."""

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Credentials present (as `wandb login` leaves them), no WANDB_MODE, runs under tmp_path."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("service, says", [
    ("refused", "cannot be reached"),  # no route: connections refused
    ("silent_server", "cannot be reached"),  # connections accepted, never answered
    ("refusing_service", "could not start online"),  # answers, but is no W&B
])
def test_wandb_that_cannot_reach_its_service_trains_offline_without_waiting(
        synthetic_root: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, request: pytest.FixtureRequest, service: str,
        says: str) -> None:
    port = closed_port() if service == "refused" else request.getfixturevalue(service)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")  # bounds the third case; 15 s by default
    started = time.perf_counter()
    assert train.main(tiny_args(synthetic_root, wandb_env / "out", "--wandb")) == 0
    seconds = time.perf_counter() - started

    out = capsys.readouterr().out
    assert says in out and "wandb sync" in out, out
    assert len(offline_runs(wandb_env)) == 1
    # W&B's own retries would wait 90 s and more; the probe gives up after a few seconds.
    assert seconds < PROBE_SECONDS + 45, f"{seconds:.0f} s"
    assert [row["epoch"] for row in read_record(wandb_env / "out" / "metrics.jsonl")] == [1]


def test_a_wandb_error_mid_run_is_reported_once_and_training_goes_on(
        synthetic_root: Path, wandb_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    calls = []

    def full_disk(self, *args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(wandb.Run, "log", full_disk)
    assert train.main(tiny_args(synthetic_root, wandb_env / "out", "--wandb", "--epochs", "2",
                                "--log-interval", "1")) == 0
    err = capsys.readouterr().err
    assert err.count("W&B: cannot log") == 1 and "No space left" in err, err
    assert len(calls) == 1  # given up after the first failure
    record = read_record(wandb_env / "out" / "metrics.jsonl")
    assert [row["epoch"] for row in record] == [1, 2]


def test_the_record_has_every_epoch_and_the_curves_are_drawn(synthetic_root: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert train.main(tiny_args(synthetic_root, out, "--epochs", "3")) == 0
    rows = read_record(out / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert {"train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds",
                "images_per_second", "step", "time"} <= set(row)
        assert 0 <= row["val_iou"] <= row["val_dice"] <= 1 and row["images_per_second"] > 0
    assert rows[-1]["step"] == 3 * rows[0]["step"]
    curves = (out / "curves.png").read_bytes()
    assert curves.startswith(b"\x89PNG") and len(curves) > 5000


def test_a_resumed_record_drops_the_epochs_after_its_checkpoint(tmp_path: Path) -> None:
    record = MetricsRecord(tmp_path)
    for epoch in (1, 2, 3):
        record.append({"epoch": epoch, "val_dice": 0.5})
    record.keep_until(2)
    assert [row["epoch"] for row in read_record(record.path)] == [1, 2]
    record.append({"epoch": 3, "val_dice": 0.6})
    rows = [json.loads(line) for line in record.path.read_text().splitlines()]
    assert [(row["epoch"], row["val_dice"]) for row in rows] == [(1, 0.5), (2, 0.5), (3, 0.6)]
    MetricsRecord(tmp_path / "none").keep_until(0)  # no record yet: nothing to do
    assert MetricsRecord(tmp_path / "none").plot() is None
