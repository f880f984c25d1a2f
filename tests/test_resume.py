"""Tests of resuming train.py: after a SIGKILL mid-epoch, and bit-exactly at an epoch boundary."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from models import build_model
from models.checkpoint import load_checkpoint
from tests.conftest import TINY_TRAIN_ARGS
from training.record import read_record
from training.schedule import lr_at
from training.step import Optimisation

TRAIN_PY = Path(train.__file__).resolve()
EPOCHS = 3
# The tiny synthetic set holds 24 training pairs, 2 of them held out: 22 // 4 steps of 4.
STEPS_PER_EPOCH = 5
# 128 px and 2 images per step make an epoch last about half a second on a CPU: long enough to
# kill the process while epoch 2 runs, after last.pt of epoch 1 appeared.
SLOW_EPOCH_ARGS = [*TINY_TRAIN_ARGS, "--img-size", "128", "--batch-size", "2",
                   "--epochs", str(EPOCHS)]


def train_env(cwd: Path) -> dict[str, str]:
    """One thread per run, and W&B offline runs under ``cwd/wandb``, each with its own W&B
    service (not one that a test in this process started)."""
    env = {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(cwd),
            "WANDB_SILENT": "true"}


def kill_during_epoch_2(proc: subprocess.Popen, last: Path, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as epoch 1's last.pt exists (it is written atomically, so it
    exists only complete)."""
    deadline = time.monotonic() + timeout
    while not last.exists():
        if proc.poll() is not None:
            pytest.fail(f"train.py exited early:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("train.py wrote no last.pt in time")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def printed_lrs(stdout: str) -> dict[int, str]:
    """Epoch -> the learning rate its summary line printed."""
    return {int(m[1]): m[2] for m in re.finditer(r"^epoch (\d+)/\d+ .* lr (\S+) ", stdout, re.M)}


def test_sigkill_mid_epoch_then_resume_finishes_the_same_schedule_and_wandb_run(
        synthetic_root: Path, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    last = ckpt_dir / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN_PY), "--data", str(synthetic_root), "--checkpoint-dir",
         str(ckpt_dir), "--cache-dir", str(tmp_path / "cache"), "--wandb", *SLOW_EPOCH_ARGS],
        cwd=tmp_path, env=train_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    kill_during_epoch_2(proc, last)
    assert proc.returncode == -signal.SIGKILL

    # What was written before the kill is complete, loadable, and alone (no temp files).
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    assert len(read_record(ckpt_dir / "metrics.jsonl")) >= load_checkpoint(last)["epoch"]
    before = load_checkpoint(last)
    # Normally epoch 1; on a loaded machine the poll may only see a later epoch's last.pt.
    killed_after = before["epoch"]
    assert 1 <= killed_after < EPOCHS
    best = load_checkpoint(ckpt_dir / "best.pt")
    build_model(best["model_config"]).load_state_dict(best["model"])
    steps_per_epoch = before["step"] // killed_after
    assert steps_per_epoch > 1 and before["wandb_id"]

    resumed = subprocess.run([sys.executable, str(TRAIN_PY), "--resume", str(last)],
                             cwd=tmp_path, env=train_env(tmp_path), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    after = load_checkpoint(last)
    args = argparse.Namespace(**after["args"])
    assert after["epoch"] == EPOCHS and after["step"] == EPOCHS * steps_per_epoch
    assert after["metrics"]["lr"] == lr_at(1.0, args)
    assert before["metrics"]["lr"] == lr_at(killed_after / EPOCHS, args)
    # The resumed run redoes the killed epoch from its start and anneals on the original plan.
    assert printed_lrs(resumed.stdout) == {
        epoch: f"{lr_at(epoch / EPOCHS, args):.2e}"
        for epoch in range(killed_after + 1, EPOCHS + 1)}

    assert after["wandb_id"] == before["wandb_id"]
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run.name.endswith(f"-{before['wandb_id']}") for run in runs)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [
        "best.pt", "curves.png", "last.pt", "metrics.jsonl"]
    # The record holds each epoch once: those before the kill, then the resumed ones.
    record = read_record(ckpt_dir / "metrics.jsonl")
    assert [row["epoch"] for row in record] == list(range(1, EPOCHS + 1))
    assert record[-1]["val_dice"] == after["metrics"]["val_dice"]


def interrupt_after(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Press Ctrl-C (SIGINT to this process) during the training step number ``steps``."""
    step = Optimisation.step
    taken = 0

    def step_then_interrupt(self, *args, **kwargs):
        nonlocal taken
        taken += 1
        if taken == steps:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, *args, **kwargs)
    monkeypatch.setattr(Optimisation, "step", step_then_interrupt)


def assert_same_run(expected: dict, actual: dict) -> None:
    assert actual["epoch"] == expected["epoch"] and actual["step"] == expected["step"]
    assert expected["model"].keys() == actual["model"].keys()
    different = [name for name, tensor in expected["model"].items()
                 if not torch.equal(tensor, actual["model"][name])]
    assert not different, f"resumed weights differ from an uninterrupted run: {different}"
    for key in ("val_loss", "val_dice", "train_loss", "lr"):
        assert actual["metrics"][key] == expected["metrics"][key], key


@pytest.mark.parametrize("stop_at_step", [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 2])
def test_ctrl_c_saves_and_resuming_gives_the_same_weights(
        synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture, stop_at_step: int) -> None:
    # Stopped in the last step of epoch 1 (it ends that epoch, validates and saves), or two
    # steps into epoch 2 (it saves mid-epoch): either way the resumed run ends bit-identical
    # to one that was never stopped.
    common = ["--data", str(synthetic_root), "--cache-dir", str(tmp_path / "cache"),
              *TINY_TRAIN_ARGS, "--epochs", "2", "--batch-size", "4", "--seed", "0"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert train.main([*common, "--checkpoint-dir", str(straight)]) == 0
    assert load_checkpoint(straight / "last.pt")["step"] == 2 * STEPS_PER_EPOCH

    interrupt_after(monkeypatch, stop_at_step)
    capsys.readouterr()
    assert train.main([*common, "--checkpoint-dir", str(stopped)]) == 128 + signal.SIGINT
    monkeypatch.undo()
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("stopped by SIGINT") and "--resume" in message, message
    saved = load_checkpoint(stopped / "last.pt")
    assert saved["step"] == stop_at_step
    assert (saved["epoch"], saved["epoch_images"]) == (
        (1, 0) if stop_at_step == STEPS_PER_EPOCH else (1, 2 * 4))
    assert train.main(["--resume", str(stopped / "last.pt")]) == 0
    assert_same_run(*(load_checkpoint(d / "last.pt") for d in (straight, stopped)))
