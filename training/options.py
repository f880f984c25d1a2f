"""The flags of ``train.py``, its presets, and the order in which they apply: defaults, then
the preset, then the resumed run's arguments or the ``--init`` model's architecture, then the
flags given on the command line."""

from __future__ import annotations

import argparse
from typing import Any

from common.errors import FlagError
from common.options import add_hardware_options, check_minimum
from data.dataset import AUGMENTATIONS
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from data.splits import SplitSettings
from data.workers import SECONDS_PER_IMAGE, STALL_SECONDS
from models.bundled import model_path
from models.checkpoint import load_checkpoint, load_model_file
from models.unet import LEGACY_CONFIG, UNetConfig
from models.unet_parts import NORMS
from utils import LOSS_NAMES

COMPILE_CHOICES = ("auto", "on", "off")
BEST_EPOCH_CHOICES = ("val-dice", "last")
ARCHITECTURE_FLAGS = ("img_size", "base_channels", "depth", "bilinear", "norm",
                      "deep_supervision")
DEFAULT_CHECKPOINT_DIR = "models/checkpoints"

# Named sets of defaults; flags given on the command line still win. cpu-demo and cpu-budget
# are measured (README, docs/experiments.md); isic2018-gpu is a recommendation for one GPU.
PRESETS: dict[str, dict[str, Any]] = {
    # Its own folder: the demo's model must not become the model predict.py uses by default.
    "cpu-demo": dict(data="synthetic", img_size=96, base_channels=16, epochs=6, batch_size=8,
                     lr=3e-3, warmup=0.05, checkpoint_dir="models/checkpoints/demo"),
    # --epochs is a ceiling: the --max-minutes budget ends the run. 96 px: 1.7 times the epochs
    # of 128 px in the budget, which a CPU computing in fp32 needs to reach 0.90 full-res Dice
    # in 10 minutes, and no worse on a bf16 CPU (docs/experiments.md, "One recipe for every
    # CPU"); compiled only where compiling was measured faster.
    "cpu-budget": dict(img_size=96, base_channels=16, max_minutes=10, epochs=100, batch_size=8,
                       lr=1e-3, ema=0.99, compile="auto"),
    # Starting from a trained model (--init, which applies it when no preset is named): a few
    # dozen images of a new clinic, in minutes on a CPU, measured in docs/training.md
    # ("Fine-tuning"). The last epoch is kept (a few held-out corrections choose an epoch by
    # chance), averaged half and half with the initial weights.
    "finetune": dict(lr=1e-4, warmup=0.05, batch_size=8, epochs=100, max_minutes=5,
                     augment="flips", ema=0.99, replay_share=0.5, best_epoch="last",
                     init_share=0.5),
    "isic2018-gpu": dict(img_size=256, base_channels=64, epochs=100, batch_size=16, lr=1e-3,
                         ema=0.999, official_val=True, compile="auto"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for on/off switches, where "(default: False)" only confuses."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def describe_preset(settings: dict[str, Any]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def build_parser(description: str = "Train a U-Net for skin-lesion segmentation."
                 ) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="named set of defaults "
                   "(explicit flags still win): " + "; ".join(
                       f"{name} = {describe_preset(v)}" for name, v in PRESETS.items()))
    add_data_options(p.add_argument_group("data"))
    add_model_options(p.add_argument_group("model"))
    add_optimisation_options(p.add_argument_group("optimisation"))
    g = p.add_argument_group("hardware")
    add_hardware_options(g, channels_last=True)
    g.add_argument("--compile", nargs="?", const="on", default="off", choices=COMPILE_CHOICES,
                   help="torch.compile the training model: fused kernels, after a compilation "
                   "of about 40 s on a CPU. auto: on CUDA GPUs and on CPUs computing in bf16, "
                   "where it was measured faster, not on CPUs computing in fp32, where it was "
                   "measured slower (docs/speed.md); the presets' setting. --compile alone: on")
    g.add_argument("--no-compile", dest="compile", action="store_const", const="off",
                   help="do not compile (as --compile off)")
    g.add_argument("--dist-timeout", type=float, default=10.0, help="minutes after which a "
                   "collective that cannot complete (another process died) ends the run")
    add_output_options(p.add_argument_group("output"))
    return p


