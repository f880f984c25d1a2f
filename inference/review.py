"""Which masks a person should look at, and why: the review flag and its reasons."""

from __future__ import annotations

import numpy as np

NOT_DERMOSCOPY = "not dermoscopy"
NO_LESION = "no lesion found"
LARGER_THAN_FRAME = "lesion larger than the frame"
LOW_QUALITY = "low quality"
# A lesion that covers this share of the image's outermost pixels continues beyond the picture:
# its outline, size and asymmetry are those of the part in view.
FRAME_SHARE = 0.25


def frame_share(mask: np.ndarray) -> float:
    """The share of the image's outermost rows and columns that the lesion covers, in
    ``[0, 1]``; ``mask`` bool ``(H, W)``."""
    edges = (mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1])
    return float(sum(int(edge.sum()) for edge in edges) / sum(edge.size for edge in edges))


def review_reasons(mask: np.ndarray, quality: float | None, review_below: float,
                   dermoscopy: bool) -> list[str]:
    """Why a prediction should be reviewed; empty when it need not be.

    Args:
        mask: bool ``(H, W)``, the predicted lesion.
        quality: the estimated Dice in ``[0, 1]``, ``None`` when not estimated.
        review_below: a quality below this is ``low quality``.
        dermoscopy: whether the image passed the dermoscopy check.

    Returns:
        In this order, those that apply: :data:`NOT_DERMOSCOPY`, :data:`NO_LESION`,
        :data:`LARGER_THAN_FRAME`, :data:`LOW_QUALITY` (not repeated for an empty mask).
    """
    reasons = [] if dermoscopy else [NOT_DERMOSCOPY]
    if not mask.any():
        return [*reasons, NO_LESION]
    if frame_share(mask) >= FRAME_SHARE:
        reasons.append(LARGER_THAN_FRAME)
    if quality is not None and quality < review_below:
        reasons.append(LOW_QUALITY)
    return reasons
