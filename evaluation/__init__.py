"""Scoring lesion masks against experts' masks, the way the ISIC challenge scored them.

``evaluation.scores``: the per-image scores and their summary. The names most callers need are
re-exported here (``from evaluation import score_masks``).
"""

from evaluation.scores import (
    COUNTS,
    JACCARD_THRESHOLD,
    MASK_THRESHOLD,
    METRICS,
    binarize,
    fit_to_truth,
    hd95,
    overlap_scores,
    read_scored_mask,
    score_masks,
    summarize,
    thresholded_jaccard,
)

__all__ = ["COUNTS", "JACCARD_THRESHOLD", "MASK_THRESHOLD", "METRICS", "binarize",
           "fit_to_truth", "hd95", "overlap_scores", "read_scored_mask", "score_masks",
           "summarize", "thresholded_jaccard"]
