"""Tests of common/: seeding and RNG state, device and precision, the script wrapper."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from common import device
from common.device import autocast_dtype, select_device
from common.errors import FlagError, run_script
from common.seeding import rng_state, seed_everything, set_rng_state
from models.checkpoint import load_checkpoint, save_checkpoint

# ---------------------------------------------------------------- seeding


def draw_random_numbers() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    seed_everything(1234)
    draw_random_numbers()  # move away from the freshly seeded state
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = draw_random_numbers()
    seed_everything(999)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draw_random_numbers() == expected


def test_seed_everything_is_reproducible() -> None:
    seed_everything(5)
    first = draw_random_numbers()
    seed_everything(6)
    assert draw_random_numbers() != first
    seed_everything(5)
    assert draw_random_numbers() == first


# ---------------------------------------------------------------- device and precision


def test_select_device_auto_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")


def test_select_device_auto_prefers_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto").type == "cuda"


@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_select_device_refuses_missing_cuda(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*--device cpu"):
        select_device(name)


def test_select_device_refuses_unknown_names() -> None:
    # A user error, which scripts turn into one line on stderr (not torch's RuntimeError).
    with pytest.raises(ValueError, match="tpu"):
        select_device("tpu")


def test_autocast_dtype_explicit_choices() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="--precision fp64: unknown"):
        autocast_dtype("fp64", cpu)


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, None)])
def test_autocast_dtype_auto_on_cpu(monkeypatch: pytest.MonkeyPatch, native_bf16: bool,
                                    expected: torch.dtype | None) -> None:
    monkeypatch.setattr(device, "cpu_supports_bf16", lambda: native_bf16)
    assert autocast_dtype("auto", torch.device("cpu")) == expected


# ---------------------------------------------------------------- the script wrapper


def raising(exc: BaseException):
    def body() -> int:
        raise exc
    return body


def test_run_script_turns_user_errors_and_gpu_oom_into_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_script(raising(FlagError("--lr must be positive"))) == 1
    assert capsys.readouterr().err == "error: --lr must be positive\n"
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert run_script(raising(oom), oom_hint="lower --batch-size") == 1
    assert capsys.readouterr().err == "error: out of GPU memory; lower --batch-size\n"
    assert run_script(raising(KeyboardInterrupt()), interrupted="stopped") == 130
    assert run_script(lambda: 0) == 0


def test_run_script_keeps_the_traceback_of_a_bug() -> None:
    with pytest.raises(ZeroDivisionError):
        run_script(raising(ZeroDivisionError("a bug")))
