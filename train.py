"""Train a U-Net for skin-lesion segmentation on ISIC data (or the built-in synthetic set).

    python train.py                                  # data/ISIC2018, 256x256, as the paper
    python train.py --data synthetic --preset cpu-demo   # offline demo, a few minutes on a CPU
    torchrun --nproc_per_node 4 train.py ...         # DDP, detected from the environment
    python train.py --resume models/checkpoints/last.pt

Read top to bottom: arguments, distributed setup, data, model, then the epoch loop. Only rank 0
prints, logs to W&B and writes checkpoints. The learning rate is a pure function of progress
(steps done, or time spent under --max-minutes), so a resumed or budgeted run anneals exactly.
"""

from __future__ import annotations

import argparse
import math
import netrc
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm import tqdm

from data.cache import DEFAULT_CACHE_ROOT, PreparedCache, prepare_splits
from data.dataset import (
    AUGMENTATIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ISICDataset,
    SeededSampler,
    eval_transforms,
    init_loader_worker,
    split_pairs,
    train_transforms,
)
from data.layouts import DatasetError, find_pairs
from data.synthetic import ensure_synthetic_isic
from models import UNetConfig, build_model, count_parameters
from models.unet_parts import NORMS
from utils import (
    LOSS_NAMES,
    CheckpointError,
    ModelEMA,
    SegmentationLoss,
    autocast_dtype,
    binary_scores,
    load_checkpoint,
    rng_state,
    run_script,
    save_checkpoint,
    seed_everything,
    select_device,
    set_rng_state,
)

REPO_ROOT = Path(__file__).resolve().parent
SYNTHETIC_DIR = REPO_ROOT / "data" / "synthetic"
ARCHITECTURE_FLAGS = ("img_size", "base_channels", "depth", "bilinear", "norm",
                      "deep_supervision")
# What runs saved before these flags existed were trained with.
LEGACY_ARCHITECTURE = {"norm": "batch", "deep_supervision": False}

# Named sets of defaults; flags given on the command line still win.
# cpu-demo and cpu-budget were measured on a 2-core CPU (README, docs/experiments.md);
# isic2018-gpu is a recommendation for one GPU, not yet measured.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu-demo": dict(data="synthetic", img_size=96, base_channels=16, epochs=6, batch_size=8,
                     lr=3e-3, warmup=0.05),
    # --epochs is a ceiling: the --max-minutes budget ends the run (30 min, 2 cores: 29 epochs).
    "cpu-budget": dict(img_size=128, base_channels=16, max_minutes=10, epochs=100, batch_size=8,
                       lr=1e-3, ema=0.99),
    "isic2018-gpu": dict(img_size=256, base_channels=64, epochs=100, batch_size=16, lr=1e-3,
                         ema=0.999, official_val=True),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except for on/off switches, where "(default: False)" only confuses."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.nargs == 0 else super()._get_help_string(action)


