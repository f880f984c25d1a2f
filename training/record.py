"""The local record of a run: one JSON line of metrics per epoch beside the checkpoints, and a
picture of the curves when training ends. Always on, whatever W&B does, so that every run's
curves exist on disk (also where images may not leave the hospital network)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RECORD_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class MetricsRecord:
    """``<checkpoint dir>/metrics.jsonl``: appended after each epoch, just before its
    checkpoints are saved.

    A resumed run first drops the lines of epochs after the checkpoint it resumes from (a run
    stopped after writing its record but before its checkpoint would otherwise count an epoch
    twice), so the record always matches ``last.pt``.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / RECORD_FILE
        self.curves_path = folder / CURVES_FILE

    def keep_until(self, epoch: int) -> None:
        """Drop the lines of epochs after ``epoch`` (all of them for 0)."""
        rows = [row for row in read_record(self.path) if row["epoch"] <= epoch]
        if self.path.exists():
            self.path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({**row, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")

    def plot(self) -> Path | None:
        """Draw the curves of the whole record; ``None`` when it has no epoch yet."""
        rows = read_record(self.path)
        if not rows:
            return None
        plot_curves(rows, self.curves_path)
        return self.curves_path


def read_record(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (``[]`` if there is none), in epoch order."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Training and validation loss (left) and validation Dice and IoU (right) per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    fig, (losses, scores) = plt.subplots(1, 2, figsize=(10, 3.8))
    losses.plot(epochs, [row["train_loss"] for row in rows], "o-", label="training loss")
    losses.plot(epochs, [row["val_loss"] for row in rows], "o-", label="validation loss")
    losses.set(xlabel="epoch", ylabel="loss", title="loss")
    scores.plot(epochs, [row["val_dice"] for row in rows], "o-", label="validation Dice")
    scores.plot(epochs, [row["val_iou"] for row in rows], "o-", label="validation IoU")
    best = max(rows, key=lambda row: row["val_dice"])
    scores.annotate(f"best {best['val_dice']:.4f}", (best["epoch"], best["val_dice"]),
                    textcoords="offset points", xytext=(0, -16), ha="center", fontsize=8)
    scores.set(xlabel="epoch", ylabel="score", title="validation (per-image mean)")
    for ax in (losses, scores):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
