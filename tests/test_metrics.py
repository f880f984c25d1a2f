"""Tests of utils.py: losses and per-image metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils import (
    LOSS_NAMES,
    SegmentationLoss,
    binary_scores,
    confusion_counts,
    dice_from_counts,
    iou_from_counts,
    soft_dice_loss,
    soft_tversky_loss,
)

# Large enough that sigmoid() is 0 or 1 to float32 precision.
CONFIDENT = 100.0


def masks(*rows_per_image: list[list[int]]) -> torch.Tensor:
    """``(N, 1, H, W)`` bool masks from nested lists of 0/1."""
    return torch.tensor(rows_per_image, dtype=torch.bool)[:, None]


def confident_logits(mask: torch.Tensor) -> torch.Tensor:
    """Logits whose sigmoid is (to float precision) exactly ``mask``."""
    return torch.where(mask, CONFIDENT, -CONFIDENT)


def dice_and_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    counts = confusion_counts(pred, target)
    return dice_from_counts(counts), iou_from_counts(counts)


# ---------------------------------------------------------------- metrics, by hand


def test_confusion_counts_by_hand() -> None:
    pred = masks([[1, 1, 0],
                  [0, 1, 0],
                  [0, 0, 0]])
    target = masks([[1, 0, 0],
                    [1, 1, 0],
                    [0, 0, 0]])
    counts = confusion_counts(pred, target)
    # TP: (0,0) and (1,1); FP: (0,1); FN: (1,0); the other 5 pixels are TN.
    assert {k: v.tolist() for k, v in counts.items()} == {"tp": [2], "fp": [1], "fn": [1],
                                                          "tn": [5]}
    assert all(v.dtype == torch.int64 and v.shape == (1,) for v in counts.values())


def test_dice_and_iou_by_hand() -> None:
    pred = masks([[1, 1, 0],
                  [0, 1, 0],
                  [0, 0, 0]])
    target = masks([[1, 0, 0],
                    [1, 1, 0],
                    [0, 0, 0]])
    dice, iou = dice_and_iou(pred, target)
    # Dice = 2*2 / (2*2 + 1 + 1) = 2/3; IoU = 2 / (2 + 1 + 1) = 1/2.
    assert dice.item() == pytest.approx(2 / 3)
    assert iou.item() == pytest.approx(1 / 2)


def test_disjoint_masks_score_zero_and_identical_masks_one() -> None:
    target = masks([[1, 1], [0, 0]], [[0, 1], [1, 1]])
    disjoint = masks([[0, 0], [1, 1]], [[1, 0], [0, 0]])
    assert dice_and_iou(disjoint, target)[0].tolist() == [0.0, 0.0]
    assert dice_and_iou(disjoint, target)[1].tolist() == [0.0, 0.0]
    assert dice_and_iou(target, target)[0].tolist() == [1.0, 1.0]
    assert dice_and_iou(target, target)[1].tolist() == [1.0, 1.0]


def test_empty_masks() -> None:
    empty = masks([[0, 0], [0, 0]])
    lesion = masks([[0, 1], [0, 0]])
    both_empty = dice_and_iou(empty, empty)
    assert both_empty[0].item() == 1.0 and both_empty[1].item() == 1.0
    missed = dice_and_iou(empty, lesion)  # nothing predicted, a lesion there
    assert missed[0].item() == 0.0 and missed[1].item() == 0.0
    hallucinated = dice_and_iou(lesion, empty)  # a lesion predicted on clear skin
    assert hallucinated[0].item() == 0.0 and hallucinated[1].item() == 0.0


def test_scores_are_per_image_then_mean_not_pooled() -> None:
    # Image 1: a one-pixel lesion found exactly (Dice 1). Image 2: a four-pixel lesion missed
    # (Dice 0). Per image, then mean: 0.5. Pooled pixels would give 2*1 / (2*1 + 4) = 1/3.
    pred = masks([[1, 0], [0, 0]], [[0, 0], [0, 0]])
    target = masks([[1, 0], [0, 0]], [[1, 1], [1, 1]])
    dice, iou = dice_and_iou(pred, target)
    assert dice.tolist() == [1.0, 0.0] and iou.tolist() == [1.0, 0.0]
    assert dice.mean().item() == pytest.approx(0.5)
    assert dice.mean().item() != pytest.approx(1 / 3)
    scores = binary_scores(confident_logits(pred), target.float())
    assert scores["dice"].tolist() == [1.0, 0.0] and scores["iou"].tolist() == [1.0, 0.0]


def test_confusion_counts_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        confusion_counts(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


def test_binary_scores_thresholds_probabilities() -> None:
    target = masks([[1, 1, 0, 0]]).float()
    # sigmoid(0) = 0.5 is not above the threshold, so the second pixel is background.
    logits = torch.tensor([[[[3.0, 0.0, -3.0, -0.1]]]])
    scores = binary_scores(logits, target)
    assert scores["dice"].item() == pytest.approx(2 / 3)  # TP 1, FN 1
    assert scores["iou"].item() == pytest.approx(1 / 2)
    assert scores["dice"].dtype == torch.float64
    strict = binary_scores(logits, target, threshold=0.99)  # sigmoid(3) = 0.953
    assert strict["dice"].item() == 0.0


def numpy_dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of one pair of boolean masks, straight from the set definitions."""
    intersection = np.sum(np.logical_and(pred, target))
    union = np.sum(np.logical_or(pred, target))
    sizes = np.sum(pred) + np.sum(target)
    if union == 0:
        return 1.0, 1.0
    return 2 * intersection / sizes, intersection / union


