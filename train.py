"""Train a U-Net for skin-lesion segmentation on ISIC data (or the built-in synthetic set).

    python train.py                                  # data/ISIC2018, 256x256, as the paper
    python train.py --preset cpu-demo                # offline demo, under a minute on a CPU
    torchrun --nproc_per_node 4 train.py ...         # DDP, detected from the environment
    python train.py --resume models/checkpoints/last.pt

Read top to bottom: arguments, processes, data, model, then the epoch loop. Only rank 0 prints,
logs and writes files. The learning rate is a pure function of progress (epochs done, or time
spent under --max-minutes), and every decision that changes what a process does next is taken
from values all processes agree on, so budgeted, resumed and stopped runs behave the same on
one process as on many. SIGTERM or Ctrl-C stops after the current step and saves last.pt.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.device import Hardware, autocast_dtype, configure_backends
from common.errors import run_script
from common.seeding import seed_everything
from data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from data.splits import data_root, training_splits
from data.workers import end_workers, start_worker_server
from evaluation.fitting import calibrate_file
from inference.calibration import Calibration
from inference.predictor import Predictor
from models import count_parameters
from models.bundled import model_path
from models.checkpoint import load_model_file
from training.distributed import (
    Agreement,
    StopDuringWait,
    StopRequest,
    is_communication_error,
    peer_lost,
    replicas_report,
    start_cluster,
)
from training.loaders import (
    batches,
    build_datasets,
    build_loaders,
    epoch_images,
    replay_pairs,
)
from training.options import check_args, parse_args, split_settings
from training.run import Run, blend_with_initial, build_run
from training.schedule import Plan, lr_at
from training.wandb_log import WandbRun
from utils import SegmentationLoss, binary_scores


def main(argv: list[str] | None = None) -> int:
    def parse_and_train() -> int:
        outcome = train(parse_args(argv))
        if int(os.environ.get("RANK", 0)) == 0:
            print(outcome.message, file=sys.stderr if outcome.status else sys.stdout, flush=True)
        return outcome.status

    return run_script(parse_and_train,
                      interrupted="interrupted; continue with --resume <checkpoint-dir>/last.pt",
                      oom_hint="lower --batch-size or --img-size")


@dataclass
class Outcome:
    """How a run ended: the last epoch's metrics, the exit status and the line to print."""

    metrics: dict[str, float] = field(default_factory=dict)
    status: int = 0
    message: str = ""