def describe_preset(settings: dict[str, Any]) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in settings.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), help="named set of defaults "
                   "(explicit flags still win): " + "; ".join(
                       f"{name} = {describe_preset(v)}" for name, v in PRESETS.items()))
    g = p.add_argument_group("data")
    g.add_argument("--data", default="data/ISIC2018", help="folder in an ISIC layout (or "
                   "images/ + masks/), or 'synthetic' to generate and use data/synthetic/")
    g.add_argument("--img-size", type=int, default=256, help="square training size in pixels")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the training pairs held out for validation")
    g.add_argument("--official-val", action="store_true", help="validate on the data's "
                   "official validation folder instead of a held-out fraction")
    g.add_argument("--skip-unpaired", action="store_true",
                   help="ignore images without masks and masks without images")
    g.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="DataLoader worker processes per GPU/process")
    g.add_argument("--no-cache", dest="cache", action="store_false", help="decode and resize "
                   "the original files every epoch instead of reading the preparation cache "
                   "(built on first use, as `python scripts/prepare.py` does)")
    g.add_argument("--cache-dir", default=None, help="folder of the preparation caches (the "
                   "data folder may be read-only); None: data/cache/ of this repository")
    g = p.add_argument_group("model")
    g.add_argument("--base-channels", type=int, default=64,
                   help="width of the first U-Net level (64: the paper's 31 M parameters)")
    g.add_argument("--depth", type=int, default=4, help="number of down-sampling steps")
    g.add_argument("--bilinear", action="store_true",
                   help="bilinear upsampling + 1x1 conv instead of transposed convolutions")
    g.add_argument("--norm", default="group", choices=NORMS,
                   help="GroupNorm (normalises each image by itself; measured in "
                   "docs/experiments.md) or BatchNorm")
    g.add_argument("--deep-supervision", action=argparse.BooleanOptionalAction, default=True,
                   help="extra loss terms from 1x1 heads on the decoder's coarser levels "
                   "(training only; on by default, measured in docs/experiments.md)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=50, help="number of epochs")
    g.add_argument("--max-minutes", type=float, default=None, help="stop after this many "
                   "minutes of training, then validate and save; the schedule follows the budget")
    g.add_argument("--batch-size", type=int, default=16, help="images per step per process")
    g.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay")
    g.add_argument("--warmup", type=float, default=0.1,
                   help="fraction of training spent warming the learning rate up (0.1: measured in "
                   "docs/experiments.md)")
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
    g.add_argument("--seed", type=int, default=0, help="seed for split, init and augmentation")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, cuda:1")
    g.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 autocast where supported (Ampere+ GPUs, recent CPUs), fp16 "
                   "on older GPUs, else fp32")
    g.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="keep the NCHW memory format (channels_last is faster with autocast)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model (worth it on GPUs for long runs)")
    g = p.add_argument_group("output")
    g.add_argument("--checkpoint-dir", default="models/checkpoints",
                   help="where best.pt (by validation Dice) and last.pt are written")
    g.add_argument("--resume", default=None, help="continue from a last.pt checkpoint")
    g.add_argument("--log-interval", type=int, default=10,
                   help="steps between loss read-outs (each one synchronises the device)")
    g.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline "
                   "when no credentials are found)")
    g.add_argument("--wandb-project", default="isic-unet", help="W&B project name")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Defaults, then the preset, then the resumed run's arguments, then explicit flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = vars(parser.parse_args([]))
    explicit = vars(explicit_flags(parser, argv))
    settings.update(PRESETS.get(args.preset, {}))
    if args.resume:
        saved = {**LEGACY_ARCHITECTURE, **load_checkpoint(args.resume)["args"]}
        for name in ARCHITECTURE_FLAGS:
            if name in explicit and explicit[name] != saved[name]:
                raise ValueError(f"--{name.replace('_', '-')} cannot change when resuming "
                                 f"(the checkpoint has {saved[name]})")
        settings.update(saved)
    settings.update(explicit)
    return argparse.Namespace(**settings)


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Only the flags given on the command line."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    positive = ("epochs", "batch_size", "img_size", "base_channels", "depth", "log_interval")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0 or args.workers < 0 or not 0 <= args.warmup < 1:
        raise ValueError("--lr must be positive, --workers >= 0 and --warmup in [0, 1)")
    if not (0 < args.val_fraction < 1 or (args.official_val and args.val_fraction == 0)):
        raise ValueError(f"--val-fraction must be in (0, 1) (or 0 with --official-val), got "
                         f"{args.val_fraction}")
    if args.max_minutes is not None and args.max_minutes <= 0:
        raise ValueError("--max-minutes must be positive")


def lr_at(progress: float, args: argparse.Namespace) -> float:
    """Linear warmup for the first ``args.warmup`` of training, then cosine decay to
    ``args.min_lr_ratio * args.lr``; ``progress`` in [0, 1]."""
    if progress < args.warmup:
        return args.lr * (progress + 1e-3) / args.warmup
    decay = min(1.0, (progress - args.warmup) / (1 - args.warmup))
    ratio = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * decay))
    return args.lr * ratio


# ---------------------------------------------------------------- distributed setup


