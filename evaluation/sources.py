"""What an evaluation scores: image and mask pairs of a data folder (a split of a layout, or
exactly the split a checkpoint was trained with), or mask files written by any tool matched by
id to their ground truth."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from data.layouts import (
    DatasetError,
    Pair,
    find_images,
    find_pairs,
    find_split_folders,
    mask_id_of,
)
from data.splits import SplitSettings, data_root, training_splits
from models.checkpoint import CheckpointError

REPO_ROOT = Path(__file__).resolve().parents[1]
# Preferred split of a layout when none is named: held-out data first.
SPLIT_PREFERENCE = ("val", "test", "train")


@dataclass(frozen=True)
class ScoredSet:
    """Images with masks to score a model on.

    Attributes:
        root: the data folder.
        split: its split (``train``, ``val`` or ``test``).
        split_source: ``training`` (exactly the split train.py made for the model) or
            ``layout`` (the layout's own folder of that split).
        pairs: the images and masks.
    """

    root: Path
    split: str
    split_source: str
    pairs: list[Pair]

    @property
    def label(self) -> str:
        """A short name for report folders: ``<folder>-[training-]<split>``."""
        return data_label(self.root, self.split,
                          "training-" if self.split_source == "training" else "")


def scored_set(info: dict[str, Any], data: str | None, split: str | None) -> ScoredSet:
    """What to score a model on: a split of the ``data`` folder (default: its val split, else
    its test split, else its train split), or without ``data`` the split train.py made for the
    model (default: its validation split).

    Args:
        info: the model file's provenance (``Predictor.info``).

    Raises:
        DatasetError: the folder or split is missing.
        CheckpointError: no ``data`` and the model file does not record its training data.
    """
    if data is None:
        split = split or "val"
        root, pairs = training_pairs(info, split)
        return ScoredSet(root, split, "training", pairs)
    root = data_root(data)
    split = layout_split(root, split)
    return ScoredSet(root, split, "layout", find_pairs(root, split))


@dataclass(frozen=True)
class MaskFiles:
    """One image of a folder of predicted masks: its id, ground truth, prediction and (when
    known) the image."""

    id: str
    truth: Path
    prediction: Path
    image: Path | None


def layout_split(root: Path, split: str | None) -> str:
    """``split``, or the first of val, test, train that the layout under ``root`` has.

    Raises:
        DatasetError: ``root`` is no layout the reader knows.
    """
    if split is not None:
        return split
    folders = find_split_folders(root)
    return next(name for name in SPLIT_PREFERENCE if name in folders)


def training_pairs(info: dict[str, Any], split: str) -> tuple[Path, list[Pair]]:
    """The data folder and the pairs of ``split`` exactly as train.py split them: train and val
    from its own logic (held-out fraction or official val), test from the layout.

    Args:
        info: a model file's provenance (``Predictor.info``), which holds train.py's ``args``.

    Raises:
        CheckpointError: the model file does not record its training data.
        DatasetError: that data is not found from here.
    """
    if "args" not in info:
        raise CheckpointError("the model file does not record its training data; pass --data")
    train_args = info["args"]
    root = training_data_root(train_args["data"])
    # runs saved before a split setting existed ran with its default
    settings = SplitSettings(**{f.name: train_args.get(f.name, f.default)
                                for f in fields(SplitSettings)})
    if split == "test":
        return root, find_pairs(root, "test", skip_unpaired=settings.skip_unpaired)
    train_set, val_set = training_splits(root, settings)
    return root, train_set if split == "train" else val_set


def training_data_root(data: str) -> Path:
    """The data folder a model was trained on, relative to the working directory or to the
    repository.

    Raises:
        DatasetError: found in neither place.
    """
    root = data_root(data)
    if root.is_dir() or root.is_absolute():
        return root
    if (REPO_ROOT / root).is_dir():
        return REPO_ROOT / root
    raise DatasetError(f"the model was trained on {data}, which is not found from here or from "
                       f"{REPO_ROOT}; run from the folder training ran in, or score a data set "
                       "with --data DIR")


def mask_files(pred_dir: Path, gt_dir: Path, images_dir: Path | None,
               split: str | None) -> list[MaskFiles]:
    """Predicted masks matched by id to their ground truth (and image, when known).

    Args:
        split: the split of the ``gt_dir`` layout, ``None`` when it is a plain mask folder.

    Raises:
        DatasetError: a folder is missing or empty, no id matches, or some ground-truth masks
            have no prediction (the challenge rejected incomplete submissions).
    """
    truths = ground_truth(gt_dir, split)
    predictions = masks_by_id(pred_dir, "--pred")
    images = ({path.stem: path for path in find_images(_folder(images_dir, "--images"))}
              if images_dir is not None else {})
    missing = sorted(set(truths) - set(predictions))
    if len(missing) == len(truths):
        raise DatasetError(f"no mask in {pred_dir} matches an id of {gt_dir} (e.g. "
                           f"{next(iter(truths))}_segmentation.png); check the folders")
    if missing:
        raise DatasetError(f"{len(missing)} ground-truth masks have no prediction in "
                           f"{pred_dir}: {', '.join(missing[:5])}{', ...' * (len(missing) > 5)}")
    return [MaskFiles(id_, mask, predictions[id_], images.get(id_, image))
            for id_, (mask, image) in sorted(truths.items())]


def ground_truth(gt_dir: Path, split: str | None) -> dict[str, tuple[Path, Path | None]]:
    """``{id: (mask, image or None)}`` from a layout's split, or a plain mask folder (``None``)."""
    if split is None:
        return {id_: (path, None) for id_, path in masks_by_id(gt_dir, "--gt").items()}
    return {pair.id: (pair.mask, pair.image) for pair in find_pairs(gt_dir, split)}


def gt_split(gt_dir: Path, split: str | None) -> str | None:
    """The split to score of a ground-truth layout, or ``None`` for a plain folder of masks.

    Raises:
        DatasetError: the folder is missing, or a split is named for a plain mask folder.
    """
    try:
        find_split_folders(_folder(gt_dir, "--gt"))
    except DatasetError:
        if split is not None:
            raise DatasetError(f"--split {split}: {gt_dir} is a plain folder of masks, not a "
                               "layout with splits; leave --split out") from None
        return None
    return layout_split(gt_dir, split)


def masks_by_id(folder: Path, flag: str) -> dict[str, Path]:
    """``{id: path}`` of the mask files of ``folder`` (``<id>_segmentation.png`` or
    ``<id>.png``).

    Raises:
        DatasetError: the folder is missing or holds no mask, or two masks share an id.
    """
    masks: dict[str, Path] = {}
    for path in find_images(_folder(folder, flag)):
        id_ = mask_id_of(path.stem)
        if id_ in masks:
            raise DatasetError(f"two masks for id {id_!r} in {folder}: {masks[id_].name} and "
                               f"{path.name}")
        masks[id_] = path
    if not masks:
        raise DatasetError(f"{flag} folder {folder} holds no mask image")
    return masks


def _folder(path: Path, flag: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{flag} folder {path} does not exist")
    return path


def data_label(root: Path, split: str | None, prefix: str = "") -> str:
    """A short name of a scored set for report folder names: ``<folder>-[prefix]<split>``."""
    name = root.resolve().name
    return f"{name}-{prefix}{split}" if split else name

