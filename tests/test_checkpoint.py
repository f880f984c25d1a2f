"""Tests of models/checkpoint.py: training checkpoints and the safetensors release format."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)

# ---------------------------------------------------------------- checkpoints


def test_save_checkpoint_round_trip_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "ckpt.pt"
    weights = torch.arange(6.0).reshape(2, 3)
    save_checkpoint({"weights": weights, "epoch": 1}, path)
    save_checkpoint({"weights": weights * 2, "epoch": 2}, path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and torch.equal(loaded["weights"], weights * 2)
    assert loaded["format"] == CHECKPOINT_FORMAT


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   interruption: BaseException) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    previous = path.read_bytes()

    def save_half_then_fail(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a zip archive")  # type: ignore[attr-defined]
        raise interruption

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(type(interruption)):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class CreatesMarker:
    """Unpickling this runs ``os.mkdir(marker)``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def test_load_refuses_pickled_code(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "x": CreatesMarker(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    # The file really is dangerous: an unsafe load would have run the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_checkpoint_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="train.py") as info:
        load_checkpoint(tmp_path / "missing.pt")
    assert "missing.pt" in str(info.value)


def test_load_refuses_foreign_checkpoints(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(CheckpointError, match="plain.pt.*train.py"):
        load_checkpoint(plain)
    newer = tmp_path / "newer.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match="newer version"):
        load_checkpoint(newer)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_checkpoints_are_created_with_the_users_umask(tmp_path: Path, umask: int,
                                                      mode: int) -> None:
    previous = os.umask(umask)
    try:
        path = save_checkpoint({"epoch": 1}, tmp_path / "best.pt")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode
