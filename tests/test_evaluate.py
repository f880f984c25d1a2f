"""Tests of the evaluation package (ISIC scoring, the report) and scripts/evaluate.py."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from data.layouts import find_pairs
from data.splits import split_pairs
from evaluation import (
    METRICS,
    fit_to_truth,
    hd95,
    overlap_scores,
    read_scored_mask,
    score_masks,
    summarize,
    thresholded_jaccard,
)
from evaluation.scores import boundary
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "evaluate.py"
VAL_IMAGES = "ISIC2018_Task1-2_Validation_Input"


evaluate = load_script("evaluate")


def mask(*rows: str) -> np.ndarray:
    """A bool mask from strings of ``.`` (background) and ``#`` (lesion)."""
    return np.array([[c == "#" for c in row] for row in rows], dtype=bool)


def box(shape: tuple[int, int], top: int, left: int, height: int, width: int) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[top:top + height, left:left + width] = True
    return out


# ---------------------------------------------------------------- metrics, by hand


def test_overlap_scores_by_hand() -> None:
    pred = mask("##..",
                ".#..",
                "....")
    truth = mask("#...",
                 "##..",
                 "....")
    scores = overlap_scores(pred, truth)
    # TP (0,0) (1,1); FP (0,1); FN (1,0); 8 TN.
    assert (scores["tp"], scores["fp"], scores["fn"], scores["tn"]) == (2, 1, 1, 8)
    assert scores["dice"] == pytest.approx(4 / 6)
    assert scores["jaccard"] == pytest.approx(2 / 4)
    assert scores["threshold_jaccard"] == 0.0
    assert scores["sensitivity"] == pytest.approx(2 / 3)
    assert scores["specificity"] == pytest.approx(8 / 9)
    assert scores["accuracy"] == pytest.approx(10 / 12)


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((4, 5), dtype=bool)
    scores = score_masks(empty, empty)
    assert {name: scores[name] for name in METRICS} == {name: (0.0 if name == "hd95" else 1.0)
                                                       for name in METRICS}


def test_empty_prediction() -> None:
    truth = box((4, 5), 1, 1, 2, 2)
    scores = score_masks(np.zeros_like(truth), truth)
    assert (scores["dice"], scores["jaccard"], scores["threshold_jaccard"]) == (0, 0, 0)
    assert scores["sensitivity"] == 0.0
    assert scores["specificity"] == 1.0
    assert scores["accuracy"] == pytest.approx(16 / 20)
    assert math.isnan(scores["hd95"])


def test_empty_ground_truth() -> None:
    pred = box((4, 5), 0, 0, 1, 2)
    scores = score_masks(pred, np.zeros_like(pred))
    assert (scores["dice"], scores["jaccard"], scores["threshold_jaccard"]) == (0, 0, 0)
    assert scores["sensitivity"] == 1.0  # nothing to find: the official scorer's freebie
    assert scores["specificity"] == pytest.approx(18 / 20)
    assert scores["accuracy"] == pytest.approx(18 / 20)
    assert math.isnan(scores["hd95"])


def test_lesion_everywhere_has_specificity_one() -> None:
    full = np.ones((3, 3), dtype=bool)
    scores = overlap_scores(full, full)
    assert scores["specificity"] == 1.0 and scores["dice"] == 1.0


@pytest.mark.parametrize(("found", "length", "expected"), [
    (13, 20, 13 / 20),  # exactly 0.65: kept
    (14, 20, 14 / 20),
    (12, 19, 0.0),  # 0.63: scored 0
    (0, 20, 0.0),
])
def test_threshold_jaccard_around_065(found: int, length: int, expected: float) -> None:
    truth = np.ones((1, length), dtype=bool)
    pred = box((1, length), 0, 0, 1, found)
    assert overlap_scores(pred, truth)["threshold_jaccard"] == pytest.approx(expected)


def test_thresholded_jaccard_boundary() -> None:
    assert thresholded_jaccard(0.65) == 0.65
    assert thresholded_jaccard(np.nextafter(0.65, 0)) == 0.0
    assert thresholded_jaccard(1.0) == 1.0


def test_scores_refuse_unbinarised_or_mismatched_masks() -> None:
    with pytest.raises(ValueError, match="binarize"):
        overlap_scores(np.full((2, 2), 255, np.uint8), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="one size"):
        hd95(np.ones((2, 2), bool), np.ones((2, 3), bool))