def setup_distributed(args: argparse.Namespace) -> tuple[int, int, torch.device]:
    """Rank, world size and device; initialises the process group under torchrun."""
    if "RANK" not in os.environ:
        return 0, 1, select_device(args.device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    device = select_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# ---------------------------------------------------------------- data


def resolve_data_root(args: argparse.Namespace, is_main: bool) -> Path:
    if args.data != "synthetic":
        return Path(args.data)
    if is_main:
        ensure_synthetic_isic(SYNTHETIC_DIR)
    if dist.is_initialized():
        dist.barrier()  # the other ranks wait for rank 0 to write the data set
    return SYNTHETIC_DIR


def load_splits(args: argparse.Namespace, root: Path) -> tuple[list, list]:
    pairs = find_pairs(root, "train", skip_unpaired=args.skip_unpaired)
    if args.official_val:
        return pairs, find_pairs(root, "val", skip_unpaired=args.skip_unpaired)
    return split_pairs(pairs, args.val_fraction, args.seed)


def open_caches(args: argparse.Namespace, root: Path, is_main: bool) -> dict[str, PreparedCache]:
    """The preparation caches of the splits this run reads; rank 0 builds what is missing and
    prints the scan report while the other ranks wait."""
    if not is_main:
        dist.barrier()  # wait until rank 0 has written the caches
    caches = prepare_splits(root, ("train", "val") if args.official_val else ("train",),
                            args.img_size, skip_unpaired=args.skip_unpaired,
                            cache_root=args.cache_dir or DEFAULT_CACHE_ROOT, progress=is_main,
                            log=print if is_main else None)
    if is_main and dist.is_initialized():
        dist.barrier()
    return caches


def build_datasets(args: argparse.Namespace, root: Path, train_pairs: list, val_pairs: list,
                   is_main: bool) -> tuple[ISICDataset, ISICDataset]:
    """Training and validation datasets, read from the preparation cache unless --no-cache."""
    train_source, val_source = train_pairs, val_pairs
    if args.cache:
        caches = open_caches(args, root, is_main)
        train_source = caches["train"].source(train_pairs)
        val_source = caches["val" if args.official_val else "train"].source(val_pairs)
    return (ISICDataset(train_source, train_transforms(args.img_size, policy=args.augment)),
            ISICDataset(val_source, eval_transforms(args.img_size)))


def build_loaders(args, train_ds, val_ds, rank, world, device):
    sampler = SeededSampler(DistributedSampler(train_ds, num_replicas=world, rank=rank,
                                               shuffle=True, seed=args.seed), seed=args.seed)
    per_rank = len(sampler)
    if per_rank < 1:
        raise DatasetError(f"{len(train_ds)} training images are too few for {world} processes")
    common = dict(num_workers=args.workers, pin_memory=device.type == "cuda",
                  persistent_workers=args.workers > 0, worker_init_fn=init_loader_worker)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler,
                              drop_last=per_rank >= args.batch_size, **common)
    # Each rank scores a disjoint slice of the validation set (no padding, no duplicates), so
    # the reduced mean is the same number a single process computes.
    val_shard = Subset(val_ds, range(rank, len(val_ds), world))
    val_loader = DataLoader(val_shard, batch_size=args.batch_size, **common)
    return train_loader, val_loader


# ---------------------------------------------------------------- W&B


def init_wandb(args: argparse.Namespace, run_id: str | None):
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode is None and not has_wandb_credentials():
        mode = "offline"
        print("W&B: no credentials found, logging offline to ./wandb; upload later with "
              "`wandb sync wandb/offline-run-*` after `wandb login`")
    return wandb.init(project=args.wandb_project, config=vars(args), id=run_id,
                      resume="allow" if run_id else None, mode=mode)


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_examples(batch: dict, logits: torch.Tensor, threshold: float, count: int = 4) -> list:
    """A few validation images with their true and predicted (thresholded) masks."""
    import wandb

    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    labels = {0: "background", 1: "lesion"}
    examples = []
    for i in range(min(count, len(batch["id"]))):
        image = ((batch["image"][i].float().cpu() * std + mean).clamp(0, 1) * 255).byte()
        pred = (torch.sigmoid(logits[i, 0].float()) > threshold).byte().cpu().numpy()
        truth = batch["mask"][i, 0].byte().cpu().numpy()
        examples.append(wandb.Image(image.permute(1, 2, 0).numpy(), caption=batch["id"][i], masks={
            "ground_truth": {"mask_data": truth, "class_labels": labels},
            "prediction": {"mask_data": pred, "class_labels": labels}}))
    return examples


# ---------------------------------------------------------------- training and validation


def to_device(batch: dict, device: torch.device, channels_last: bool):
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    image = batch["image"].to(device, non_blocking=True, memory_format=memory_format)
    return image, batch["mask"].to(device, non_blocking=True)


