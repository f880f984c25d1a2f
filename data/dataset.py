"""The ISIC ``Dataset``: decoding, albumentations transforms, and a deterministic split.

A dataset reads its samples from a *source*: :class:`FileSource` decodes the original files on
every load, ``data.cache.CachedSource`` reads them already resized from the preparation cache.
Both feed the same transforms, whose first step (:func:`resize_transform`) is the very resize
the cache applied, so that it leaves cached samples untouched and items are identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, Protocol

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from common.errors import FlagError
from data.imageio import read_image, read_image_reduced, read_mask
from data.layouts import DatasetError, Pair, check_same_size
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD, area_resize, normalize


def resize_transform(img_size: int) -> A.Lambda:
    """Area-average resize of image and mask to ``img_size`` square
    (:func:`data.preprocess.area_resize`, as prediction resizes).

    The ``{0, 1}`` uint8 mask is area-averaged too and rounded back to ``{0, 1}`` (binarised at
    0.5), which follows the lesion border more faithfully than nearest neighbour. An input
    already at ``img_size`` is returned unchanged, which is what makes cached samples (resized
    by this same transform) give the same items as the original files.
    """
    resize = partial(_apply, area_resize, size=img_size)
    return A.Lambda(image=resize, mask=resize, p=1.0)


def normalize_transform(mean: Sequence[float], std: Sequence[float]) -> A.Lambda:
    """:func:`data.preprocess.normalize`, the last step of every transform."""
    return A.Lambda(image=partial(_apply, normalize, mean=mean, std=std), p=1.0)


def _apply(function: Callable[..., np.ndarray], array: np.ndarray, **kwargs: Any) -> np.ndarray:
    # albumentations passes its own parameters too; the function takes only its own.
    own = {key: kwargs[key] for key in ("size", "mean", "std") if key in kwargs}
    return function(array, **own)


AUGMENTATIONS = ("flips", "default", "strong")


def train_transforms(img_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, policy: str = "default") -> A.Compose:
    """Resize to ``img_size`` square, then augment (lesions have no canonical orientation;
    dermatoscopes differ in colour and magnification), then normalise.

    Policies: ``flips`` (flips and 90-degree rotations), ``default`` (also free rotation,
    shift/scale and colour jitter, each half the time) and ``strong`` (wider ranges, every
    time, plus blur).
    """
    if policy not in AUGMENTATIONS:
        raise FlagError(f"unknown augmentation policy {policy!r}; use one of {AUGMENTATIONS}")
    steps = [resize_transform(img_size), A.HorizontalFlip(), A.VerticalFlip(),
             A.RandomRotate90()]
    if policy == "default":
        steps += [
            A.Affine(scale=(0.85, 1.15), translate_percent=(-0.0625, 0.0625), rotate=(-30, 30),
                     border_mode=cv2.BORDER_REFLECT_101, p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.5),
        ]
    elif policy == "strong":
        steps += [
            A.Affine(scale=(0.75, 1.3), translate_percent=(-0.1, 0.1), rotate=(-45, 45),
                     shear=(-10, 10), border_mode=cv2.BORDER_REFLECT_101, p=0.9),
            A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=0.9),
            A.GaussianBlur(blur_limit=(3, 5), p=0.2),
        ]
    return A.Compose([*steps, normalize_transform(mean, std)])


def eval_transforms(img_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Resize to ``img_size`` square and normalise; nothing random."""
    return A.Compose([resize_transform(img_size), normalize_transform(mean, std)])