# ---------------------------------------------------------------- HD95, by hand


def test_boundary_by_hand() -> None:
    square = box((6, 6), 1, 1, 4, 4)
    assert boundary(square).sum() == 12  # the 4x4 square less its 2x2 inside
    assert not boundary(square)[2:4, 2:4].any()
    # Pixels on the image's edge are boundary: the lesion ends there.
    assert boundary(np.ones((3, 4), bool)).sum() == 10


def test_hd95_of_two_pixels_is_their_distance() -> None:
    pred = box((5, 6), 0, 0, 1, 1)
    truth = box((5, 6), 3, 4, 1, 1)
    assert hd95(pred, truth) == pytest.approx(5.0)  # a 3-4-5 triangle


def test_hd95_of_nested_squares() -> None:
    truth = box((9, 9), 3, 3, 3, 3)  # boundary: 8 pixels, all 1 away from the ring outside
    pred = box((9, 9), 2, 2, 5, 5)  # boundary: a ring of 16; its 4 corners are sqrt(2) away
    # pred -> truth: 12 distances of 1 and 4 of sqrt(2); the 95th percentile of 16 sorted
    # values lies between the 15th and 16th, both sqrt(2). truth -> pred: all 1.
    assert hd95(pred, truth) == pytest.approx(math.sqrt(2))
    assert hd95(truth, pred) == pytest.approx(math.sqrt(2))
    assert hd95(pred, pred) == 0.0


def test_hd95_takes_the_larger_directed_percentile() -> None:
    truth = box((1, 11), 0, 0, 1, 1)
    pred = truth | box((1, 11), 0, 10, 1, 1)
    # pred -> truth: [0, 10], 95th percentile 0 + 0.95 * 10 = 9.5; truth -> pred: [0].
    assert hd95(pred, truth) == pytest.approx(9.5)


# ---------------------------------------------------------------- against a plain formula


def reference_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """The ISIC formulas and HD95 written out with NumPy only (brute-force distances)."""
    tp = np.sum(pred & truth)
    fp = np.sum(pred & ~truth)
    fn = np.sum(~pred & truth)
    tn = np.sum(~pred & ~truth)
    union = tp + fp + fn
    jaccard = tp / union if union else 1.0
    return {
        "dice": 2 * tp / (2 * tp + fp + fn) if union else 1.0,
        "jaccard": jaccard,
        "threshold_jaccard": jaccard if jaccard >= 0.65 else 0.0,
        "sensitivity": tp / (tp + fn) if tp + fn else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "accuracy": (tp + tn) / pred.size,
        "hd95": reference_hd95(pred, truth),
    }


