"""Tests of distributed training: train.py under torchrun, 2 CPU processes with gloo on
127.0.0.1. Budgeted runs end cleanly with bit-identical replicas, SIGTERM to the launcher
saves a last.pt that resumes (also on another number of processes), and a process that dies
ends the run with one clear line instead of a hang."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import train
from common.device import Hardware, autocast_dtype
from data.dataset import ISICDataset, eval_transforms
from data.splits import training_splits
from models import build_model
from models.checkpoint import load_checkpoint
from tests.conftest import RUN_FILES, TINY_TRAIN_ARGS
from training.options import split_settings
from utils import SegmentationLoss

TRAIN_PY = Path(train.__file__).resolve()
CPU = torch.device("cpu")
IDENTICAL = "all 2 processes hold identical weights"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(TRAIN_PY),
            *args]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # The free port is released before torchrun binds it, so another process may take it in
    # between: a launch that failed before training is tried once more on a new port.
    for _ in range(2):
        result = subprocess.run(torchrun_command(nproc, args), cwd=cwd, env=env(),
                                capture_output=True, text=True, timeout=300)
        if result.returncode == 0 or "training and" in result.stdout:
            break
    return result


def launch(nproc: int, args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(torchrun_command(nproc, args), cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``path`` exists (files are written atomically, so it is complete)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended early:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear in time")
        time.sleep(0.02)


def child_with_rank(launcher: int, rank: int) -> int:
    """The pid of the training process of ``rank`` that the launcher started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no process of rank {rank} under {launcher}")


def single_process_metrics(checkpoint: dict) -> dict[str, float]:
    """Validation metrics of ``checkpoint``'s model computed in this (non-distributed) process,
    on the validation split its arguments define, read from the original files."""
    args = argparse.Namespace(**checkpoint["args"])
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    _, val_pairs = training_splits(Path(args.data), split_settings(args))
    loader = DataLoader(ISICDataset(val_pairs, eval_transforms(args.img_size)),
                        batch_size=args.batch_size)
    hardware = Hardware(CPU, autocast_dtype(args.precision, CPU), args.channels_last)
    metrics, _ = train.validate(model, loader, SegmentationLoss(), hardware)
    return metrics


def common_args(synthetic_root: Path, tmp_path: Path) -> list[str]:
    return ["--data", str(synthetic_root), "--checkpoint-dir", str(tmp_path / "checkpoints"),
            "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN_ARGS]


def test_a_budgeted_run_ends_cleanly_with_identical_replicas_and_validates_like_one(
        synthetic_root: Path, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    # Each process reads its own clock; without one agreed time the processes would leave the
    # epoch at different steps and the next collective would mismatch. 5 validation images (an
    # odd number) over 2 processes: a padded sampler would count one twice.
    result = torchrun(2, [*common_args(synthetic_root, tmp_path), "--val-fraction", "0.2",
                          "--batch-size", "2", "--epochs", "500", "--max-minutes", "0.08"],
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert sum("training and 5 validation images" in line for line in lines) == 1
    assert "(2 processes)" in result.stdout
    done = [line for line in lines if line.startswith("done:")]
    assert len(done) == 1 and IDENTICAL in done[0], result.stdout[-2000:]
    assert sorted(p.name for p in ckpt_dir.iterdir()) == RUN_FILES

    last = load_checkpoint(ckpt_dir / "last.pt")
    assert 1 <= last["epoch"] < 500 and last["train_seconds"] >= 0.08 * 60
    args = last["args"]
    assert last["metrics"]["lr"] == pytest.approx(args["lr"] * args["min_lr_ratio"])
    best = load_checkpoint(ckpt_dir / "best.pt")
    expected = single_process_metrics(best)
    for key in ("val_dice", "val_iou", "val_loss"):
        assert best["metrics"][key] == pytest.approx(expected[key], abs=1e-5), key


def test_sigterm_to_the_launcher_saves_last_pt_and_a_budgeted_resume_finishes(
        synthetic_root: Path, tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    budget = ["--epochs", "500", "--max-minutes", "0.15", "--batch-size", "2"]
    proc = launch(2, [*common_args(synthetic_root, tmp_path), *budget], cwd=tmp_path)
    wait_for(last, proc)
    proc.send_signal(signal.SIGTERM)  # what a cluster's scheduler does before it kills
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(stopped) == 1 and "--resume" in stopped[0], stderr[-3000:]
    saved = load_checkpoint(last)
    assert saved["train_seconds"] < 0.15 * 60

    resumed = torchrun(2, ["--resume", str(last)], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert IDENTICAL in resumed.stdout
    final = load_checkpoint(last)
    assert final["train_seconds"] >= 0.15 * 60 and final["epoch"] > saved["epoch"]
    assert final["args"]["max_minutes"] == 0.15


def test_a_run_resumed_on_another_number_of_processes_finishes_its_planned_epochs(
        synthetic_root: Path, tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    assert train.main([*common_args(synthetic_root, tmp_path), "--epochs", "2"]) == 0
    one = load_checkpoint(last)
    result = torchrun(2, ["--resume", str(last), "--epochs", "4"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "nothing to do" not in result.stdout
    printed = [line.split()[1] for line in result.stdout.splitlines()
               if line.startswith("epoch ")]
    assert printed == ["3/4", "4/4"]
    two = load_checkpoint(last)
    assert (two["epoch"], two["epoch_images"]) == (4, 0) and two["step"] > one["step"]


def test_a_process_that_dies_ends_the_run_with_one_line(synthetic_root: Path,
                                                        tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.pt"
    proc = launch(2, [*common_args(synthetic_root, tmp_path), "--epochs", "500",
                      "--dist-timeout", "1"], cwd=tmp_path)
    wait_for(last, proc)
    os.kill(child_with_rank(proc.pid, 1), signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=120)  # not a hang until some far timeout
    assert proc.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "another training process stopped answering" in ours[0], (
        stderr[-3000:])
    assert "--resume" in ours[0]
    # torchrun reports the failure with a traceback of its own; the processes print none.
    assert not any(line.startswith("[rank") and "Traceback" in line
                   for line in stderr.splitlines())
    assert load_checkpoint(last)["epoch"] >= 1