def test_random_masks_match_numpy_formula() -> None:
    rng = np.random.default_rng(0)
    # Lesion fractions from none to everything, so empty and full masks are covered too.
    pred = np.stack([rng.random((1, 16, 20)) < p for p in np.linspace(0, 1, 12)])
    target = np.stack([rng.random((1, 16, 20)) < p for p in rng.permutation(np.linspace(0, 1, 12))])
    target[0] = False  # with pred[0] (fraction 0) also empty: both empty
    expected = np.array([numpy_dice_iou(p, t) for p, t in zip(pred, target)])

    dice, iou = dice_and_iou(torch.from_numpy(pred), torch.from_numpy(target))
    np.testing.assert_allclose(dice.numpy(), expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(iou.numpy(), expected[:, 1], rtol=1e-12)
    scores = binary_scores(confident_logits(torch.from_numpy(pred)),
                           torch.from_numpy(target).float())
    np.testing.assert_allclose(scores["dice"].numpy(), expected[:, 0], rtol=1e-12)
    assert ((dice >= 0) & (dice <= 1) & (iou >= 0) & (iou <= iou.new_ones(1))).all()
    assert (iou <= dice).all()  # IoU = D / (2 - D) never exceeds Dice


def test_scores_never_exceed_one_on_large_masks() -> None:
    full = torch.ones(3, 1, 128, 128, dtype=torch.bool)
    dice, iou = dice_and_iou(full, full)
    assert dice.max().item() <= 1.0 and iou.max().item() <= 1.0


# ---------------------------------------------------------------- losses


def test_soft_dice_loss_is_within_zero_and_one() -> None:
    generator = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0, 1000.0):
        logits = scale * torch.randn(4, 1, 8, 8, generator=generator)
        target = (torch.rand(4, 1, 8, 8, generator=generator) < 0.3).float()
        loss = soft_dice_loss(logits, target)
        assert loss.shape == () and 0.0 <= loss.item() <= 1.0


def test_soft_dice_loss_near_zero_when_confidently_right_and_near_one_when_wrong() -> None:
    target = masks([[1, 1, 0], [0, 1, 0]], [[0, 0, 0], [0, 0, 0]])
    assert soft_dice_loss(confident_logits(target), target.float()).item() < 1e-6
    wrong = soft_dice_loss(confident_logits(~target[:1]), target[:1].float()).item()
    assert wrong > 0.8  # smooth=1 keeps it just below 1: 1 - 1/(3 + 3 + 1)