def train(args: argparse.Namespace) -> Outcome:
    """Train as ``args`` say; on SIGTERM or SIGINT stop after the current step, save last.pt
    and return the signal's exit status."""
    check_args(args)
    if args.workers != 0:
        start_worker_server()
    with ExitStack() as cleanup:
        cluster = start_cluster(args.device, args.dist_timeout)
        cleanup.callback(cluster.shutdown)
        stop = cleanup.enter_context(StopRequest())
        seed_everything(args.seed)
        configure_backends(cluster.device)
        hardware = Hardware(cluster.device, autocast_dtype(args.precision, cluster.device),
                            args.channels_last)

        # data
        root = data_root(args.data, generate=cluster.is_main)
        cluster.wait_for_main()  # the others wait for rank 0 to write the synthetic set
        train_pairs, val_pairs = training_splits(root, split_settings(args))
        replay = replay_pairs(args)
        try:
            with stop.waiting():  # building the preparation cache can be stopped at once
                datasets = build_datasets(args, root, train_pairs, val_pairs, cluster,
                                          replay)
        except StopDuringWait:
            return Outcome(status=stop.exit_status(), message=f"stopped by {stop.name()} "
                           "while preparing the data; nothing was trained")
        train_loader, val_loader = build_loaders(args, *datasets, cluster)
        for loader in (train_loader, val_loader):
            # a run that failed or was stopped kills its workers: one may be stuck in a read
            cleanup.push(lambda failed, *_, loader=loader:
                         end_workers(loader, at_once=failed is not None or stop.requested))

        # model, optimiser, precision, and the state of a resumed run
        plan = Plan(args.epochs, epoch_images(train_loader, cluster),
                    args.max_minutes * 60 if args.max_minutes else None)
        run = build_run(args, cluster, hardware, plan)
        if args.resume:
            run.restore(args.resume)
        if cluster.is_main:
            run.record.keep_until(run.state.epoch)
            if args.wandb:
                run.wandb = WandbRun.start(args.wandb_project, vars(args), run.state.wandb_id)
                run.state.wandb_id = run.wandb.id or run.state.wandb_id
            print(f"{len(train_pairs)} training and {len(val_pairs)} validation images from "
                  f"{root}{replay_note(args, replay)}; U-Net "
                  f"{count_parameters(run.model) / 1e6:.2f} M parameters{init_note(args)} on "
                  f"{run.describe_hardware()} ({cluster.world} process"
                  f"{'es' if cluster.world > 1 else ''})", flush=True)
        if plan.finished(run.state):
            return Outcome(status=0, message=f"nothing to do: {args.resume} already finished "
                           f"its {run.state.epoch} epochs; raise --epochs (or --max-minutes) to "
                           "train longer")

        # the epochs, each validated and saved, until the plan is done or a stop is agreed
        agreement = Agreement(cluster)
        state, metrics, outcome = run.state, {}, None
        try:
            while outcome is None and not plan.finished(state):
                train_loader.sampler.set_epoch(state.epoch, state.epoch_images)
                started = time.perf_counter()
                epoch = train_one_epoch(run, train_loader, agreement, stop)
                complete = state.epoch_images >= plan.epoch_images or plan.finished(state)
                if epoch.stopped and not complete:
                    outcome = stopped_outcome(run, stop, metrics)  # mid-epoch: no validation
                    break
                state.end_epoch()
                if cluster.world > 1:
                    broadcast_buffers(run)
                try:
                    metrics, examples = validate(run.eval_model, batches(val_loader, stop),
                                                 run.optimisation.loss_fn, hardware, run.wandb)
                except StopDuringWait:
                    outcome = stopped_outcome(run, stop, metrics)
                    break
                metrics.update(train_loss=epoch.loss, lr=lr_at(plan.progress(state), args),
                               seconds=time.perf_counter() - started,
                               images_per_second=epoch.images / max(epoch.seconds, 1e-9))
                if hardware.device.type == "cuda":
                    metrics["gpu_memory_mib"] = (torch.cuda.max_memory_allocated(hardware.device)
                                                 / 2**20)
                end_epoch(run, metrics, examples)
                stop_agreed = agreement.exchange(state.train_seconds, stop.requested)[1]
                if stop_agreed and not plan.finished(state):
                    outcome = stopped_outcome(run, stop, metrics, saved=True)
            if outcome is None:
                outcome = Outcome(metrics, 0, f"done: val_dice {metrics['val_dice']:.4f}, "
                                  f"checkpoints in {run.checkpoint_dir}"
                                  + replicas_report(cluster, [run.model, run.eval_model]))
        except RuntimeError as exc:
            if cluster.world > 1 and is_communication_error(exc):
                raise peer_lost(exc, "training") from exc
            raise
        if cluster.is_main:
            run.record.plot()
            if run.wandb is not None:
                run.wandb.finish()
            if outcome.status == 0:  # a finished run: calibrate the model on held-out images
                if args.init_share:
                    blend_with_initial(run.checkpoint_dir / "best.pt", args.init,
                                       args.init_share)
                    print(f"best.pt: {args.init_share:.0%} of the weights of {args.init} "
                          "averaged in (--init-share)", flush=True)
                started = time.perf_counter()
                best = Predictor(run.checkpoint_dir / "best.pt", device=str(hardware.device),
                                 precision=args.precision)
                print("\n".join(calibrate_file(
                    best, val_pairs, train_pairs + replay, f"{len(val_pairs)} validation and "
                    f"{len(train_pairs)} training images of {root}{replay_note(args, replay)}",
                    fallback=initial_calibration(args)).lines()), flush=True)
                outcome.message += f" (calibrated in {time.perf_counter() - started:.1f} s)"
        return outcome


