#!/usr/bin/env python
"""Fit a model's calibration on held-out images and store it in the model file.

    python scripts/calibrate.py --checkpoint models/checkpoints/best.pt
    python scripts/calibrate.py --checkpoint model.onnx --data data/ISIC2018 --split val \
        --training-data data/ISIC2018
    python scripts/calibrate.py --checkpoint best.pt --quality-from folds/fold*/best.pt

What is fitted (inference/calibration.py; fitted by evaluation/fitting.py): the temperature that
makes the probability maps mean what they say, the quality estimate of each mask and the quality
below which a mask is flagged for review, on held-out images with experts' masks; the dermoscopy
check on the images the model was trained on. By default both are the model's own: the
validation split train.py held out and its training split (read from the model file). train.py
calibrates best.pt this way when it finishes; run this for a model trained before, an export, or
other held-out images. Never fit on the images you will report the model's scores on.

--quality-from fits the quality estimate and review threshold on many more held-out predictions:
those of models trained with `train.py --fold K --folds N` (K = 0 .. N-1, the same recipe), each
on the fold it held out, so that every training image is predicted once by a model that never
saw it (docs/experiments.md, "Quality estimate"). The temperature is still the model's own.

The model file (a best.pt, .safetensors or .onnx) is updated in place, its weights unchanged,
unless --output names a copy to write.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import run_script  # noqa: E402
from common.options import add_hardware_options  # noqa: E402
from data.layouts import SPLITS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--checkpoint", required=True,
                   help="the model file: a best.pt of train.py, or a .safetensors or .onnx export")
    p.add_argument("--data", default=None, help="held-out images with masks, in any layout the "
                   "reader knows (default: the model's own validation split)")
    p.add_argument("--split", choices=SPLITS, default=None,
                   help="split of --data (default: val, else test, else train)")
    p.add_argument("--training-data", default=None, help="the images the model was trained on, "
                   "for the dermoscopy check (default: the model's own training split); its "
                   "train split is read")
    p.add_argument("--model-data", default=None, help="where the data the model was trained on "
                   "is now, when it has moved (default: the folder its training recorded)")
    p.add_argument("--quality-from", nargs="+", default=None, metavar="MODEL",
                   help="fit the quality estimate and review threshold on these models' "
                   "predictions of the folds they held out (train.py --fold) instead of on "
                   "--data")
    p.add_argument("--output", default=None,
                   help="write a calibrated copy here instead of updating --checkpoint")
    add_hardware_options(p)
    return p


def calibrate(args: argparse.Namespace) -> int:
    from data.layouts import find_pairs
    from evaluation.fitting import calibrate_file, out_of_fold_samples
    from evaluation.sources import layout_split, training_data_root, training_pairs
    from inference.predictor import Predictor

    source = Path(args.checkpoint)
    target = Path(args.output) if args.output else source
    if target != source:
        shutil.copyfile(source, target)
    predictor = Predictor(target, device=args.device, precision=args.precision)
    info = predictor.info
    if args.model_data and "args" in info:
        info = {**info, "args": {**info["args"], "data": args.model_data}}
    if args.data:
        root = training_data_root(args.data)
        split = layout_split(root, args.split)
        held_out, held_name = find_pairs(root, split), f"the {split} split of {root.name}"
    else:
        root, held_out = training_pairs(info, "val")
        held_name = f"the validation split train.py held out of {root.name}"
    if args.training_data:
        training = find_pairs(training_data_root(args.training_data), "train")
        training_name = Path(args.training_data).name
    else:
        root, training = training_pairs(info, "train")
        training_name = f"the model's training split of {root.name}"
    out_of_fold = None
    if args.quality_from:
        models = [Predictor(path, device=args.device, precision=args.precision)
                  for path in args.quality_from]
        out_of_fold = out_of_fold_samples(models)
        quality_name = (f"quality: {len(out_of_fold.signals)} out-of-fold predictions of "
                        f"{len(models)} models, each on the fold it held out; temperature")
    else:
        quality_name = "quality and temperature"
    fitted_on = (f"{quality_name}: {len(held_out)} images of {held_name}; dermoscopy "
                 f"check: {len(training)} images of {training_name}")
    print(f"calibrating {source} on {fitted_on}", flush=True)
    report = calibrate_file(predictor, held_out, training, fitted_on, out_of_fold=out_of_fold)
    print("\n".join(report.lines()))
    print(f"wrote {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_script(lambda: calibrate(args))


if __name__ == "__main__":
    sys.exit(main())
