"""Shared fixtures: a tiny synthetic data set and a tiny trained checkpoint (built once)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from data.synthetic import generate_synthetic_isic

# Test tensors are tiny: synchronising a second thread costs more than it saves.
torch.set_num_threads(1)

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# Real ISIC sample data, where the environment provides it: ISIC_REAL_DATA, else the folder
# shared/data beside the repository.
SHARED_DATA = Path(os.environ.get("ISIC_REAL_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))

# A U-Net small enough to train for an epoch in a second or two on a CPU.
# Tests of the preparation cache ask for it; the others skip it (and its worker pool).
# What a finished run leaves in its checkpoint folder.
RUN_FILES = ["best.pt", "curves.png", "last.pt", "metrics.jsonl"]
TINY_TRAIN_ARGS = ["--img-size", "32", "--base-channels", "4", "--depth", "2", "--epochs", "1",
                   "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--no-cache"]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic ISIC 2018 layout: 24 training and 8 validation pairs at 64x48 pixels."""
    root = tmp_path_factory.mktemp("synthetic") / "ISIC2018"
    return generate_synthetic_isic(root, n_train=24, n_val=8, height=48, width=64, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with best.pt and last.pt of a tiny U-Net trained one epoch on synthetic_root."""
    import train

    out = tmp_path_factory.mktemp("checkpoints")
    assert train.main(["--data", str(synthetic_root), "--checkpoint-dir", str(out),
                       *TINY_TRAIN_ARGS]) == 0
    return out


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` (scripts/ is no package) as the module ``<name>_script``."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def shared_data(name: str) -> Path:
    """A folder of the real ISIC sample data (``isic2017-256``, ``isic-fullres-sample``), or
    skip the test where it is absent, as in a user's clone."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (set ISIC_REAL_DATA to a folder holding {name}/)")
    return path
