"""An exponential moving average of a model's weights, validated and saved instead of them."""

from __future__ import annotations

import copy

import torch
from torch import nn

from common.errors import FlagError


class ModelEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the
    random initial weights are forgotten quickly in short runs. The tensors of both models are
    listed once, so an update is one fused ``lerp`` over all of them.

    Args:
        model: the model being trained; :meth:`update` follows its tensors (which optimisers
            and ``load_state_dict`` change in place).
        decay: in ``(0, 1)``.

    Raises:
        FlagError: ``decay`` is not in ``(0, 1)``.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise FlagError(f"--ema must be in (0, 1) (or 0 for off), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        averaged, current = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        self._averaged = [averaged[k] for k in floats]
        self._current = [current[k] for k in floats]
        # BatchNorm's integer batch counters are copied, not averaged.
        self._counters = [(averaged[k], current[k]) for k in averaged.keys() - set(floats)]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights (call after each step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._averaged, self._current, 1 - decay)
        for averaged, current in self._counters:
            averaged.copy_(current)
