"""Training utilities: losses (BCE, focal, Dice, Tversky), Dice/IoU metrics, checkpoints,
seeding, device and precision.

Metrics follow segmentation_models.pytorch: count TP/FP/FN/TN per image first, then score each
image, then average over images (never over pooled pixels or per batch).
"""

from __future__ import annotations

import copy
import os
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

CHECKPOINT_FORMAT = "isic-unet"
CHECKPOINT_VERSION = 1


# ---------------------------------------------------------------- losses


def soft_tversky_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.5,
                      beta: float = 0.5, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Tversky index ``TP / (TP + alpha FP + beta FN)`` of sigmoid probabilities,
    computed per image, then averaged. ``alpha = beta = 0.5`` is the Dice loss; ``beta > alpha``
    costs missed lesion pixels more than false alarms (higher sensitivity).

    Args:
        logits: ``(N, 1, H, W)`` or ``(N, H, W)`` raw scores, any real values.
        target: same shape, values in ``{0, 1}`` (or soft labels in ``[0, 1]``).
        smooth: added to numerator and denominator (as ``smooth / 2``, so that the Dice case
            is ``(2 TP + smooth) / (2 TP + FP + FN + smooth)``); keeps empty masks defined.

    Returns:
        Scalar in ``[0, 1]``.
    """
    probs = torch.sigmoid(logits.float()).flatten(1)
    target = target.float().flatten(1)
    tp = (probs * target).sum(1)
    fp = (probs * (1 - target)).sum(1)
    fn = ((1 - probs) * target).sum(1)
    index = (tp + smooth / 2) / (tp + alpha * fp + beta * fn + smooth / 2)
    return 1 - index.mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of sigmoid probabilities, per image, then averaged; shapes and range as in
    :func:`soft_tversky_loss`."""
    return soft_tversky_loss(logits, target, alpha=0.5, beta=0.5, smooth=smooth)


def tversky_recall_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Tversky loss with ``alpha = 0.3, beta = 0.7`` (Salehi et al., 2017)."""
    return soft_tversky_loss(logits, target, alpha=0.3, beta=0.7)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits over all pixels."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean focal loss (Lin et al., 2017; gamma 2, no class weighting): cross-entropy scaled
    by ``(1 - p_t)**2``, so that pixels already classified well count little."""
    return sigmoid_focal_loss(logits.float(), target.float(), alpha=-1, gamma=2.0,
                              reduction="mean")


PIXEL_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bce": bce_loss, "focal": focal_loss}
REGION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "dice": soft_dice_loss, "tversky": tversky_recall_loss}
LOSS_NAMES = ("bce_dice", "dice", "focal_dice", "bce_tversky", "tversky")


