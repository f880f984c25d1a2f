"""Tests of training/: the weight EMA, the learning-rate schedule and the plan's progress, the
agreement of a single process, the state's epoch counters, and when the step is compiled. (The
epoch sampler is tested in test_dataset.py, the agreement of several processes in
test_distributed.py.)"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from common.device import Hardware
from training.distributed import Agreement, Cluster
from training.ema import ModelEMA
from training.options import parse_args
from training.schedule import WARMUP_START, Plan, lr_at
from training.state import TrainState
from training.step import should_compile

# ---------------------------------------------------------------- weight averaging


def test_model_ema_ramps_up_then_follows_the_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.9)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 2))  # updates the BatchNorm statistics and counter
    ema.update()
    # First update: decay min(0.9, 2/11), so the average moves 9/11 of the way.
    expected = start + (1 - 2 / 11) * (model[0].weight - start)
    assert torch.allclose(ema.module[0].weight, expected)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked == 1
    for _ in range(200):
        ema.update()
    assert torch.allclose(ema.module[0].weight, model[0].weight, atol=1e-6)
    assert not ema.module[0].weight.requires_grad


def test_model_ema_refuses_a_bad_decay() -> None:
    with pytest.raises(ValueError, match="--ema"):
        ModelEMA(torch.nn.Linear(1, 1), decay=1.0)


# ---------------------------------------------------------------- schedule and progress

SCHEDULE = SimpleNamespace(lr=1e-3, warmup=0.1, min_lr_ratio=0.01)


def test_lr_warms_up_linearly_to_the_peak_without_overshooting() -> None:
    progress = np.linspace(0, SCHEDULE.warmup, 101)
    lrs = np.array([lr_at(p, SCHEDULE) for p in progress])
    assert lrs[0] == pytest.approx(WARMUP_START * SCHEDULE.lr)
    assert np.all(np.diff(lrs) > 0) and lrs.max() <= SCHEDULE.lr
    assert lr_at(0.05, SCHEDULE) == pytest.approx(SCHEDULE.lr * (WARMUP_START + 0.5
                                                                 * (1 - WARMUP_START)))
    just_before = lr_at(SCHEDULE.warmup - 1e-9, SCHEDULE)
    assert just_before <= SCHEDULE.lr == lr_at(SCHEDULE.warmup, SCHEDULE)
    assert SCHEDULE.lr - just_before < 1e-10  # continuous at the end of the warmup


def test_lr_decays_along_a_cosine_to_its_floor() -> None:
    floor = SCHEDULE.min_lr_ratio * SCHEDULE.lr
    middle = SCHEDULE.warmup + (1 - SCHEDULE.warmup) / 2
    assert lr_at(middle, SCHEDULE) == pytest.approx((SCHEDULE.lr + floor) / 2)
    quarter = SCHEDULE.warmup + (1 - SCHEDULE.warmup) / 4
    expected = floor + (SCHEDULE.lr - floor) * 0.5 * (1 + math.cos(math.pi / 4))
    assert lr_at(quarter, SCHEDULE) == pytest.approx(expected)
    decay = [lr_at(p, SCHEDULE) for p in np.linspace(SCHEDULE.warmup, 1, 50)]
    assert np.all(np.diff(decay) < 0) and decay[-1] == pytest.approx(floor)


def test_lr_without_warmup_starts_at_the_peak() -> None:
    settings = SimpleNamespace(lr=2e-3, warmup=0.0, min_lr_ratio=0.0)
    assert lr_at(0.0, settings) == 2e-3 and lr_at(1.0, settings) == pytest.approx(0.0)


def test_plan_progress_counts_epochs_or_time_whichever_is_further() -> None:
    plan = Plan(epochs=4, epoch_images=100, max_seconds=600)
    state = TrainState(epoch=1, epoch_images=50, train_seconds=60)
    assert plan.progress(state) == pytest.approx(1.5 / 4)
    state.train_seconds = 300
    assert plan.progress(state) == pytest.approx(0.5) and not plan.finished(state)
    state.train_seconds = 601
    assert plan.progress(state) == 1.0 and plan.finished(state)
    assert Plan(epochs=2, epoch_images=10).finished(TrainState(epoch=2))


def test_end_epoch_counts_it_and_clears_the_epoch_counters() -> None:
    state = TrainState(epoch=3, epoch_images=40, epoch_loss=2.5, epoch_steps=5, step=17)
    state.end_epoch()
    assert (state.epoch, state.epoch_images, state.epoch_loss, state.epoch_steps,
            state.step) == (4, 0, 0.0, 0, 17)


def test_a_single_process_agrees_with_itself() -> None:
    agreement = Agreement(Cluster(0, 1, torch.device("cpu")))
    assert agreement.exchange(12.5, False) == (12.5, False)
    assert agreement.exchange(13.0, True) == (13.0, True)


# ---------------------------------------------------------------- compiling the step


@pytest.mark.parametrize("device, dtype, expected", [
    ("cuda", torch.bfloat16, True),
    ("cuda", torch.float16, True),
    ("cpu", torch.bfloat16, True),
    ("cpu", None, False),
    ("mps", None, False),
])
def test_compile_auto_compiles_where_it_was_measured_to_pay(device: str, dtype: torch.dtype,
                                                           expected: bool) -> None:
    compiled, why = should_compile("auto", Hardware(torch.device(device), dtype))
    assert compiled == expected and why.startswith("--compile auto: ")


def test_compile_on_and_off_decide_alone() -> None:
    fp32_cpu = Hardware(torch.device("cpu"), None)
    assert should_compile("on", fp32_cpu) == (True, "--compile on")
    assert should_compile("off", Hardware(torch.device("cuda"), torch.bfloat16))[0] is False


def test_compile_flags() -> None:
    assert parse_args([]).compile == "off"
    assert parse_args(["--compile"]).compile == "on"
    assert parse_args(["--preset", "cpu-budget"]).compile == "auto"
    assert parse_args(["--preset", "cpu-budget", "--no-compile"]).compile == "off"
    assert parse_args(["--compile", "auto"]).compile == "auto"