@torch.no_grad()
def validate(model, loader, loss_fn, device, args, amp_dtype, want_examples=False):
    """Mean validation loss, per-image Dice and IoU over all ranks; W&B examples on request."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss, dice, iou, images
    examples = []
    for batch in loader:
        image, mask = to_device(batch, device, args.channels_last)
        with autocast(device, amp_dtype):
            logits = model(image)
        scores = binary_scores(logits, mask)
        n = len(image)
        totals += torch.stack([loss_fn(logits, mask).double() * n, scores["dice"].sum(),
                               scores["iou"].sum(), torch.tensor(n, device=device).double()])
        if want_examples and not examples:
            examples = wandb_examples(batch, logits, threshold=0.5)
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss, dice, iou, n = totals.tolist()
    model.train()
    return {"val_loss": loss / n, "val_dice": dice / n, "val_iou": iou / n}, examples


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's BatchNorm statistics (each rank's last forward updated its own),
    so that all ranks validate the model that rank 0 saves."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Budget:
    """Training progress in [0, 1]: steps done over planned steps, or time spent over the
    --max-minutes budget, whichever is further along."""

    def __init__(self, total_steps: int, max_minutes: float | None, seconds_spent: float) -> None:
        self.total_steps = total_steps
        self.max_seconds = max_minutes * 60 if max_minutes else None
        self.seconds_spent = seconds_spent
        self.started = None

    def start(self) -> None:
        self.started = time.perf_counter()

    def pause(self) -> None:
        self.seconds_spent = self.seconds()
        self.started = None

    def seconds(self) -> float:
        running = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.seconds_spent + running

    def progress(self, step: int) -> float:
        by_steps = step / self.total_steps
        by_time = self.seconds() / self.max_seconds if self.max_seconds else 0.0
        return min(1.0, max(by_steps, by_time))

    def exhausted(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def configure_backends(device: torch.device) -> None:
    """On CUDA: TF32 matrix products and cuDNN autotuning (fixed input sizes)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def train_step(model, image, mask, optimizer, scaler, loss_fn, device, amp_dtype,
               grad_clip: float) -> torch.Tensor:
    """One optimisation step; returns the loss, still on the device (reading it would
    synchronise)."""
    with autocast(device, amp_dtype):
        loss = loss_fn(model(image), mask)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train(args: argparse.Namespace) -> dict[str, float]:
    check_args(args)
    rank, world, device = setup_distributed(args)
    is_main = rank == 0
    seed_everything(args.seed)
    configure_backends(device)

    # data
    root = resolve_data_root(args, is_main)
    train_pairs, val_pairs = load_splits(args, root)
    train_ds, val_ds = build_datasets(args, root, train_pairs, val_pairs, is_main)
    train_loader, val_loader = build_loaders(args, train_ds, val_ds, rank, world, device)

    # model, optimiser, precision
    config = UNetConfig(base_channels=args.base_channels, depth=args.depth, bilinear=args.bilinear,
                        norm=args.norm, deep_supervision=args.deep_supervision)
    model = build_model(config).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    amp_dtype = autocast_dtype(args.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    loss_fn = SegmentationLoss(args.loss)
    ema = ModelEMA(model, args.ema) if args.ema else None
    eval_model = ema.module if ema else model  # validated, and saved as "model"

    state = {"epoch": 0, "step": 0, "train_seconds": 0.0, "best_dice": -1.0, "wandb_id": None}
    if args.resume:
        checkpoint = load_checkpoint(args.resume, map_location=device)
        if not {"optimizer", "scaler", "rng"} <= set(checkpoint):
            raise CheckpointError(f"{args.resume} holds weights but no training state; resume "
                                  "from last.pt")
        model.load_state_dict(checkpoint["train_model" if ema else "model"])
        if ema:
            ema.module.load_state_dict(checkpoint["model"])
            ema.updates = checkpoint["ema_updates"]
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        state.update({k: checkpoint[k] for k in state})
    raw_model = model
    if args.compile:
        model = torch.compile(model)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda"
                                        else None)

    budget = Budget(args.epochs * len(train_loader), args.max_minutes, state["train_seconds"])
    run = init_wandb(args, state["wandb_id"]) if args.wandb and is_main else None
    ckpt_dir = Path(args.checkpoint_dir)
    if is_main:
        print(f"{len(train_pairs)} training and {len(val_pairs)} validation images from {root}; "
              f"U-Net {count_parameters(raw_model) / 1e6:.2f} M parameters on {device} "
              f"({world} process{'es' if world > 1 else ''}), precision "
              f"{amp_dtype or torch.float32}")

    if is_main and (state["epoch"] >= args.epochs or budget.exhausted(state["step"])):
        print(f"nothing to do: {args.resume} already finished its {state['epoch']} epochs; "
              "raise --epochs (or --max-minutes) to train longer")
    metrics: dict[str, float] = {}
    while state["epoch"] < args.epochs and not budget.exhausted(state["step"]):
        epoch = state["epoch"]
        train_loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        after_step = (lambda: ema.update(raw_model)) if ema else None
        train_loss = train_one_epoch(model, train_loader, optimizer, scaler, loss_fn, budget,
                                     state, args, device, amp_dtype, run, is_main, after_step)
        if world > 1:
            broadcast_buffers(eval_model)
        metrics, examples = validate(eval_model, val_loader, loss_fn, device, args, amp_dtype,
                                     want_examples=run is not None)
        state["epoch"] = epoch + 1
        metrics.update(train_loss=train_loss, lr=lr_at(budget.progress(state["step"]), args),
                       seconds=time.perf_counter() - started)
        if is_main:
            report_epoch(metrics, state, args, run, examples)
            state["best_dice"] = save_epoch(raw_model, ema, optimizer, scaler, metrics, state,
                                            args, ckpt_dir, run)
    if run is not None:
        run.finish()
    if dist.is_initialized():
        dist.destroy_process_group()
    return metrics


