"""Losses (BCE, focal, Dice, Tversky) and per-image metrics (Dice, IoU, sensitivity,
specificity, accuracy), shared by training, validation and the ISIC evaluation.

Metrics follow segmentation_models.pytorch: count TP/FP/FN/TN per image first, then score each
image, then average over images (never over pooled pixels or per batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import FlagError

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


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss (Lin et al., 2017; no class weighting): the per-pixel cross-entropy
    scaled by ``(1 - p_t) ** gamma``, where ``p_t`` is the probability given to the true
    class, so that pixels already classified well count little."""
    logits, target = logits.float(), target.float()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    probability = torch.sigmoid(logits)
    p_true = probability * target + (1 - probability) * (1 - target)
    return (cross_entropy * (1 - p_true) ** gamma).mean()


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
            raise FlagError(f"unknown loss {name!r}; use one of {', '.join(LOSS_NAMES)}")
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
    """``numerator / denominator`` as float64 (float32 on Apple MPS, which has no float64), and
    1 where the denominator is 0: an empty prediction of an empty mask is perfect, as the ISIC
    scorer defines it."""
    dtype = torch.float32 if numerator.device.type == "mps" else torch.float64
    ratio = numerator.to(dtype) / denominator.clamp(min=1).to(dtype)
    return torch.where(denominator == 0, torch.ones_like(ratio), ratio)


def dice_from_counts(counts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image Dice ``2TP / (2TP + FP + FN)`` in ``[0, 1]``; 1 when both masks are empty."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return ratio_or_one(2 * tp, 2 * tp + fp + fn)


def iou_from_counts(counts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-image IoU (Jaccard) ``TP / (TP + FP + FN)`` in ``[0, 1]``; 1 when both are empty."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return ratio_or_one(tp, tp + fp + fn)


def scores_from_counts(counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-image ``dice``, ``iou`` (Jaccard), ``sensitivity`` ``TP / (TP + FN)``,
    ``specificity`` ``TN / (TN + FP)`` and ``accuracy``, float64 ``(N,)`` tensors in ``[0, 1]``;
    a ratio whose denominator is 0 is 1 (as the ISIC scorer defines it)."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    return {"dice": dice_from_counts(counts), "iou": iou_from_counts(counts),
            "sensitivity": ratio_or_one(tp, tp + fn), "specificity": ratio_or_one(tn, tn + fp),
            "accuracy": ratio_or_one(tp + tn, tp + fp + fn + tn)}


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