def load_pair(pair: Pair, img_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode one pair: ``(H, W, 3)`` uint8 RGB image and ``(H, W)`` uint8 mask in ``{0, 1}``.

    Args:
        img_size: the size the pair will be resized to: both are then returned resized to
            ``(img_size, img_size)`` exactly as the preparation cache stores them, a large JPEG
            decoded at reduced scale (:func:`data.imageio.read_image_reduced`) on the way.

    Raises:
        CorruptFileError: a file cannot be decoded (see :mod:`data.imageio`).
        DatasetError: image and mask differ in size.
    """
    if img_size is None:
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
        check_same_size(pair, image.shape[:2], mask.shape[:2])
        return image, mask
    image, size = read_image_reduced(pair.image, img_size)
    mask = read_mask(pair.mask)
    check_same_size(pair, size, mask.shape[:2])
    # A reduced JPEG is smaller than its mask: both go to the training size here.
    return area_resize(image, img_size), area_resize(mask, img_size)


class Source(Protocol):
    """Where a dataset's samples come from: ``ids`` in order, and ``load(index)`` returning a
    uint8 RGB image ``(H, W, 3)`` and a uint8 mask ``(H, W)`` in ``{0, 1}``."""

    ids: list[str]

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class FileSource:
    """Image/mask pairs decoded from their original files on every load (at reduced scale for
    ``img_size``, see :func:`load_pair`)."""

    def __init__(self, pairs: Sequence[Pair], img_size: int | None = None) -> None:
        self.pairs = list(pairs)
        self.ids = [pair.id for pair in self.pairs]
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`load_pair`."""
        return load_pair(self.pairs[index], self.img_size)


class JoinedSource:
    """Two sources as one: the indices of ``first``, then those of ``second``."""

    def __init__(self, first: Source, second: Source) -> None:
        self.first, self.second = first, second
        self.ids = [*first.ids, *second.ids]

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index < len(self.first):
            return self.first.load(index)
        return self.second.load(index - len(self.first))


class ISICDataset(Dataset):
    """Samples of a :class:`Source` (or a list of pairs, read from their files) transformed with
    albumentations.

    Items are dicts: ``image`` float32 ``(3, S, S)`` normalised, ``mask`` float32 ``(1, S, S)``
    in ``{0, 1}``, ``id`` str. A key may be an index or ``(index, seed)`` (see
    :class:`EpochSampler`): the seed fixes the random augmentation of that item, so that runs
    are reproducible whatever the number of workers.
    """

    def __init__(self, source: Source | Sequence[Pair], transform: A.Compose) -> None:
        self.source = source if hasattr(source, "load") else FileSource(source)
        if len(self.source) == 0:
            raise DatasetError("the data set is empty")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.source.load(index)
        if seed is not None:
            self.transform.set_random_seed(seed)
        out = self.transform(image=image, mask=mask)
        return {
            "image": torch.from_numpy(out["image"].transpose(2, 0, 1).copy()),
            "mask": torch.from_numpy(out["mask"][None].astype(np.float32)),
            "id": self.source.ids[index],
        }


class EpochSampler(Sampler):
    """The training order of one process: each epoch a seeded permutation of the whole data set
    (the same whatever the number of processes), from position ``start`` on, dealt out to the
    ``world`` processes in turn. Every process gets the same number of items (at most
    ``world - 1`` left over are skipped), so all take the same number of steps.

    Yields ``(index, seed)``, the seed fixed by (base seed, epoch, index) so that each item's
    augmentation is reproducible whatever the order, the number of workers or processes.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size = size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Iterate over ``epoch``'s order, skipping the ``start`` items of it (all processes
        together) that were already trained on."""
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return max(0, self.size - self.start) // self.world

    def order(self) -> np.ndarray:
        """The epoch's order of all ``size`` positions, for all processes."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order()[self.start + self.rank::self.world][:len(self)]
        for index in mine.tolist():
            seq = np.random.SeedSequence([self.seed, self.epoch, index])
            yield index, int(seq.generate_state(1)[0])


class ReplaySampler(EpochSampler):
    """:class:`EpochSampler` over a data set followed by ``replay`` images of another one (a
    :class:`JoinedSource`): each epoch holds every image of the first once (the last step
    filled up with images from the start of the epoch's order), and every batch of every
    process ``share`` of images of the second, so that a model fine-tuned on a few new images
    keeps seeing what it was trained on. The replayed images are a seeded draw, different each
    epoch.
    """

    def __init__(self, size: int, replay: int, share: float, batch: int, seed: int,
                 rank: int = 0, world: int = 1) -> None:
        self.replayed = min(batch - 1, max(1, round(share * batch)))  # per batch and process
        self.batch, self.main, self.replay = batch, size, replay
        self.steps = -(-size // ((batch - self.replayed) * world))
        super().__init__(self.steps * batch * world, seed, rank, world)

    def order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        world, fresh_per = self.world, self.batch - self.replayed
        fresh = np.resize(rng.permutation(self.main), (self.steps, world, fresh_per))
        replayed = self.main + np.resize(rng.permutation(self.replay),
                                         (self.steps, world, self.replayed))
        batches = rng.permuted(np.concatenate([fresh, replayed], axis=2), axis=2)
        # Position (step, i, rank) is dealt to process ``rank`` (see EpochSampler.__iter__).
        return batches.transpose(0, 2, 1).reshape(-1)
