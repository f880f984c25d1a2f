"""The counters of a training run, saved in ``last.pt`` and restored on resume."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainState:
    """Where a run stands.

    Attributes:
        epoch: completed epochs.
        epoch_images: images of the current epoch already trained on, by all processes
            together (0 at an epoch boundary; more after a stop mid-epoch).
        epoch_loss: sum of the training losses of the current epoch's steps so far (this
            process's), and ``epoch_steps`` their number: the epoch's mean loss is the same
            whether or not it was stopped and resumed.
        step: optimiser steps taken.
        train_seconds: training time spent, validation and saving not counted (the slowest
            process's, as all processes agree on it).
        best_dice: best validation Dice so far (-1 before the first validation).
        wandb_id: the W&B run that a resumed run continues.
    """

    epoch: int = 0
    epoch_images: int = 0
    epoch_loss: float = 0.0
    epoch_steps: int = 0
    step: int = 0
    train_seconds: float = 0.0
    best_dice: float = -1.0
    wandb_id: str | None = None

    def end_epoch(self) -> None:
        """Count a completed epoch and clear the current one's counters."""
        self.epoch += 1
        self.epoch_images, self.epoch_loss, self.epoch_steps = 0, 0.0, 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> TrainState:
        """The state a ``last.pt`` holds (checkpoints without ``epoch_images`` were saved at
        epoch boundaries)."""
        return cls(**{f.name: checkpoint[f.name] for f in fields(cls) if f.name in checkpoint})
