#!/usr/bin/env python
"""Export a trained model for deployment: safetensors (weights, no pickle) or ONNX.

    python scripts/export.py --checkpoint models/checkpoints/best.pt --format safetensors \\
        --output model.safetensors
    python scripts/export.py --checkpoint best.pt --format onnx --output model.onnx \\
        --check-images data/ISIC2018/ISIC2018_Task1-2_Validation_Input

Both formats carry the model's settings (architecture, image size, normalisation, threshold)
and its training provenance, so that `predict.py --checkpoint <file>` and the Predictor API
need nothing else. The ONNX graph has dynamic batch, height and width (any size, not only
multiples of 16) at opset 18 by default.

--check (on by default) predicts the check images with the exported file (ONNX Runtime for
ONNX) and with the original (PyTorch, float32), and prints the largest logit difference and the
share of mask pixels that agree at each image's full size; past --tolerance, or below
--min-agreement on any image, the export fails and no file is left behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import FlagError, UserError, run_script  # noqa: E402

FORMATS = ("safetensors", "onnx")
# Largest logit difference accepted by --check: float32 arithmetic in another order for ONNX
# and float32 safetensors, half-precision weights for fp16 and bf16, 8-bit kernels for int8.
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 0.05, "bf16": 0.25, "int8": 0.5}
MIN_AGREEMENT = 0.999


class ExportCheckError(UserError):
    """The exported model does not predict what the original does."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[1:]))
    p.add_argument("--checkpoint", default=None, help="best.pt of train.py or a .safetensors "
                   "export (default: models/checkpoints/best.pt if you trained one, else the "
                   "bundled ISIC model)")
    p.add_argument("--format", choices=FORMATS, required=True, help="what to write")
    p.add_argument("--output", type=Path, required=True, help="the file to write")
    p.add_argument("--dtype", choices=tuple(DEFAULT_TOLERANCE), default="fp32",
                   help="safetensors: the weights' precision (fp16 halves the file, masks agree "
                   "on about 99.99 %% of pixels; int8 quarters it, one scale per output channel, "
                   "about 99.9 %%); ONNX is always fp32 (default: fp32)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 17 or newer "
                   "(default: 18)")
    p.add_argument("--check", action=argparse.BooleanOptionalAction, default=True,
                   help="compare the exported model's predictions with the original's "
                   "(default: on)")
    p.add_argument("--check-images", nargs="+", default=None, metavar="PATH",
                   help="images for --check: files, folders, globs (default: the synthetic "
                   "validation images, generated on first use; real ones are better)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest logit difference --check accepts (default: " + ", ".join(
                       f"{limit:g} for {dtype}" for dtype, limit in DEFAULT_TOLERANCE.items())
                   + ")")
    p.add_argument("--min-agreement", type=float, default=MIN_AGREEMENT,
                   help="smallest share of agreeing mask pixels --check accepts on each image "
                   "(default: %(default)s)")
    return p


@dataclass
class CheckResult:
    """What --check measured: the largest logit difference and the largest difference of the
    quality estimates over all images, and the lowest share of agreeing mask pixels of any
    image (with its name)."""

    images: int
    max_logit_difference: float
    max_quality_difference: float
    min_agreement: float
    worst_image: str

    def format(self) -> str:
        return (f"check on {self.images} images: largest logit difference "
                f"{self.max_logit_difference:.2e}, largest quality difference "
                f"{self.max_quality_difference:.4f}, mask pixels agreeing "
                f"{self.min_agreement:.5%} at least ({self.worst_image})")


def compare(original, exported, paths: Sequence[Path]) -> CheckResult:
    """Predict ``paths`` with both :class:`inference.predictor.Predictor` objects and compare."""
    worst_difference = worst_quality = 0.0
    worst_agreement, worst_image = 1.0, ""
    for path in paths:
        loaded = original.read(path)
        outputs = [predictor.model_outputs(loaded.tensor[None])
                   for predictor in (original, exported)]
        logits = [image_logits[0] for image_logits, _ in outputs]
        worst_difference = max(worst_difference, float((logits[0] - logits[1]).abs().max()))
        first, second = (predictor.restore(image_logits[0], loaded, flips[0])
                         for predictor, (image_logits, flips) in zip((original, exported),
                                                                     outputs))
        worst_quality = max(worst_quality, abs(first.quality - second.quality))
        agreement = float((first.mask == second.mask).mean())
        if agreement < worst_agreement or not worst_image:
            worst_agreement, worst_image = agreement, path.name
    return CheckResult(len(paths), worst_difference, worst_quality, worst_agreement,
                       worst_image)


def check_images(patterns: Sequence[str] | None) -> list[Path]:
    from data.splits import data_root
    from inference.inputs import collect_inputs

    if patterns:
        return collect_inputs(patterns)
    return collect_inputs([str(data_root("synthetic") / "ISIC2018_Task1-2_Validation_Input")])


def export(args: argparse.Namespace) -> int:
    from inference.predictor import Predictor
    from models.bundled import default_model, describe_model
    from models.checkpoint import load_model_file, save_safetensors

    source = Path(args.checkpoint) if args.checkpoint else default_model()
    if args.format == "onnx" and args.dtype != "fp32":
        raise FlagError("--dtype applies to safetensors only; ONNX models are written in fp32")
    images = check_images(args.check_images) if args.check else []
    bundle = load_model_file(source)
    print(describe_model(source, bundle.info), flush=True)
    if args.format == "onnx":
        from models.onnx_model import OPSET, export_onnx

        export_onnx(bundle, args.output, args.opset or OPSET)
    else:
        save_safetensors(bundle, args.output, args.dtype)
    size = args.output.stat().st_size
    print(f"wrote {args.output} ({args.format}, {size / 2**20:.2f} MiB)", flush=True)
    if not args.check:
        return 0
    try:
        result = compare(Predictor(source, device="cpu", precision="fp32"),
                         Predictor(args.output, device="cpu", precision="fp32"), images)
        print(result.format())
        tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[
            args.dtype]
        if result.max_logit_difference > tolerance or result.min_agreement < args.min_agreement:
            raise ExportCheckError(
                f"the exported model differs from {source}: {result.format()}; limits: logit "
                f"difference {tolerance:g}, agreement {args.min_agreement:.3%}; "
                f"{args.output} was removed")
    except BaseException:
        args.output.unlink(missing_ok=True)
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_script(lambda: export(args))


if __name__ == "__main__":
    sys.exit(main())