def edge_points(m: np.ndarray) -> np.ndarray:
    padded = np.pad(m, 1)
    inside = (padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    return np.argwhere(m & ~inside).astype(float)


def reference_hd95(pred: np.ndarray, truth: np.ndarray) -> float:
    a, b = edge_points(pred), edge_points(truth)
    if len(a) == 0 or len(b) == 0:
        return 0.0 if len(a) == len(b) else math.nan
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(np.percentile(distances.min(1), 95), np.percentile(distances.min(0), 95))


def random_blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smoothed noise thresholded at a random level: blobs, holes, sometimes empty or full."""
    noise = cv2.GaussianBlur(rng.random(shape).astype(np.float32), (5, 5), 0)
    return noise > rng.uniform(0.3, 0.7)


def test_scores_match_a_plain_numpy_formula_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        shape = (int(rng.integers(3, 24)), int(rng.integers(3, 24)))
        pred, truth = random_blob(rng, shape), random_blob(rng, shape)
        ours, expected = score_masks(pred, truth), reference_scores(pred, truth)
        for name in METRICS:
            assert ours[name] == pytest.approx(expected[name], rel=1e-6, nan_ok=True), name


# ---------------------------------------------------------------- summary, mask files


def test_summarize_leaves_undefined_hd95_out() -> None:
    rows = [dict.fromkeys(METRICS, 1.0) for _ in range(3)]
    for row, jaccard, hd in zip(rows, (0.5, 0.7, 0.9), (1.0, math.nan, 3.0)):
        row.update(jaccard=jaccard, threshold_jaccard=thresholded_jaccard(jaccard), hd95=hd)
    summary = summarize(rows)
    assert summary["images"] == 3
    assert summary["ranking_score"] == pytest.approx((0 + 0.7 + 0.9) / 3)
    assert summary["metrics"]["jaccard"]["median"] == pytest.approx(0.7)
    assert summary["metrics"]["jaccard"]["std"] == pytest.approx(0.2)  # sample std, ddof 1
    assert summary["metrics"]["hd95"]["mean"] == pytest.approx(2.0)
    assert summary["hd95_undefined"] == 1


def test_masks_are_binarised_above_128(tmp_path: Path) -> None:
    values = np.array([[0, 128, 129, 255]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "m.png"), values)
    assert read_scored_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
    cv2.imwrite(str(tmp_path / "ones.png"), np.array([[0, 1]], dtype=np.uint8))
    with pytest.raises(ValueError, match="ones.png"):
        read_scored_mask(tmp_path / "ones.png")


def test_fit_to_truth_refuses_or_resizes() -> None:
    pred = box((2, 3), 0, 0, 1, 3)
    with pytest.raises(ValueError, match=r"p\.png is 3x2 .* 6x4.*--resize-pred"):
        fit_to_truth(pred, (4, 6), "p.png")
    assert fit_to_truth(pred, (4, 6), "p.png", resize=True).tolist() == box(
        (4, 6), 0, 0, 2, 6).tolist()


# ---------------------------------------------------------------- the script, --pred/--gt


def write_masks(folder: Path, masks: dict[str, np.ndarray], suffix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for id_, m in masks.items():
        cv2.imwrite(str(folder / f"{id_}{suffix}.png"), m.astype(np.uint8) * 255)


def read_rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture
def mask_folders(tmp_path: Path) -> tuple[Path, Path, dict, dict]:
    rng = np.random.default_rng(1)
    ids = [f"ISIC_000000{i}" for i in range(4)]
    truths = {id_: random_blob(rng, (30, 40)) for id_ in ids}
    preds = {id_: random_blob(rng, (30, 40)) for id_ in ids}
    preds[ids[0]] = truths[ids[0]]  # a perfect one
    preds[ids[1]] = np.zeros((30, 40), bool)  # an empty one: HD95 undefined
    truths[ids[1]][5:10, 5:10] = True
    write_masks(tmp_path / "pred", preds, "_segmentation")
    write_masks(tmp_path / "gt", truths)  # a plain folder, masks named by id
    return tmp_path / "pred", tmp_path / "gt", preds, truths


def test_pred_gt_round_trip(mask_folders, tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir, preds, truths = mask_folders
    out = tmp_path / "report"
    assert evaluate.main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--output", str(out)]) == 0
    rows = read_rows(out)
    assert [row["id"] for row in rows] == sorted(truths)
    expected = {id_: reference_scores(preds[id_], truths[id_]) for id_ in truths}
    for row in rows:
        for name in METRICS:
            assert float(row[name]) == pytest.approx(expected[row["id"]][name], rel=1e-6,
                                                     nan_ok=True)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 4
    assert summary["hd95_undefined"] == 1
    for name in METRICS:
        values = [expected[id_][name] for id_ in truths]
        assert summary["metrics"][name]["mean"] == pytest.approx(np.nanmean(values))
    assert summary["ranking_score"] == pytest.approx(
        np.mean([expected[id_]["threshold_jaccard"] for id_ in truths]))
    assert summary["settings"]["mode"] == "masks"
    assert (out / "jaccard_histogram.png").stat().st_size > 0
    assert (out / "worst_cases.png").stat().st_size > 0
    assert "ranking score" in capsys.readouterr().out


def test_size_mismatch_names_the_file_unless_resizing(mask_folders, tmp_path: Path,
                                                      capsys) -> None:
    pred_dir, gt_dir, _, truths = mask_folders
    small = next(iter(truths))
    half = cv2.resize(truths[small].astype(np.uint8), (20, 15), interpolation=cv2.INTER_NEAREST)
    write_masks(pred_dir, {small: half.astype(bool)}, "_segmentation")
    args = ["--pred", str(pred_dir), "--gt", str(gt_dir), "--output", str(tmp_path / "r")]
    assert evaluate.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{small}_segmentation.png" in err
    assert evaluate.main([*args, "--resize-pred"]) == 0
    row = next(r for r in read_rows(tmp_path / "r") if r["id"] == small)
    resized = fit_to_truth(half.astype(bool), truths[small].shape, "", resize=True)
    assert float(row["jaccard"]) == pytest.approx(
        reference_scores(resized, truths[small])["jaccard"])


@pytest.mark.parametrize("problem", ["missing gt", "no matching ids", "missing prediction",
                                     "missing checkpoint", "tta with pred"])
def test_user_errors_are_one_line(problem: str, mask_folders, tmp_path: Path, capsys) -> None:
    pred_dir, gt_dir, _, truths = mask_folders
    args = ["--pred", str(pred_dir), "--gt", str(gt_dir), "--output", str(tmp_path / "r")]
    if problem == "missing gt":
        args[3] = str(tmp_path / "nowhere")
    elif problem == "no matching ids":
        for path in pred_dir.iterdir():
            path.rename(path.with_name("other_" + path.name))
    elif problem == "missing prediction":
        (pred_dir / f"{sorted(truths)[-1]}_segmentation.png").unlink()
    elif problem == "missing checkpoint":
        args = ["--checkpoint", str(tmp_path / "none.pt"), "--data", str(gt_dir)]
    else:
        args.append("--tta")
    assert evaluate.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "r").exists()


def test_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--pred", str(tmp_path), "--gt", str(tmp_path / "gt")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: --gt folder {tmp_path / 'gt'} does not exist"]


# ---------------------------------------------------------------- the script, --checkpoint


def test_model_resolution_reproduces_training_validation(tiny_checkpoint_dir: Path,
                                                         synthetic_root: Path,
                                                         tmp_path: Path) -> None:
    best = tiny_checkpoint_dir / "best.pt"
    out = tmp_path / "model"
    assert evaluate.main(["--checkpoint", str(best), "--split", "val", "--resolution", "model",
                          "--device", "cpu", "--precision", "fp32", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    trained = torch.load(best, weights_only=True)
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(
        trained["metrics"]["val_dice"], abs=1e-6)
    assert summary["metrics"]["jaccard"]["mean"] == pytest.approx(
        trained["metrics"]["val_iou"], abs=1e-6)
    _, held_out = split_pairs(find_pairs(synthetic_root), 0.1, seed=0)
    assert [row["id"] for row in read_rows(out)] == [pair.id for pair in held_out]
    assert summary["settings"]["split_source"] == "training"


def test_checkpoint_mode_equals_predict_then_pred_mode(tiny_checkpoint_dir: Path,
                                                       synthetic_root: Path,
                                                       tmp_path: Path) -> None:
    best = str(tiny_checkpoint_dir / "best.pt")
    common = ["--device", "cpu", "--precision", "fp32"]
    assert predict.main(["--input", str(synthetic_root / VAL_IMAGES), "--checkpoint", best,
                         "--output", str(tmp_path / "masks"), *common]) == 0
    assert evaluate.main(["--checkpoint", best, "--data", str(synthetic_root),
                          "--output", str(tmp_path / "direct"), *common]) == 0
    assert evaluate.main(["--pred", str(tmp_path / "masks"), "--gt", str(synthetic_root),
                          "--output", str(tmp_path / "files")]) == 0
    direct, files = read_rows(tmp_path / "direct"), read_rows(tmp_path / "files")
    assert len(direct) == 8  # the layout's val split, the default
    # The same scores and geometry; colours need the image, which only the model's mode reads.
    shared = [key for key in files[0] if not key.endswith("colour_count")]
    assert [{key: row[key] for key in shared} for row in direct] == [
        {key: row[key] for key in shared} for row in files]
    assert {"quality", "review", "reason"} <= set(direct[0]) and "quality" not in files[0]
    settings = json.loads((tmp_path / "direct" / "summary.json").read_text())["settings"]
    assert (settings["split"], settings["resolution"], settings["threshold"]) == (
        "val", "original", 0.5)
    files_summary = json.loads((tmp_path / "files" / "summary.json").read_text())
    assert settings.keys() == files_summary["settings"].keys()  # one schema for both modes
    assert (settings["mode"], files_summary["settings"]["mode"]) == ("checkpoint", "masks")
    assert files_summary["settings"]["checkpoint"] is None
    assert files_summary["settings"]["predictions"] == str(tmp_path / "masks")
