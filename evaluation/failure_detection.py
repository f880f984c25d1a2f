"""How well a quality estimate finds the failed masks, scored as segmentation-failure detection
is (Zenk et al., Medical Image Analysis 2025): the AUROC for telling failures (Jaccard < 0.65,
the ISIC rule) from the rest, the Spearman correlation of the estimate with the Dice, and the
risk-coverage curve, whose area (AURC) is the mean risk ``1 - Dice`` of the masks one keeps,
averaged over every number of masks kept in the order of the estimate (lower is better)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

from evaluation.scores import JACCARD_THRESHOLD


def auroc(scores: Sequence[float] | np.ndarray,
          positives: Sequence[bool] | np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for finding ``positives`` (higher score: more
    likely positive), ties counted half; ``None`` when one class is absent."""
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    found, others = int(positives.sum()), int((~positives).sum())
    if not found or not others:
        return None
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - found * (found + 1) / 2) / (found * others))


def risk_coverage(confidence: Sequence[float] | np.ndarray,
                  risk: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve: keeping the ``k`` most confident items, ``k = 1 .. N``, the
    coverage ``k / N`` and the mean risk of those kept; ties in confidence are kept together."""
    confidence, risk = np.asarray(confidence, dtype=np.float64), np.asarray(risk, np.float64)
    order = np.argsort(-confidence, kind="stable")
    kept = np.arange(1, len(risk) + 1)
    selective = np.cumsum(risk[order]) / kept
    # Items tied in confidence cannot be told apart: each takes the risk of the whole tie.
    ends = np.r_[np.flatnonzero(np.diff(confidence[order]) != 0), len(risk) - 1]
    selective = np.repeat(selective[ends], np.diff(np.r_[-1, ends]))
    return kept / len(risk), selective


def aurc(confidence: Sequence[float] | np.ndarray, risk: Sequence[float] | np.ndarray) -> float:
    """Area under the risk-coverage curve (:func:`risk_coverage`), in ``[0, 1]``."""
    return float(risk_coverage(confidence, risk)[1].mean())


def quality_summary(rows: Sequence[Mapping[str, Any]], review_below: float) -> dict[str, Any]:
    """How well the ``quality`` of each row ranks its ``dice`` and finds its failures, and what
    the review flag (``review`` ``yes``/``no``) does to the ranking score.

    Returns:
        ``images``, ``failures`` (Jaccard < 0.65), ``auroc`` (the estimate finding them;
        ``None`` without failures or without successes), ``spearman`` (estimate and Dice),
        ``aurc`` and ``aurc_optimal`` (the estimate that knew the Dice), ``review_below``,
        ``flagged`` (masks with a review flag, any reason), ``failures_flagged``,
        ``threshold_jaccard_all`` and ``threshold_jaccard_unflagged`` (mean thresholded
        Jaccard of all masks and of those not flagged; ``None`` when all are flagged), and
        ``reasons``: ``{reason: count}``.
    """
    quality = np.array([row["quality"] for row in rows], dtype=np.float64)
    dice = np.array([row["dice"] for row in rows], dtype=np.float64)
    failures = np.array([row["jaccard"] < JACCARD_THRESHOLD for row in rows])
    flagged = np.array([row["review"] == "yes" for row in rows])
    ranking = np.array([row["threshold_jaccard"] for row in rows], dtype=np.float64)
    reasons: dict[str, int] = {}
    for row in rows:
        for reason in filter(None, row["reason"].split("; ")):
            reasons[reason] = reasons.get(reason, 0) + 1
    correlation = spearmanr(quality, dice).statistic if len(rows) > 2 else None
    return {
        "images": len(rows), "failures": int(failures.sum()),
        "auroc": auroc(-quality, failures),
        "spearman": None if correlation is None or np.isnan(correlation) else float(correlation),
        "aurc": aurc(quality, 1 - dice), "aurc_optimal": aurc(dice, 1 - dice),
        "review_below": review_below, "flagged": int(flagged.sum()),
        "failures_flagged": int((flagged & failures).sum()),
        "threshold_jaccard_all": float(ranking.mean()),
        "threshold_jaccard_unflagged": float(ranking[~flagged].mean()) if (~flagged).any()
        else None,
        "reasons": reasons,
    }