def init_note(args: argparse.Namespace) -> str:
    """What the start line says of the weights a run starts from."""
    if args.resume:
        return f", resumed from {args.resume}"
    return f", starting from {args.init}" if args.init else ", starting from random weights"


def initial_calibration(args: argparse.Namespace) -> Calibration | None:
    """The calibration of the ``--init`` model (``None`` without one)."""
    if not args.init:
        return None
    return Calibration.from_dict(load_model_file(model_path(args.init)).calibration)


def replay_note(args: argparse.Namespace, replay: list) -> str:
    """What the start line says of the images replayed in every batch."""
    if not replay:
        return ""
    return (f", replaying {len(replay)} training images of {args.replay} "
            f"({args.replay_share:.0%} of every batch)")


# ---------------------------------------------------------------- training and validation


@dataclass
class EpochResult:
    """What one pass of :func:`train_one_epoch` did: mean loss, images trained on (all
    processes), training seconds, and whether a stop was agreed."""

    loss: float
    images: int
    seconds: float
    stopped: bool


def train_one_epoch(run: Run, loader: DataLoader, agreement: Agreement,
                    stop: StopRequest) -> EpochResult:
    """Steps over the epoch's batches until they run out, the plan is done or a stop is
    agreed. Before each step all processes agree on the training time and stop request, so
    that they take the same decisions (and learning rate) at the same step; a stop signal
    while waiting for a batch ends the wait, and the exchange after the loop agrees on it."""
    args, state = run.args, run.state
    run.model.train()
    bar = tqdm(total=len(loader), desc=f"epoch {state.epoch + 1}/{args.epochs}", leave=False,
               disable=not run.cluster.is_main or None, unit="batch")
    # float64: sums of float32 losses are exact, so a stopped and resumed epoch's mean is too
    running = torch.zeros((), dtype=run.hardware.sum_dtype, device=run.hardware.device)
    stopped, images = False, 0
    seconds_before, tick = state.train_seconds, time.perf_counter()
    clock_start = tick - seconds_before
    try:
        for batch in batches(loader, stop):
            state.train_seconds, stopped = agreement.exchange(
                time.perf_counter() - clock_start, stop.requested)
            if stopped or run.plan.progress(state) >= 1.0:
                break
            running += train_step(run, batch)
            images += len(batch["image"])
            bar.update()
            if state.epoch_steps % args.log_interval == 0:  # the one device synchronisation
                interval_loss = running.item()
                state.epoch_loss += interval_loss
                running.zero_()
                log_interval(run, bar, interval_loss / args.log_interval,
                             images / (time.perf_counter() - tick))
    except StopDuringWait:
        pass  # stop.requested is set: the exchange below agrees on it
    if not stopped:  # the time and any stop request after the last step
        state.train_seconds, stopped = agreement.exchange(time.perf_counter() - clock_start,
                                                          stop.requested)
    bar.close()
    state.epoch_loss += running.item()
    return EpochResult(state.epoch_loss / max(state.epoch_steps, 1),
                       images * run.cluster.world, state.train_seconds - seconds_before,
                       stopped)


def train_step(run: Run, batch: dict) -> torch.Tensor:
    """One optimiser step at the learning rate of the run's progress; the batch's loss as a
    tensor on the device (not synchronised)."""
    state = run.state
    run.optimisation.set_lr(lr_at(run.plan.progress(state), run.args))
    image, mask = run.hardware.batch(batch)
    loss = run.optimisation.step(image, mask)
    if run.ema:
        run.ema.update()
    state.step += 1
    state.epoch_steps += 1
    state.epoch_images += len(image) * run.cluster.world
    return loss