class SegmentationLoss(nn.Module):
    """A per-pixel term plus a per-image region term, named ``"<pixel>_<region>"`` (or just
    ``"<region>"``): see :data:`LOSS_NAMES`.

    ``forward(logits, target)``: ``logits`` ``(N, 1, H, W)`` raw scores, or under deep
    supervision a tuple of them, full resolution first, then each level 2x coarser; ``target``
    ``(N, 1, H, W)`` in ``{0, 1}``. Coarser levels are scored against the area-averaged target
    with weights 1, 1/2, 1/4, ... normalised to sum to 1 (as nnU-Net does).
    """

    def __init__(self, name: str = "bce_dice") -> None:
        super().__init__()
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; use one of {', '.join(LOSS_NAMES)}")
        *pixel, region = name.split("_")
        self.pixel = PIXEL_LOSSES[pixel[0]] if pixel else None
        self.region = REGION_LOSSES[region]

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = self.region(logits, target)
        return loss + self.pixel(logits, target) if self.pixel else loss

    def forward(self, logits: torch.Tensor | tuple[torch.Tensor, ...],
                target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            return self.single(logits, target)
        weights = [0.5**level for level in range(len(logits))]
        total = sum(
            w * self.single(level, F.adaptive_avg_pool2d(target.float(), level.shape[-2:]))
            for w, level in zip(weights, logits)
        )
        return total / sum(weights)


# ---------------------------------------------------------------- metrics


def confusion_counts(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image pixel counts of true/false positives/negatives.

    Args:
        pred: ``(N, ...)`` boolean (or ``{0, 1}``) predicted masks.
        target: ``(N, ...)`` boolean (or ``{0, 1}``) true masks, same shape.

    Returns:
        ``{"tp", "fp", "fn", "tn"}``, each an int64 tensor of shape ``(N,)``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target {tuple(target.shape)}")
    pred = pred.bool().flatten(1)
    target = target.bool().flatten(1)
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    tn = pred.shape[1] - tp - fp - fn
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def ratio_or_one(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` as float64, and 1 where the denominator is 0: an empty
    prediction of an empty mask is perfect, as the ISIC scorer defines it."""
    ratio = numerator.double() / denominator.clamp(min=1).double()
    return torch.where(denominator == 0, torch.ones_like(ratio), ratio)


def dice_from_counts(counts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image Dice ``2TP / (2TP + FP + FN)`` in ``[0, 1]``; 1 when both masks are empty."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return ratio_or_one(2 * tp, 2 * tp + fp + fn)


def iou_from_counts(counts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image IoU (Jaccard) ``TP / (TP + FP + FN)`` in ``[0, 1]``; 1 when both are empty."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return ratio_or_one(tp, tp + fp + fn)


def binary_scores(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> dict[str, torch.Tensor]:
    """Per-image Dice and IoU of ``sigmoid(logits) > threshold`` against ``target > 0.5``.

    Args:
        logits: ``(N, 1, H, W)`` raw scores.
        target: ``(N, 1, H, W)`` masks in ``{0, 1}``.

    Returns:
        ``{"dice": (N,), "iou": (N,)}`` float64 tensors in ``[0, 1]``.
    """
    counts = confusion_counts(torch.sigmoid(logits.float()) > threshold, target > 0.5)
    return {"dice": dice_from_counts(counts), "iou": iou_from_counts(counts)}


class ModelEMA:
    """An exponential moving average of a model's weights and BatchNorm statistics.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the
    random initial weights are forgotten quickly in short runs.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"--ema must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (call after each step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged, current = self.module.state_dict(), model.state_dict()
        floats = [k for k, v in averaged.items() if v.is_floating_point()]
        torch._foreach_lerp_([averaged[k] for k in floats], [current[k] for k in floats],
                             1 - decay)
        for key in averaged.keys() - set(floats):  # BatchNorm's integer batch counters
            averaged[key].copy_(current[key])


# ---------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not one of this project."""


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically: a crash mid-write leaves the old file intact.

    The payload must hold plain types only (dicts, lists, numbers, strings, tensors) so that
    :func:`load_checkpoint` can read it with ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without running any pickled code.

    Raises:
        CheckpointError: the file does not exist, needs pickle code to load, or is not a
            checkpoint of this project.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; train one with `python train.py` "
            "(or `python train.py --data synthetic` for the offline demo)"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            f"{path} is not a checkpoint this project can load safely "
            f"(refused without running its code: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by this project's train.py")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this project; update it")
    return payload


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as plain types (loadable with ``weights_only``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _as_tuples(value: Any) -> Any:
    # A round trip through a checkpoint may turn tuples into lists; random.setstate needs tuples.
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


# ---------------------------------------------------------------- scripts


# DatasetError and CorruptFileError are ValueErrors; FileNotFoundError is an OSError.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, CheckpointError)


def run_script(body: Callable[[], int], errors: tuple[type[BaseException], ...] = USER_ERRORS,
               interrupted: str = "interrupted", oom_hint: str = "lower --batch-size") -> int:
    """Run a script's body and return its exit status: a user's mistake (a bad path, value or
    file) becomes one ``error:`` line on stderr and status 1, never a traceback."""
    try:
        return body()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
    except torch.cuda.OutOfMemoryError:
        print(f"error: out of GPU memory; {oom_hint}", file=sys.stderr)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    return 1


# ---------------------------------------------------------------- seeding, device, precision


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; any other name is checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N "
                         "or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast
    is several times faster than fp32; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` on ``device``; ``None`` means plain fp32.

    ``auto``: bf16 on Ampere+ GPUs and bf16-capable CPUs, fp16 on older GPUs, else fp32.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None
