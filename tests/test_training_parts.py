"""Tests of training/: the weight EMA, the schedule, the epoch sampler and the agreement of
processes."""

from __future__ import annotations

import pytest
import torch

from training.ema import ModelEMA

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