def add_data_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", default="data/ISIC2018", help="folder in an ISIC layout (or "
                   "images/ + masks/), or 'synthetic' to generate and use data/synthetic/")
    g.add_argument("--img-size", type=int, default=256, help="square training size in pixels")
    g.add_argument("--val-fraction", type=float, default=SplitSettings.val_fraction,
                   help="fraction of the training pairs held out for validation")
    g.add_argument("--official-val", action="store_true", help="validate on the data's "
                   "official validation folder instead of a held-out fraction")
    g.add_argument("--fold", type=int, default=None, help="validate on this fold (0 to "
                   "--folds - 1) of a seeded partition of the training pairs instead of a "
                   "held-out fraction: one run per fold predicts every image once, unseen "
                   "(out-of-fold predictions for scripts/calibrate.py --quality-from)")
    g.add_argument("--folds", type=int, default=SplitSettings.folds,
                   help="number of parts of the --fold partition")
    g.add_argument("--skip-unpaired", action="store_true",
                   help="ignore images without masks and masks without images")
    g.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes per process (default: min(4, cores))")
    g.add_argument("--no-cache", dest="cache", action="store_false", help="decode and resize "
                   "the original files every epoch instead of reading the preparation cache "
                   "(built on first use, as `python scripts/prepare.py` does)")
    g.add_argument("--cache-dir", default=None, help="folder of the preparation caches (the "
                   "data folder may be read-only); None: data/cache/ of this repository")
    g.add_argument("--replay", default=None, metavar="DIR", help="mix the training images of "
                   "this data folder (the data the --init model was trained on, or any ISIC "
                   "folder) into every batch, so that the model keeps what it knew")
    g.add_argument("--replay-share", type=float, default=0.5, help="share of every batch drawn "
                   "from --replay")
    g.add_argument("--data-timeout", type=float, default=None, help="seconds to wait for one "
                   f"batch from the worker processes before the run ends with an error (a stuck "
                   f"worker or file system); default: {STALL_SECONDS:.0f}, or "
                   f"{SECONDS_PER_IMAGE:.0f} per image of a larger batch (16 PNG photos of "
                   "6000x4000 were measured at 7.4 s)")


def add_model_options(g: argparse._ArgumentGroup) -> None:
    defaults = UNetConfig()
    g.add_argument("--init", default=None, metavar="MODEL", help="start from the weights of a "
                   "model file: 'bundled', a best.pt or last.pt, or a .safetensors export; its "
                   "architecture and image size are the run's (a flag that contradicts them is "
                   "an error), and --preset finetune applies unless another preset is named")
    g.add_argument("--init-share", type=float, default=0.0, help="with --init: best.pt holds "
                   "this share of the initial model's weights plus the rest of the trained "
                   "ones, averaged when the run ends (WiSE-FT), which keeps more of what the "
                   "initial model knew")
    g.add_argument("--base-channels", type=int, default=defaults.base_channels,
                   help="width of the first U-Net level (64: the paper's 31 M parameters)")
    g.add_argument("--depth", type=int, default=defaults.depth,
                   help="number of down-sampling steps")
    g.add_argument("--bilinear", action="store_true",
                   help="bilinear upsampling + 1x1 conv instead of transposed convolutions")
    g.add_argument("--norm", default=defaults.norm, choices=NORMS,
                   help="GroupNorm (normalises each image by itself; measured in "
                   "docs/experiments.md) or BatchNorm")
    g.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction,
                   default=defaults.deep_supervision,
                   help="extra loss terms from 1x1 heads on the decoder's coarser levels "
                   "(training only; measured in docs/experiments.md)")


def add_optimisation_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, default=50, help="number of epochs")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after this many "
                   "minutes of training, then validate and save; the schedule follows the budget")
    g.add_argument("--batch-size", type=int, default=16, help="images per step per process")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--warmup", type=float, default=0.1, help="fraction of training spent "
                   "warming the learning rate up (measured in docs/experiments.md)")
    g.add_argument("--min-lr-ratio", type=float, default=0.01,
                   help="final learning rate as a fraction of --lr (cosine decay)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip; 0 is off")
    g.add_argument("--loss", default="bce_dice", choices=LOSS_NAMES,
                   help="a per-pixel term (bce, focal) + a per-image region term (dice; "
                   "tversky: alpha 0.3, beta 0.7, favouring sensitivity); see utils.py")
    g.add_argument("--augment", default="default", choices=AUGMENTATIONS,
                   help="augmentation policy (see data/dataset.py: train_transforms)")
    g.add_argument("--ema", type=float, default=0.99, help="decay of an exponential moving "
                   "average of the weights, which is validated and saved; 0 is off")
    g.add_argument("--seed", type=int, default=SplitSettings.seed,
                   help="seed for split, init and augmentation")


def add_output_options(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--checkpoint-dir", default=DEFAULT_CHECKPOINT_DIR, help="where best.pt "
                   "(by validation Dice), last.pt and the metrics record are written")
    g.add_argument("--best-epoch", default="val-dice", choices=BEST_EPOCH_CHOICES,
                   help="which epoch's weights best.pt holds: val-dice, the highest validation "
                   "Dice; last, the final epoch's (for validation sets too small to choose by, "
                   "as in the finetune preset)")
    g.add_argument("--resume", default=None, help="continue from a last.pt checkpoint")
    g.add_argument("--log-interval", type=int, default=10,
                   help="steps between loss read-outs (each one synchronises the device)")
    g.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline "
                   "when no credentials are found or the service cannot be reached)")
    g.add_argument("--wandb-project", default="isic-unet", help="W&B project name")


