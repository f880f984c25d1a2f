"""How far training has come, and the learning rate as a pure function of that.

Progress counts epochs (completed ones plus the share of the current one's images), or the
training time spent under a ``--max-minutes`` budget, whichever is further along. It depends
neither on the number of processes (an epoch is the same images however they are shared out)
nor on the batch size, so a run resumed on another number of GPUs continues the same schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from training.state import TrainState


class LRSettings(Protocol):
    """What :func:`lr_at` reads (``train.py``'s arguments have these)."""

    lr: float
    warmup: float
    min_lr_ratio: float


# The warmup starts at this fraction of the peak: the first step must not be wasted at 0.
WARMUP_START = 1e-3


def lr_at(progress: float, settings: LRSettings) -> float:
    """Linear warmup from ``WARMUP_START * lr`` to ``lr`` over the first ``settings.warmup``
    of training, then cosine decay to ``settings.min_lr_ratio * settings.lr``; ``progress`` in
    [0, 1]. Continuous, and never above ``settings.lr``."""
    if progress < settings.warmup:
        fraction = progress / settings.warmup
        return settings.lr * (WARMUP_START + (1 - WARMUP_START) * fraction)
    decay = min(1.0, (progress - settings.warmup) / (1 - settings.warmup))
    ratio = settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (
        1 + math.cos(math.pi * decay))
    return settings.lr * ratio


@dataclass(frozen=True)
class Plan:
    """What a run is to do: ``epochs`` epochs of ``epoch_images`` images each (all processes
    together), or ``max_seconds`` of training time if that comes first."""

    epochs: int
    epoch_images: int
    max_seconds: float | None = None

    def progress(self, state: TrainState) -> float:
        """Training progress in [0, 1] after ``state``."""
        by_epochs = (state.epoch + state.epoch_images / self.epoch_images) / self.epochs
        by_time = state.train_seconds / self.max_seconds if self.max_seconds else 0.0
        return min(1.0, max(by_epochs, by_time))

    def finished(self, state: TrainState) -> bool:
        return state.epoch >= self.epochs or self.progress(state) >= 1.0
