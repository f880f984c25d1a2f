#!/usr/bin/env python
"""Score lesion masks as the ISIC 2018 challenge did: per image, at the original resolution.

    python scripts/evaluate.py --checkpoint models/checkpoints/best.pt --split val
    python scripts/evaluate.py --checkpoint best.pt --data data/ISIC2018 --split test --tta
    python scripts/evaluate.py --pred results/masks --gt data/ISIC2018 --split val
    python scripts/evaluate.py --checkpoint best.pt --split val --resolution model

What is scored:
  --checkpoint without --data: the data train.py used (the folder, seed, validation fraction and
      --official-val are read from the checkpoint); --split train or val (default) is exactly
      training's own split, --split test that folder's test split.
  --checkpoint with --data DIR: a split of any layout the reader knows; --split defaults to the
      layout's val split, else its test split, else its train split (images/ + masks/).
  --pred DIR --gt DIR: masks written by predict.py (<id>_segmentation.png) or any other tool,
      matched by id to the ground truth, a layout (--split as above) or a plain folder of masks.

Predictions are scored at each image's original size (--resolution original), or with
--resolution model at the checkpoint's img_size exactly as train.py validates (its data set
class, transform and threshold), to compare with the val_dice it printed. Metrics, empty masks
and HD95: see evaluation.py. Writes metrics.csv (one row per image), summary.json,
jaccard_histogram.png and worst_cases.png under results/<name>/ (or --output).
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.errors import FlagError, run_script  # noqa: E402
from data.dataset import ISICDataset, eval_transforms  # noqa: E402
from data.imageio import read_image  # noqa: E402
from data.layouts import (  # noqa: E402
    SPLITS,
    DatasetError,
    Pair,
    find_images,
    find_pairs,
    find_split_folders,
    mask_id_of,
)
from data.splits import SplitSettings, data_root, training_splits  # noqa: E402
from evaluation import (  # noqa: E402
    COUNTS,
    JACCARD_THRESHOLD,
    METRICS,
    fit_to_truth,
    read_scored_mask,
    score_masks,
    summarize,
)
from models.bundled import describe_model  # noqa: E402
from models.checkpoint import CheckpointError  # noqa: E402
from models.predictor import Prediction, Predictor, draw_contour, postprocess  # noqa: E402
from predict import add_prediction_options, predictor_from_args  # noqa: E402

RESULTS_DIR = Path("results")
# Preferred split of a layout when --split is not given: held-out data first.
SPLIT_PREFERENCE = ("val", "test", "train")
WORST_CASES = 8
GRID_COLUMNS = 4
THUMBNAIL = 256  # longest side of the pictures in the worst-case grid
TRUTH_RGB = (0, 220, 0)
PREDICTION_RGB = (255, 40, 40)
TRUTH_FILL = 70  # grey level of the true lesion when the grid has no image to draw on
LABELS = {"dice": "Dice", "jaccard": "Jaccard", "threshold_jaccard": "thresholded Jaccard",
          "sensitivity": "sensitivity", "specificity": "specificity", "accuracy": "accuracy",
          "hd95": "HD95 (pixels)"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    g = p.add_argument_group("what to score")
    g.add_argument("--checkpoint", default=None,
                   help="predict with this best.pt or .safetensors (default, unless --pred is "
                   "given: models/checkpoints/best.pt if you trained one, else the bundled "
                   "ISIC model)")
    g.add_argument("--data", default=None, help="data folder in any known layout, or "
                   "'synthetic' (default: the checkpoint's training data and split)")
    g.add_argument("--split", choices=SPLITS, default=None,
                   help="split to score (default: val; for a layout without one: test, then "
                   "train)")
    g.add_argument("--pred", default=None, help="folder of predicted masks to score")
    g.add_argument("--gt", default=None, help="ground truth for --pred: a layout or a folder "
                   "of masks")
    g.add_argument("--images", default=None, help="images for the worst-case grid in --pred "
                   "mode (default: the --gt layout's images, else the masks only)")
    g.add_argument("--resize-pred", action="store_true", help="resize predictions of another "
                   "size than their ground truth (nearest neighbour) instead of refusing them")
    g.add_argument("--resolution", choices=("original", "model"), default="original",
                   help="original: the challenge's scoring; model: at the checkpoint's img_size "
                   "as train.py validates (to compare with its val_dice)")
    g = p.add_argument_group("prediction (--checkpoint)")
    add_prediction_options(g)  # --keep-largest and --fill-holes also apply to --pred masks
    g = p.add_argument_group("output")
    g.add_argument("--output", default=None,
                   help="folder for the report (default: results/<checkpoint>_<data>)")
    g.add_argument("--worst", type=int, default=WORST_CASES,
                   help="number of lowest-Jaccard images in worst_cases.png")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Refuse combinations of flags that would be silently ignored."""
    if args.pred or args.gt:
        if not (args.pred and args.gt):
            raise FlagError("--pred and --gt go together: pass both folders")
        if args.checkpoint or args.data:
            raise FlagError("score either a checkpoint (--checkpoint/--data) or a folder of "
                             "masks (--pred/--gt), not both")
        ignored = [flag for flag, value in (("--tta", args.tta), ("--threshold", args.threshold),
                                            ("--resolution model", args.resolution == "model"),
                                            ("--full-decode", args.full_decode))
                   if value]
        if ignored:
            raise FlagError(f"{', '.join(ignored)}: only with --checkpoint (--pred masks are "
                             "already thresholded at their size)")
    elif args.images or args.resize_pred:
        raise FlagError("--images and --resize-pred apply to --pred mode only")
    if args.worst < 0:
        raise FlagError("--worst must be 0 or more")