def test_soft_dice_loss_is_per_image_then_mean() -> None:
    # Image 1: probs [1, 0, 0, 0] on target [1, 0, 0, 0]: Dice (2 + 1) / (2 + 1) = 1.
    # Image 2: probs [0, 0, 0, 0] on target [1, 1, 1, 1]: Dice (0 + 1) / (4 + 1) = 1/5.
    # Per image: 1 - (1 + 1/5) / 2 = 0.4. Pooled: 1 - (2 + 1) / (6 + 1) = 4/7.
    target = masks([[1, 0, 0, 0]], [[1, 1, 1, 1]])
    pred = masks([[1, 0, 0, 0]], [[0, 0, 0, 0]])
    loss = soft_dice_loss(confident_logits(pred), target.float())
    assert loss.item() == pytest.approx(0.4, abs=1e-6)


def test_soft_dice_loss_accepts_unbatched_channel() -> None:
    target = masks([[1, 0], [0, 1]])
    logits = torch.zeros_like(target, dtype=torch.float32)
    assert soft_dice_loss(logits, target.float()).item() == pytest.approx(
        soft_dice_loss(logits[:, 0], target[:, 0].float()).item())


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_decreases_toward_a_perfect_prediction(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    target = (torch.rand(2, 1, 16, 16, generator=generator) < 0.4).float()
    loss_fn = SegmentationLoss(name)
    losses = [loss_fn((2 * target - 1) * confidence, target).item()
              for confidence in (-5.0, -1.0, 0.0, 0.5, 1.0, 2.0, 5.0, 20.0)]
    assert all(np.isfinite(losses))
    assert all(a > b for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 1e-3


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_is_finite_for_extreme_logits_and_has_gradients(name: str) -> None:
    target = masks([[1, 0], [0, 1]]).float()
    for logits in (torch.full_like(target, 1e4), torch.full_like(target, -1e4)):
        assert torch.isfinite(SegmentationLoss(name)(logits, target))
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    SegmentationLoss(name)(logits, torch.ones(1, 1, 4, 4)).backward()
    assert logits.grad is not None and (logits.grad < 0).all()  # raising logits helps


def test_compound_losses_add_their_parts() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 6, 6, generator=generator)
    target = (torch.rand(2, 1, 6, 6, generator=generator) < 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    p_t = probs * target + (1 - probs) * (1 - target)
    focal = ((1 - p_t) ** 2 * -torch.log(p_t)).mean()
    tversky = soft_tversky_loss(logits, target, alpha=0.3, beta=0.7)
    dice = soft_dice_loss(logits, target)
    expected = {"dice": dice, "bce_dice": bce + dice, "focal_dice": focal + dice,
                "tversky": tversky, "bce_tversky": bce + tversky}
    assert set(expected) == set(LOSS_NAMES)
    for name, value in expected.items():
        assert SegmentationLoss(name)(logits, target).item() == pytest.approx(value.item(),
                                                                              rel=1e-5), name


def test_tversky_with_equal_weights_is_dice_and_recall_weights_punish_misses_more() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 1, 5, 5, generator=generator)
    target = (torch.rand(3, 1, 5, 5, generator=generator) < 0.5).float()
    assert soft_tversky_loss(logits, target).item() == pytest.approx(
        soft_dice_loss(logits, target).item())
    # Same Dice (TP 2 and FP + FN = 2 in both), but a miss costs more than a false alarm.
    missed_two = confident_logits(masks([[1, 1, 0, 0]])), masks([[1, 1, 1, 1]]).float()
    two_false_alarms = confident_logits(masks([[1, 1, 1, 1]])), masks([[1, 1, 0, 0]]).float()
    assert soft_dice_loss(*missed_two).item() == pytest.approx(
        soft_dice_loss(*two_false_alarms).item())
    recall_loss = SegmentationLoss("tversky")
    assert recall_loss(*missed_two) > recall_loss(*two_false_alarms) + 0.1


def test_deep_supervision_loss_weights_coarser_levels_against_a_pooled_target() -> None:
    generator = torch.Generator().manual_seed(3)
    target = (torch.rand(2, 1, 8, 8, generator=generator) < 0.5).float()
    full, half = torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 1, 4, 4)
    loss_fn = SegmentationLoss("bce_dice")
    pooled = torch.nn.functional.avg_pool2d(target, 2)
    expected = (loss_fn(full, target) + 0.5 * loss_fn(half, pooled)) / 1.5
    assert loss_fn((full, half), target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_unknown_loss_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="bce_dice"):
        SegmentationLoss("lovasz")
