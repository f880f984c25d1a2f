"""Which images a run trains and validates on: the data folder a ``--data`` value names, and
the seeded, machine-independent split of its training pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import FlagError
from data.layouts import DatasetError, Pair, find_pairs
from data.synthetic import ensure_synthetic_isic

SYNTHETIC = "synthetic"
SYNTHETIC_DIR = Path(__file__).resolve().parent / "synthetic"


def data_root(name: str, generate: bool = True) -> Path:
    """The folder ``--data name`` means: ``synthetic`` is ``data/synthetic/`` of this
    repository (generated there first when ``generate``), anything else a path."""
    if name != SYNTHETIC:
        return Path(name)
    if generate:
        ensure_synthetic_isic(SYNTHETIC_DIR)
    return SYNTHETIC_DIR


@dataclass(frozen=True)
class SplitSettings:
    """How a run chose its validation images (``train.py``'s flags of the same names;
    ``fold`` ``None`` is no ``--fold``)."""

    official_val: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    skip_unpaired: bool = False
    fold: int | None = None
    folds: int = 5


def training_splits(root: Path, settings: SplitSettings) -> tuple[list[Pair], list[Pair]]:
    """``(train, val)`` pairs: the official validation folder with ``official_val``, else fold
    ``fold`` of ``folds`` (see :func:`fold_pairs`), else a seeded fraction held out of the
    training folder (see :func:`split_pairs`)."""
    pairs = find_pairs(root, "train", skip_unpaired=settings.skip_unpaired)
    if settings.official_val:
        return pairs, find_pairs(root, "val", skip_unpaired=settings.skip_unpaired)
    if settings.fold is not None:
        return fold_pairs(pairs, settings.fold, settings.folds, settings.seed)
    return split_pairs(pairs, settings.val_fraction, settings.seed)


def fold_pairs(pairs: Sequence[Pair], fold: int, folds: int,
               seed: int) -> tuple[list[Pair], list[Pair]]:
    """``(train, val)`` with ``val`` fold ``fold`` of a seeded partition of the pairs into
    ``folds`` parts of nearly equal size: the runs of ``fold`` 0 to ``folds - 1`` hold out
    every pair once (out-of-fold predictions). Machine-independent, as :func:`split_pairs`.

    Args:
        fold: in ``[0, folds)``; ``folds`` 2 or more (``train.py`` checks its flags).

    Raises:
        DatasetError: fewer pairs than folds.
    """
    if len(pairs) < folds:
        raise DatasetError(f"{len(pairs)} pairs are too few for {folds} folds")
    ordered = sorted(pairs, key=lambda p: p.id)
    order = np.random.default_rng(seed).permutation(len(ordered))
    val_idx = set(np.array_split(order, folds)[fold].tolist())
    return ([p for i, p in enumerate(ordered) if i not in val_idx],
            [p for i, p in enumerate(ordered) if i in val_idx])


def split_pairs(pairs: Sequence[Pair], val_fraction: float,
                seed: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/validation split: the same on every machine for the same ids and
    seed, whatever order the file system lists them in.

    Returns:
        ``(train, val)``, each sorted by id; ``val`` has ``round(len * val_fraction)`` pairs
        (at least one when ``val_fraction > 0``).

    Raises:
        FlagError: ``val_fraction`` is not in ``[0, 1)``.
        DatasetError: too few pairs to hold some out.
    """
    if not 0 <= val_fraction < 1:
        raise FlagError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(pairs, key=lambda p: p.id)
    n_val = max(1, round(len(ordered) * val_fraction)) if val_fraction > 0 else 0
    if n_val >= len(ordered):
        raise DatasetError(f"{len(ordered)} pairs are too few to hold out {n_val} for validation")
    order = np.random.default_rng(seed).permutation(len(ordered))
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_idx]
    val = [p for i, p in enumerate(ordered) if i in val_idx]
    return train, val