# ---------------------------------------------------------------- what to score


@dataclass(frozen=True)
class MaskFiles:
    """One image of --pred mode: its id, ground truth, prediction and (optional) image."""

    id: str
    truth: Path
    prediction: Path
    image: Path | None


def layout_split(root: Path, split: str | None) -> str:
    """``split``, or the first of val, test, train that the layout under ``root`` has."""
    if split is not None:
        return split
    folders = find_split_folders(root)
    return next(name for name in SPLIT_PREFERENCE if name in folders)


def training_pairs(info: dict[str, Any], split: str) -> tuple[Path, list[Pair]]:
    """The data folder and the pairs of ``split`` exactly as train.py split them: train and val
    from its own logic (held-out fraction or official val), test from the layout."""
    if "args" not in info:
        raise CheckpointError("the model file does not record its training data; pass --data")
    train_args = info["args"]
    root = training_data_root(train_args["data"])
    settings = SplitSettings(**{f.name: train_args[f.name] for f in fields(SplitSettings)})
    if split == "test":
        return root, find_pairs(root, "test", skip_unpaired=settings.skip_unpaired)
    train_set, val_set = training_splits(root, settings)
    return root, train_set if split == "train" else val_set


def training_data_root(data: str) -> Path:
    """The data folder a model was trained on, relative to the working directory or to the
    repository."""
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
    """The split to score of a --gt layout, or ``None`` for a plain folder of masks."""
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
    ``<id>.png``)."""
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


# ---------------------------------------------------------------- the worst cases


@dataclass(order=True)
class Case:
    """An image kept for the worst-case grid, with small copies of its masks."""

    jaccard: float
    id: str
    image: Path | None = field(compare=False)
    truth: np.ndarray = field(compare=False)
    prediction: np.ndarray = field(compare=False)


class WorstCases:
    """The ``count`` images of lowest Jaccard index among those offered, in increasing order."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._heap: list[tuple[float, str, Case]] = []  # keyed by -jaccard: the root is the best
        self._lock = threading.Lock()  # offered from the threads that score

    def offer(self, id_: str, jaccard: float, image: Path | None, truth: np.ndarray,
              prediction: np.ndarray) -> None:
        key = (-jaccard, id_)
        with self._lock:
            if len(self._heap) == self.count and (not self.count or key < self._heap[0][:2]):
                return
        case = Case(jaccard, id_, image, thumbnail(truth), thumbnail(prediction))
        with self._lock:
            if len(self._heap) < self.count:
                heapq.heappush(self._heap, (*key, case))
            elif key > self._heap[0][:2]:
                heapq.heapreplace(self._heap, (*key, case))

    def cases(self) -> list[Case]:
        return sorted(case for *_, case in self._heap)


def thumbnail(mask: np.ndarray) -> np.ndarray:
    """bool ``(H, W)`` -> bool, at most :data:`THUMBNAIL` pixels on its longest side."""
    scale = THUMBNAIL / max(mask.shape)
    if scale >= 1:
        return mask.copy()
    size = (max(1, round(mask.shape[1] * scale)), max(1, round(mask.shape[0] * scale)))
    return cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)


# ---------------------------------------------------------------- scoring


def score_row(id_: str, prediction: np.ndarray, truth: np.ndarray, image: Path | None,
              worst: WorstCases) -> dict[str, Any]:
    scores = score_masks(prediction, truth)
    worst.offer(id_, scores["jaccard"], image, truth, prediction)
    return {"id": id_, "height": truth.shape[0], "width": truth.shape[1], **scores}


def progress(total: int) -> tqdm:
    return tqdm(total=total, unit="image", disable=None, file=sys.stderr)