def defaults() -> argparse.Namespace:
    """Every flag's default, as a run without flags gets them."""
    return build_parser().parse_args([])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Defaults, then the preset, then the resumed run's arguments, then explicit flags: each
    layer becomes the parser's defaults, which flags on the command line override.

    Raises:
        FlagError: an architecture flag that differs from the resumed run's.
        CheckpointError: the ``--resume`` file cannot be read.
    """
    parser = build_parser()
    first = parser.parse_args(argv)
    preset = first.preset or ("finetune" if first.init else None)
    parser.set_defaults(**PRESETS.get(preset, {}))
    if first.init is not None:
        if first.resume is not None:
            raise FlagError("--init and --resume together: a resumed run continues from its "
                            "own weights; leave out --init")
        return fixed_architecture(parser, argv, initial_args(first.init),
                                  f"the --init model ({first.init})")
    if first.resume is None:
        return parser.parse_args(argv)
    return fixed_architecture(parser, argv, resumed_args(first.resume),
                              f"the resumed run ({first.resume})")


def fixed_architecture(parser: argparse.ArgumentParser, argv: list[str] | None,
                       saved: dict[str, Any], source: str) -> argparse.Namespace:
    """The flags with ``saved`` as defaults, refusing an architecture flag that differs from
    the saved model's.

    Raises:
        FlagError: naming the flag, the saved value and ``source``.
    """
    parser.set_defaults(**saved)
    args = parser.parse_args(argv)
    for name in ARCHITECTURE_FLAGS:  # with the saved value as default, a difference is a flag
        if getattr(args, name) != saved[name]:
            flag = f"--{name.replace('_', '-')}"
            raise FlagError(f"{flag} {getattr(args, name)} contradicts {source}, which has "
                            f"{saved[name]}; leave {flag} out")
    return args


def initial_args(name: str) -> dict[str, Any]:
    """The architecture and image size of the model file ``--init`` names.

    Raises:
        CheckpointError: the file cannot be read as a model of this project.
        FlagError: its normalisation is not the one ``train.py`` trains with.
    """
    bundle = load_model_file(model_path(name))
    if (bundle.mean, bundle.std) != (tuple(IMAGENET_MEAN), tuple(IMAGENET_STD)):
        raise FlagError(f"--init {name}: the model normalises its input with mean {bundle.mean} "
                        f"and std {bundle.std}, train.py with the ImageNet values; fine-tune it "
                        "with the code that trained it")
    config = bundle.config
    return {"img_size": bundle.img_size, "base_channels": config.base_channels,
            "depth": config.depth, "bilinear": config.bilinear, "norm": config.norm,
            "deep_supervision": config.deep_supervision}


def resumed_args(path: str) -> dict[str, Any]:
    """The flags a ``last.pt`` was trained with (its tensors are mapped, not read); runs saved
    before a flag existed get the value they ran with."""
    saved = {**LEGACY_CONFIG, **load_checkpoint(path, mmap=True)["args"]}
    if isinstance(saved.get("compile"), bool):  # an on/off switch before --compile auto
        saved["compile"] = "on" if saved["compile"] else "off"
    return saved


POSITIVE_INTEGERS = ("epochs", "batch_size", "img_size", "base_channels", "depth",
                     "log_interval")


def check_args(args: argparse.Namespace) -> None:
    """Refuse values that cannot work, one message per flag.

    Raises:
        FlagError: naming the flag, its value and what it must be.
    """
    check_minimum({name: getattr(args, name) for name in POSITIVE_INTEGERS})
    checks = [
        ("lr", args.lr > 0, "must be positive"),
        ("workers", args.workers is None or args.workers >= 0, "must be 0 or more"),
        ("replay_share", 0 < args.replay_share < 1, "must be in (0, 1)"),
        ("init_share", 0 <= args.init_share < 1 and (args.init or not args.init_share),
         "must be in [0, 1), and above 0 only with --init"),
        ("data_timeout", args.data_timeout is None or args.data_timeout > 0,
         "must be more than 0 seconds"),
        ("warmup", 0 <= args.warmup < 1, "must be in [0, 1)"),
        ("min_lr_ratio", 0 <= args.min_lr_ratio <= 1, "must be in [0, 1]"),
        ("weight_decay", args.weight_decay >= 0, "must be 0 or more"),
        ("grad_clip", args.grad_clip >= 0, "must be 0 (off) or more"),
        ("ema", 0 <= args.ema < 1, "must be in (0, 1), or 0 for off"),
        ("max_minutes", args.max_minutes is None or args.max_minutes > 0, "must be positive"),
        ("dist_timeout", args.dist_timeout > 0, "must be positive"),
    ]
    for name, ok, rule in checks:
        if not ok:
            raise FlagError(f"--{name.replace('_', '-')} {rule}, got {getattr(args, name)}")
    if args.fold is not None and (args.official_val or args.folds < 2
                                  or not 0 <= args.fold < args.folds):
        raise FlagError(f"--fold {args.fold} --folds {args.folds}: --folds must be 2 or more, "
                        f"--fold from 0 to {args.folds - 1}, and --official-val left out")
    if not (0 < args.val_fraction < 1 or (args.official_val and args.val_fraction == 0)):
        raise FlagError(f"--val-fraction must be in (0, 1) (or 0 with --official-val), got "
                        f"{args.val_fraction}")


def split_settings(args: argparse.Namespace) -> SplitSettings:
    """The validation split a run's arguments define."""
    return SplitSettings(args.official_val, args.val_fraction, args.seed, args.skip_unpaired,
                         args.fold, args.folds)