def train_one_epoch(model, loader, optimizer, scaler, loss_fn, budget, state, args, device,
                    amp_dtype, run, is_main, after_step=None) -> float:
    """One pass over the training data (or until the budget runs out); the mean loss."""
    model.train()
    bar = tqdm(loader, desc=f"epoch {state['epoch'] + 1}/{args.epochs}", leave=False,
               disable=not is_main or None, unit="batch")
    running = torch.zeros((), device=device)
    total, batches, images, tick = 0.0, 0, 0, time.perf_counter()
    budget.start()
    for batch in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(budget.progress(state["step"]), args)
        image, mask = to_device(batch, device, args.channels_last)
        running += train_step(model, image, mask, optimizer, scaler, loss_fn, device, amp_dtype,
                              args.grad_clip)
        if after_step is not None:
            after_step()
        state["step"] += 1
        batches += 1
        images += len(image)
        if batches % args.log_interval == 0:  # the only host synchronisation in the loop
            interval_loss = running.item()
            total += interval_loss
            running.zero_()
            rate = images / (time.perf_counter() - tick)
            bar.set_postfix(loss=f"{interval_loss / args.log_interval:.4f}", img_s=f"{rate:.1f}")
            if run is not None:
                run.log({"train/loss": interval_loss / args.log_interval,
                         "train/lr": optimizer.param_groups[0]["lr"]}, step=state["step"])
        if budget.exhausted(state["step"]):
            break
    budget.pause()
    state["train_seconds"] = budget.seconds()
    bar.close()
    return (total + running.item()) / max(batches, 1)


def report_epoch(metrics, state, args, run, examples) -> None:
    print(f"epoch {state['epoch']}/{args.epochs}  train_loss {metrics['train_loss']:.4f}  "
          f"val_loss {metrics['val_loss']:.4f}  val_dice {metrics['val_dice']:.4f}  "
          f"val_iou {metrics['val_iou']:.4f}  lr {metrics['lr']:.2e}  "
          f"{metrics['seconds']:.1f}s", flush=True)
    if run is not None:
        log = {f"epoch/{k}": v for k, v in metrics.items()}
        log.update({"val/dice": metrics["val_dice"], "val/iou": metrics["val_iou"],
                    "epoch": state["epoch"], "val/examples": examples})
        run.log(log, step=state["step"])


def save_epoch(model, ema, optimizer, scaler, metrics, state, args, ckpt_dir, run) -> float:
    """Write last.pt (everything needed to resume) and best.pt (by validation Dice); returns
    the best Dice so far. "model" holds the weights to predict with: the EMA when there is one
    (the trained weights are then last.pt's "train_model")."""
    best = max(state["best_dice"], metrics["val_dice"])
    common = {
        "model": (ema.module if ema else model).state_dict(),
        "model_config": model.config.to_dict(),
        "img_size": args.img_size,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "threshold": 0.5,
        "args": vars(args),
        "epoch": state["epoch"],
        "step": state["step"],
        "train_seconds": state["train_seconds"],
        "metrics": metrics,
        "best_dice": best,
    }
    if metrics["val_dice"] > state["best_dice"]:
        save_checkpoint(common, ckpt_dir / "best.pt")
    training = {"train_model": model.state_dict(), "ema_updates": ema.updates} if ema else {}
    save_checkpoint({**common, **training, "optimizer": optimizer.state_dict(),
                     "scaler": scaler.state_dict(), "rng": rng_state(),
                     "wandb_id": run.id if run is not None else state["wandb_id"]},
                    ckpt_dir / "last.pt")
    if run is not None:
        run.summary["best_val_dice"] = best
    return best


def parse_and_train(argv: list[str] | None) -> int:
    args = parse_args(argv)
    metrics = train(args)
    if metrics and int(os.environ.get("RANK", 0)) == 0:
        print(f"done: val_dice {metrics['val_dice']:.4f}, checkpoints in {args.checkpoint_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_script(lambda: parse_and_train(argv),
                      interrupted="interrupted; continue with --resume <checkpoint-dir>/last.pt",
                      oom_hint="lower --batch-size or --img-size")


if __name__ == "__main__":
    sys.exit(main())
