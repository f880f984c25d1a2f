"""A training run's objects, which travel together, and its checkpoint files.

``best.pt`` holds the weights to predict with (the EMA when there is one) and what prediction
needs; ``last.pt`` also holds the trained weights, optimiser, grad scaler, RNG states and
counters, so that ``--resume`` continues exactly where the run stopped, at an epoch boundary
or, after SIGTERM or Ctrl-C, in the middle of an epoch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from common.device import Hardware
from common.seeding import rng_state, set_rng_state
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from data.splits import data_root
from data.synthetic import is_synthetic_set
from models import UNet, UNetConfig, build_model
from models.bundled import model_path
from models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_file,
    save_checkpoint,
)
from training.distributed import Cluster
from training.ema import ModelEMA
from training.record import MetricsRecord
from training.schedule import Plan
from training.state import TrainState
from training.step import Optimisation, should_compile
from training.wandb_log import WandbRun

THRESHOLD = 0.5
RESUME_KEYS = ("optimizer", "scaler", "rng")
# The counters best.pt records too (the rest of the state is for resuming).
PROGRESS_KEYS = ("epoch", "step", "train_seconds", "best_dice")


def model_config(args: argparse.Namespace) -> UNetConfig:
    """The architecture ``train.py``'s flags ask for."""
    return UNetConfig(base_channels=args.base_channels, depth=args.depth,
                      bilinear=args.bilinear, norm=args.norm,
                      deep_supervision=args.deep_supervision)


@dataclass
class Run:
    """Everything a training run carries from step to step.

    Attributes:
        model: the U-Net being trained (not compiled, not wrapped).
        ema: the average of its weights, validated and saved; ``None`` with ``--ema 0``.
        optimisation: the step's module (compiled, DDP-wrapped), optimiser, scaler, loss.
        plan: the epochs (or minutes) the run is to train.
        wandb: W&B logging on the main process, else ``None``.
    """

    args: argparse.Namespace
    cluster: Cluster
    hardware: Hardware
    model: UNet
    ema: ModelEMA | None
    optimisation: Optimisation
    plan: Plan
    state: TrainState
    record: MetricsRecord
    compile_note: str = ""
    wandb: WandbRun | None = None

    def describe_hardware(self) -> str:
        """Device, precision and whether the step is compiled (and why), for the start line."""
        return f"{self.hardware.describe()}, {self.compile_note}"

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved as ``model``."""
        return self.ema.module if self.ema else self.model

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.args.checkpoint_dir)

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    def restore(self, path: str | Path) -> None:
        """Continue from a ``last.pt``: weights, EMA, optimiser, scaler, RNG and counters.

        Raises:
            CheckpointError: the file is unreadable or holds no training state (a best.pt).
        """
        checkpoint = load_checkpoint(path, map_location=self.hardware.device)
        if not set(RESUME_KEYS) <= set(checkpoint):
            raise CheckpointError(f"{path} holds weights but no training state; resume from "
                                  "last.pt")
        self.model.load_state_dict(checkpoint["train_model" if self.ema else "model"])
        if self.ema:
            self.ema.module.load_state_dict(checkpoint["model"])
            self.ema.updates = checkpoint["ema_updates"]
        self.optimisation.optimizer.load_state_dict(checkpoint["optimizer"])
        self.optimisation.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        self.state = TrainState.from_checkpoint(checkpoint)

    def prediction_payload(self, metrics: dict[str, float]) -> dict[str, Any]:
        """What ``best.pt`` holds: the weights to predict with, what prediction needs, and
        how they were made."""
        return {
            "model": self.eval_model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "img_size": self.args.img_size,
            "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "threshold": THRESHOLD,
            "args": vars(self.args),
            "synthetic_data": is_synthetic_set(data_root(self.args.data, generate=False)),
            "metrics": metrics,
            **{key: getattr(self.state, key) for key in PROGRESS_KEYS},
        }

    def save(self, metrics: dict[str, float], best: bool) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``best``); main process only."""
        common = self.prediction_payload(metrics)
        if best:
            save_checkpoint(common, self.checkpoint_dir / "best.pt")
        training = ({"train_model": self.model.state_dict(), "ema_updates": self.ema.updates}
                    if self.ema else {})
        save_checkpoint({**common, **training,
                         "optimizer": self.optimisation.optimizer.state_dict(),
                         "scaler": self.optimisation.scaler.state_dict(), "rng": rng_state(),
                         **self.state.to_dict()},
                        self.last_path)


def blend_with_initial(path: Path, initial: str, share: float) -> None:
    """Rewrite the model of ``path`` (a ``best.pt``) as ``share`` times the weights of the model
    file ``initial`` names plus ``1 - share`` times its own: weight-space ensembling of the
    fine-tuned and the initial model (WiSE-FT, Wortsman et al., CVPR 2022), which keeps more of
    what the initial model knew than of what fine-tuning changed (docs/training.md,
    "Fine-tuning").

    Raises:
        CheckpointError: either file cannot be read as a model of this project.
    """
    payload = load_checkpoint(path)
    start = load_model_file(model_path(initial)).build().state_dict()
    payload["model"] = {
        name: (share * start[name].to(weight.dtype) + (1 - share) * weight
               if weight.is_floating_point() else weight)
        for name, weight in payload["model"].items()}
    save_checkpoint(payload, path)


def build_run(args: argparse.Namespace, cluster: Cluster, hardware: Hardware,
              plan: Plan) -> Run:
    """A fresh run: the U-Net on the device (with ``--init``, that model's weights), its EMA,
    AdamW (possibly compiled, and wrapped in DistributedDataParallel under torchrun) and the
    metrics record."""
    network = build_model(model_config(args))
    if args.init and not args.resume:  # a resumed run restores its own weights
        network.load_state_dict(load_model_file(model_path(args.init)).build().state_dict())
    model = hardware.module(network)
    ema = ModelEMA(model, args.ema) if args.ema else None
    module: nn.Module = model
    if cluster.world > 1:
        module = nn.parallel.DistributedDataParallel(
            module, device_ids=[cluster.device] if cluster.device.type == "cuda" else None)
    # A compiled or wrapped module's parameters are the model's own, so the optimiser over
    # them is the same either way.
    optimisation = Optimisation.create(module, hardware, args.lr, args.weight_decay, args.loss,
                                       args.grad_clip)
    compiled, why = should_compile(args.compile, hardware)
    if compiled:
        optimisation.compile()  # after the DDP wrap, as PyTorch recommends
    return Run(args, cluster, hardware, model, ema, optimisation, plan, TrainState(),
               MetricsRecord(Path(args.checkpoint_dir)),
               f"{'compiled' if compiled else 'not compiled'} ({why})")