def score_original(predictor: Predictor, pairs: Sequence[Pair],
                   worst: WorstCases) -> list[dict[str, Any]]:
    """Predict each image at its original size (as predict.py does, decoding and scoring in
    threads beside the model) and score it there; rows in id order."""
    by_image = {pair.image: pair for pair in pairs}

    def score(path: Path, prediction: Prediction) -> dict[str, Any]:
        pair = by_image[path]
        truth = read_scored_mask(pair.mask)
        if truth.shape != prediction.mask.shape:
            raise DatasetError(
                f"mask {pair.mask} is {truth.shape[1]}x{truth.shape[0]} but image "
                f"{pair.image} is {prediction.mask.shape[1]}x{prediction.mask.shape[0]}; they "
                "must have the same size (as the image is shown, EXIF orientation applied)")
        return score_row(pair.id, prediction.mask, truth, pair.image, worst)

    rows = []
    with progress(len(pairs)) as bar:
        for _, outcome in predictor.predict_files(list(by_image), score):
            if isinstance(outcome, BaseException):
                raise outcome
            rows.append(outcome)
            bar.update()
    return sorted(rows, key=lambda row: row["id"])


def score_model_size(predictor: Predictor, pairs: Sequence[Pair],
                     worst: WorstCases) -> list[dict[str, Any]]:
    """Score at the model's input size exactly as train.py validates: the training data set
    class and transform, ``sigmoid(logits) > threshold``, the true mask ``> 0.5``."""
    dataset = ISICDataset(pairs, eval_transforms(predictor.img_size, predictor.mean,
                                                 predictor.std))
    images = {pair.id: pair.image for pair in pairs}
    rows = []
    with progress(len(pairs)) as bar:
        for batch in DataLoader(dataset, batch_size=predictor.batch_size):
            lesion = torch.sigmoid(predictor.predict_logits(batch["image"]).cpu())
            predicted = (lesion > predictor.threshold)[:, 0].numpy()
            truths = (batch["mask"] > 0.5)[:, 0].numpy()
            for id_, prediction, truth in zip(batch["id"], predicted, truths):
                prediction = postprocess(prediction, predictor.keep_largest,
                                         predictor.fill_holes)
                rows.append(score_row(id_, prediction, truth, images[id_], worst))
                bar.update()
    return rows


def score_files(files: Sequence[MaskFiles], args: argparse.Namespace,
                worst: WorstCases) -> list[dict[str, Any]]:
    """Score mask files, post-processed if asked."""
    rows = []
    for item in tqdm(files, unit="image", disable=None, file=sys.stderr):
        truth = read_scored_mask(item.truth)
        prediction = fit_to_truth(read_scored_mask(item.prediction), truth.shape,
                                  str(item.prediction), args.resize_pred)
        prediction = postprocess(prediction, args.keep_largest, args.fill_holes)
        rows.append(score_row(item.id, prediction, truth, item.image, worst))
    return rows