def log_interval(run: Run, bar: tqdm, loss: float, images_per_second: float) -> None:
    bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_second:.1f}")
    if run.wandb is not None:
        run.wandb.log({"train/loss": loss,
                       "train/lr": run.optimisation.optimizer.param_groups[0]["lr"]},
                      step=run.state.step)


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Iterable[dict], loss_fn: SegmentationLoss,
             hardware: Hardware, wandb: WandbRun | None = None) -> tuple[dict[str, float], list]:
    """Mean validation loss, per-image Dice and IoU over all processes, and (with ``wandb``)
    W&B pictures of the first batch, from the batches of ``loader`` (a DataLoader, or
    :func:`training.loaders.batches` of one)."""
    model.eval()
    totals = torch.zeros(4, dtype=hardware.sum_dtype, device=hardware.device)  # loss, dice, iou, n
    examples = []
    for index, batch in enumerate(loader):
        image, mask = hardware.batch(batch)
        with hardware.autocast():
            logits = model(image)
        scores = binary_scores(logits, mask)
        n = len(image)
        sums = (loss_fn(logits, mask) * n, scores["dice"].sum(), scores["iou"].sum())
        totals += torch.stack([*(value.to(totals.dtype) for value in sums),
                               totals.new_tensor(float(n))])
        if index == 0 and wandb is not None:
            examples = wandb.images(batch, logits, IMAGENET_MEAN, IMAGENET_STD)
    if dist.is_initialized():
        try:
            dist.all_reduce(totals)
        except RuntimeError as exc:
            raise peer_lost(exc, "validation") from exc
    loss, dice, iou, n = totals.tolist()
    return {"val_loss": loss / n, "val_dice": dice / n, "val_iou": iou / n}, examples


def broadcast_buffers(run: Run) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics, which each process's last
    forward updated on its own) of the trained model and of its average, so that all validate
    and keep the model rank 0 saves."""
    for module in {id(m): m for m in (run.model, run.eval_model)}.values():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


# ---------------------------------------------------------------- the end of an epoch


def end_epoch(run: Run, metrics: dict[str, float], examples: list) -> None:
    """Print, log, save the checkpoints and append the record (rank 0)."""
    state = run.state
    is_best = metrics["val_dice"] > state.best_dice or run.args.best_epoch == "last"
    state.best_dice = max(state.best_dice, metrics["val_dice"])
    if not run.cluster.is_main:
        return
    memory = (f"  GPU {metrics['gpu_memory_mib'] / 1024:.1f} GiB" if "gpu_memory_mib" in metrics
              else "")
    print(f"epoch {state.epoch}/{run.args.epochs}  train_loss {metrics['train_loss']:.4f}  "
          f"val_loss {metrics['val_loss']:.4f}  val_dice {metrics['val_dice']:.4f}  "
          f"val_iou {metrics['val_iou']:.4f}  lr {metrics['lr']:.2e}  "
          f"{metrics['seconds']:.1f}s  {metrics['images_per_second']:.1f} img/s{memory}",
          flush=True)
    # The record first: a run killed between the two resumes from the previous last.pt and
    # drops this line, while the other order would lose it.
    run.record.append({"epoch": state.epoch, "step": state.step, **metrics,
                       "train_seconds": state.train_seconds})
    run.save(metrics, best=is_best)
    if run.wandb is not None:
        log = {f"epoch/{k}": v for k, v in metrics.items()}
        log.update({"val/dice": metrics["val_dice"], "val/iou": metrics["val_iou"],
                    "epoch": state.epoch, "val/examples": examples})
        run.wandb.log(log, step=state.step)
        run.wandb.summarize("best_val_dice", state.best_dice)


def stopped_outcome(run: Run, stop: StopRequest, metrics: dict[str, float],
                    saved: bool = False) -> Outcome:
    """Save last.pt where the run stopped (unless the epoch's save just did) and say how to
    continue."""
    state = run.state
    if not saved and run.cluster.is_main:
        run.save(metrics, best=False)
    where = (f"in epoch {state.epoch + 1} ({state.epoch_images} of "
             f"{run.plan.epoch_images} images)" if state.epoch_images else
             f"after epoch {state.epoch}")
    return Outcome(metrics, stop.exit_status(),
                   f"stopped by {stop.name() or 'a signal to another process'} {where}, step "
                   f"{state.step}; {run.last_path} is saved: continue with `python train.py "
                   f"--resume {run.last_path}` (or torchrun, on any number of processes)")


if __name__ == "__main__":
    sys.exit(main())
