"""The ISIC ``Dataset``: decoding, albumentations transforms, and a deterministic split."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from data.imageio import read_image, read_mask
from data.layouts import DatasetError, Pair

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transforms(img_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Resize to ``img_size`` square, then flips, 90-degree and free rotations, shift/scale and
    colour jitter (lesions have no canonical orientation; dermatoscopes differ in colour)."""
    return A.Compose([
        A.Resize(img_size, img_size, interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(),
        A.VerticalFlip(),
        A.RandomRotate90(),
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.0625, 0.0625), rotate=(-30, 30),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.5),
        A.Normalize(mean=mean, std=std),
    ])


def eval_transforms(img_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Resize to ``img_size`` square and normalise; nothing random."""
    return A.Compose([
        A.Resize(img_size, img_size, interpolation=cv2.INTER_AREA),
        A.Normalize(mean=mean, std=std),
    ])


class ISICDataset(Dataset):
    """Image/mask pairs decoded with OpenCV and transformed with albumentations.

    Items are dicts: ``image`` float32 ``(3, S, S)`` normalised, ``mask`` float32 ``(1, S, S)``
    in ``{0, 1}``, ``id`` str. A key may be an index or ``(index, seed)`` (see
    :class:`SeededSampler`): the seed fixes the random augmentation of that item, so that runs
    are reproducible whatever the number of workers.
    """

    def __init__(self, pairs: Sequence[Pair], transform: A.Compose) -> None:
        if not pairs:
            raise DatasetError("the data set is empty")
        self.pairs = list(pairs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``(H, W, 3)`` uint8 RGB image and ``(H, W)`` uint8 mask in ``{0, 1}``."""
        pair = self.pairs[index]
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
        if image.shape[:2] != mask.shape:
            raise DatasetError(
                f"mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} but image {pair.image} "
                f"is {image.shape[1]}x{image.shape[0]}; they must have the same size"
            )
        return image, mask

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        if seed is not None:
            self.transform.set_random_seed(seed)
        out = self.transform(image=image, mask=mask)
        return {
            "image": torch.from_numpy(out["image"].transpose(2, 0, 1).copy()),
            "mask": torch.from_numpy(out["mask"][None].astype(np.float32)),
            "id": self.pairs[index].id,
        }


class SeededSampler(Sampler):
    """Wraps an index sampler and yields ``(index, seed)`` with a seed fixed by
    (base seed, epoch, index), so that augmentation is reproducible and resumable."""

    def __init__(self, sampler: Sampler, seed: int) -> None:
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            seq = np.random.SeedSequence([self.seed, self.epoch, index])
            yield index, int(seq.generate_state(1)[0])


def split_pairs(pairs: Sequence[Pair], val_fraction: float,
                seed: int) -> tuple[list[Pair], list[Pair]]:
    """Deterministic train/validation split: the same on every machine for the same ids and
    seed, whatever order the file system lists them in.

    Returns:
        ``(train, val)``, each sorted by id; ``val`` has ``round(len * val_fraction)`` pairs
        (at least one when ``val_fraction > 0``).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    ordered = sorted(pairs, key=lambda p: p.id)
    n_val = max(1, round(len(ordered) * val_fraction)) if val_fraction > 0 else 0
    if n_val >= len(ordered):
        raise DatasetError(f"{len(ordered)} pairs are too few to hold out {n_val} for validation")
    order = np.random.default_rng(seed).permutation(len(ordered))
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(ordered) if i not in val_idx]
    val = [p for i, p in enumerate(ordered) if i in val_idx]
    return train, val
