"""Tests of distributed training: train.py under torchrun, 2 CPU processes with gloo."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # The free port is released before torchrun binds it, so another process may take it in
    # between: a failed launch is tried once more on a new port.
    for _ in range(2):
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                   str(nproc), "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
                   str(TRAIN_PY), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=300)
        if result.returncode == 0:
            break
    return result


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


def test_two_gloo_processes_train_save_once_and_validate_like_one(
        synthetic_root: Path, tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    # 5 validation images (an odd number) over 2 ranks: a padded sampler would count one twice.
    result = torchrun(2, ["--data", str(synthetic_root), "--checkpoint-dir", str(ckpt_dir),
                          "--cache-dir", str(tmp_path / "cache"), *TINY_TRAIN_ARGS,
                          "--val-fraction", "0.2", "--batch-size", "2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    assert sorted(p.name for p in ckpt_dir.iterdir()) == RUN_FILES
    lines = result.stdout.splitlines()
    assert sum(line.startswith("epoch 1/1 ") for line in lines) == 1, result.stdout
    assert sum("training and 5 validation images" in line for line in lines) == 1
    assert "(2 processes)" in result.stdout
    assert sum(line.startswith("done:") for line in lines) == 1, "only rank 0 may print"

    best = load_checkpoint(ckpt_dir / "best.pt")
    assert best["epoch"] == 1
    expected = single_process_metrics(best)
    for key in ("val_dice", "val_iou", "val_loss"):
        assert best["metrics"][key] == pytest.approx(expected[key], abs=1e-5), key