# ---------------------------------------------------------------- the report


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    columns = ["id", "height", "width", *METRICS, *COUNTS]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_summary(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'metric':<22}{'mean':>10}{'median':>10}{'std':>10}"]
    for name in METRICS:
        stats = summary["metrics"][name]
        cells = "".join(f"{v:>10.4f}" if v is not None else f"{'-':>10}"
                        for v in (stats["mean"], stats["median"], stats["std"]))
        lines.append(f"{LABELS[name]:<22}{cells}")
    if summary["hd95_undefined"]:
        lines[-1] += f"   ({summary['hd95_undefined']} undefined: one mask empty)"
    lines.append(f"ISIC 2018 ranking score (mean thresholded Jaccard): "
                 f"{summary['ranking_score']:.4f} over {summary['images']} images")
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histogram(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Per-image Jaccard index, with the challenge's 0.65 threshold."""
    plt = _pyplot()
    jaccard = [row["jaccard"] for row in rows]
    below = sum(value < JACCARD_THRESHOLD for value in jaccard)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(jaccard, bins=np.linspace(0, 1, 41), color="tab:blue")
    ax.axvline(JACCARD_THRESHOLD, color="tab:red", linestyle="--",
               label=f"threshold {JACCARD_THRESHOLD}: the {below} of {len(rows)} images "
               "below it score 0")
    ax.set(xlabel="Jaccard index per image", ylabel="images", xlim=(0, 1))
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_worst(cases: Sequence[Case], path: Path) -> None:
    """The worst images with the true (green) and predicted (red) lesion outlines."""
    plt = _pyplot()
    rows = max(1, -(-len(cases) // GRID_COLUMNS))
    fig, axes = plt.subplots(rows, GRID_COLUMNS, figsize=(3 * GRID_COLUMNS, 3 * rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, case in zip(axes.flat, cases):
        canvas = background(case)
        draw_contour(canvas, case.truth, TRUTH_RGB)
        draw_contour(canvas, case.prediction, PREDICTION_RGB)
        ax.imshow(canvas)
        ax.set_title(f"{case.id}\nJaccard {case.jaccard:.3f}", fontsize=9)
    fig.suptitle("lowest Jaccard: ground truth green, prediction red", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def background(case: Case) -> np.ndarray:
    """RGB uint8 at the thumbnail's size: the image, else the true lesion in grey."""
    height, width = case.truth.shape
    if case.image is None:
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[case.truth] = TRUTH_FILL
        return canvas
    return cv2.resize(read_image(case.image), (width, height), interpolation=cv2.INTER_AREA)


def write_report(rows: list[dict[str, Any]], worst: WorstCases, settings: dict[str, Any],
                 out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {**summarize(rows), "settings": settings}
    write_csv(rows, out_dir / "metrics.csv")
    write_summary(summary, out_dir / "summary.json")
    plot_histogram(rows, out_dir / "jaccard_histogram.png")
    plot_worst(worst.cases(), out_dir / "worst_cases.png")
    return summary


# ---------------------------------------------------------------- the two modes


def evaluate_checkpoint(args: argparse.Namespace, worst: WorstCases) -> tuple[list, dict, str]:
    """Rows, settings and the default report name of --checkpoint mode."""
    predictor = predictor_from_args(args)
    print(describe_model(predictor.checkpoint_path), flush=True)
    checkpoint = predictor.checkpoint_path
    if args.data is None:
        split = args.split or "val"
        root, pairs = training_pairs(predictor.info, split)
        data_label = f"{root.resolve().name}-training-{split}"
        if split == "val":
            print("note: train.py selected this checkpoint on this validation split, so these "
                  "scores are optimistic; report a held-out set too")
    else:
        root = data_root(args.data)
        split = layout_split(root, args.split)
        pairs = find_pairs(root, split)
        data_label = f"{root.resolve().name}-{split}"
    print(f"scoring {len(pairs)} images of {root} ({data_label}) at {args.resolution} "
          f"resolution on {predictor.device}")
    score = score_model_size if args.resolution == "model" else score_original
    rows = score(predictor, pairs, worst)
    settings = {"mode": "checkpoint", "checkpoint": str(checkpoint), "data": str(root),
                "split": split, "split_source": "layout" if args.data else "training",
                "resolution": args.resolution, "threshold": predictor.threshold,
                "tta": args.tta, "keep_largest": args.keep_largest,
                "fill_holes": args.fill_holes, "precision": args.precision,
                "full_decode": args.full_decode, "img_size": predictor.img_size}
    ckpt = Path(checkpoint)
    return rows, settings, f"{ckpt.parent.name}-{ckpt.stem}_{data_label}"


def evaluate_files(args: argparse.Namespace, worst: WorstCases) -> tuple[list, dict, str]:
    """Rows, settings and the default report name of --pred/--gt mode."""
    pred, gt = Path(args.pred), Path(args.gt)
    split = gt_split(gt, args.split)
    files = mask_files(pred, gt, Path(args.images) if args.images else None, split)
    print(f"scoring {len(files)} masks of {pred} against {gt}")
    rows = score_files(files, args, worst)
    settings = {"mode": "masks", "pred": str(pred), "gt": str(gt), "split": split,
                "resolution": "original", "resize_pred": args.resize_pred, "checkpoint": None,
                "threshold": None, "tta": False, "keep_largest": args.keep_largest,
                "fill_holes": args.fill_holes}
    gt_label = f"{gt.resolve().name}-{split}" if split else gt.resolve().name
    return rows, settings, f"{pred.resolve().name}-vs-{gt_label}"


def report_name(base: str, args: argparse.Namespace) -> str:
    """``base`` plus a suffix per non-default setting, so that runs do not overwrite others."""
    suffixes = [("model", args.resolution == "model"), ("tta", args.tta),
                ("fulldecode", args.full_decode),
                ("largest", args.keep_largest), ("filled", args.fill_holes),
                (f"t{args.threshold}", args.threshold is not None)]
    return "_".join([base, *(name for name, used in suffixes if used)])


def run(args: argparse.Namespace) -> int:
    check_args(args)
    worst = WorstCases(args.worst)
    evaluate = evaluate_files if args.pred else evaluate_checkpoint
    rows, settings, base = evaluate(args, worst)
    out_dir = Path(args.output) if args.output else RESULTS_DIR / report_name(base, args)
    summary = write_report(rows, worst, settings, out_dir)
    print(format_table(summary))
    print(f"report: {out_dir}/ (metrics.csv, summary.json, jaccard_histogram.png, "
          "worst_cases.png)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_script(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
