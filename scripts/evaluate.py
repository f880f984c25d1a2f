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
and HD95: see evaluation/scores.py. Writes metrics.csv (one row per image), summary.json,
jaccard_histogram.png and worst_cases.png under results/<name>/ (or --output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from common.errors import FlagError, run_script  # noqa: E402
from data.layouts import SPLITS  # noqa: E402
from inference.settings import add_prediction_options  # noqa: E402

if TYPE_CHECKING:
    from evaluation.report import Evaluation

RESULTS_DIR = Path("results")
WORST_CASES = 8


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
    g.add_argument("--non-dermoscopy", default=None, metavar="DIR",
                   help="a folder of pictures that are not dermoscopy: report how many the "
                   "model's dermoscopy check flags (--checkpoint mode)")
    g.add_argument("--variants", type=int, default=0, metavar="K",
                   help="also count how many of K copies of every image under each acquisition "
                   "variant (another camera, a round field of view, bright light, low "
                   "resolution, a stronger magnification) the dermoscopy check flags "
                   "(--checkpoint mode)")
    g.add_argument("--variant-seed", type=int, default=7,
                   help="seed of the --variants copies")
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
                                            ("--full-decode", args.full_decode),
                                            ("--non-dermoscopy", args.non_dermoscopy),
                                            ("--variants", args.variants),
                                            ("--review-below", args.review_below))
                   if value]
        if ignored:
            raise FlagError(f"{', '.join(ignored)}: only with --checkpoint (--pred masks are "
                             "already thresholded at their size)")
    elif args.images or args.resize_pred:
        raise FlagError("--images and --resize-pred apply to --pred mode only")
    if args.worst < 0:
        raise FlagError("--worst must be 0 or more")
    if args.variants < 0:
        raise FlagError("--variants must be 0 or more")


def evaluate_checkpoint(args: argparse.Namespace) -> tuple[Evaluation, str]:
    """--checkpoint mode: the model predicts the masks of a data split; the evaluation and the
    report's default name."""
    from evaluation.report import EvaluationSettings
    from evaluation.scoring import (
        check_acquisition_variants,
        check_non_dermoscopy,
        evaluate_model,
    )
    from evaluation.sources import scored_set
    from inference.inputs import collect_inputs
    from inference.predictor import Predictor
    from inference.settings import PredictionSettings
    from models.bundled import describe_model

    predictor = Predictor(args.checkpoint, PredictionSettings.from_args(args))
    chosen = predictor.settings
    print(describe_model(predictor.checkpoint_path, predictor.info), flush=True)
    scored = scored_set(predictor.info, args.data, args.split)
    if scored.split_source == "training" and scored.split == "val":
        print("note: train.py selected this checkpoint on this validation split, so these "
              "scores are optimistic; report a held-out set too")
    print(f"scoring {len(scored.pairs)} images of {scored.root} ({scored.label}) at "
          f"{args.resolution} resolution on {predictor.device}")
    settings = EvaluationSettings(
        mode="checkpoint", data=str(scored.root), split=scored.split,
        split_source=scored.split_source, resolution=args.resolution,
        checkpoint=str(predictor.checkpoint_path), threshold=chosen.threshold, tta=chosen.tta,
        keep_largest=chosen.keep_largest, fill_holes=chosen.fill_holes,
        precision=chosen.precision, full_decode=chosen.full_decode, img_size=predictor.img_size,
        quality=chosen.quality, review_below=chosen.review_below,
        mm_per_pixel=chosen.mm_per_pixel)
    evaluation = evaluate_model(predictor, scored.pairs, settings, args.worst)
    if args.non_dermoscopy:
        evaluation.non_dermoscopy = check_non_dermoscopy(
            predictor, collect_inputs([args.non_dermoscopy], "--non-dermoscopy"))
    if args.variants:
        evaluation.acquisition_variants = check_acquisition_variants(
            predictor, [pair.image for pair in scored.pairs], args.variants, args.variant_seed)
    checkpoint = predictor.checkpoint_path
    return evaluation, f"{checkpoint.parent.name}-{checkpoint.stem}_{scored.label}"


def evaluate_masks(args: argparse.Namespace) -> tuple[Evaluation, str]:
    """--pred/--gt mode: mask files scored against their ground truth; the evaluation and the
    report's default name."""
    from evaluation.report import EvaluationSettings
    from evaluation.scoring import evaluate_mask_files
    from evaluation.sources import data_label, gt_split, mask_files

    pred, gt = Path(args.pred), Path(args.gt)
    split = gt_split(gt, args.split)
    files = mask_files(pred, gt, Path(args.images) if args.images else None, split)
    print(f"scoring {len(files)} masks of {pred} against {gt}")
    settings = EvaluationSettings(
        mode="masks", data=str(gt), split=split, split_source="layout" if split else "folder",
        predictions=str(pred), keep_largest=args.keep_largest, fill_holes=args.fill_holes,
        resize_pred=args.resize_pred)
    return (evaluate_mask_files(files, settings, args.worst),
            f"{pred.resolve().name}-vs-{data_label(gt, split)}")


def report_name(base: str, args: argparse.Namespace) -> str:
    """``base`` plus a suffix per non-default setting, so that runs do not overwrite others."""
    suffixes = [("model", args.resolution == "model"), ("tta", args.tta),
                ("fulldecode", args.full_decode),
                ("largest", args.keep_largest), ("filled", args.fill_holes),
                (f"t{args.threshold}", args.threshold is not None)]
    return "_".join([base, *(name for name, used in suffixes if used)])


def run(args: argparse.Namespace) -> int:
    from evaluation.report import REPORT_FILES, format_table, write_report

    check_args(args)
    evaluation, base = evaluate_masks(args) if args.pred else evaluate_checkpoint(args)
    out_dir = Path(args.output) if args.output else RESULTS_DIR / report_name(base, args)
    summary = write_report(evaluation, out_dir)
    print(format_table(summary))
    print(f"report: {out_dir}/ ({', '.join(REPORT_FILES)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_script(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
