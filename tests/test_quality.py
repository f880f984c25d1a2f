"""Tests of the quality estimate, the review flags, the dermoscopy check, the calibration
(inference/quality.py, review.py, image_check.py, calibration.py), their scores
(evaluation/failure_detection.py) and scripts/calibrate.py, with tiny models and synthetic
images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from data.layouts import find_pairs
from evaluation.failure_detection import aurc, auroc, quality_summary, risk_coverage
from evaluation.fitting import QualitySamples, fit_calibration, review_threshold
from inference.calibration import (
    UNFITTED_REVIEW_BELOW,
    Calibration,
    calibration_error,
    fit_temperature,
)
from inference.image_check import (
    ACQUISITION_VARIANTS,
    EXPOSED_WHITE,
    STATISTICS,
    DermoscopyCheck,
    bright_light,
    circular_field,
    fit_dermoscopy_check,
    image_statistics,
    low_resolution,
    magnified,
)
from inference.predictor import Predictor
from inference.quality import (
    MIN_FIT_IMAGES,
    QUALITY_FEATURES,
    QualityModel,
    fit_quality_model,
    flip_features,
)
from inference.review import (
    LARGER_THAN_FRAME,
    LOW_QUALITY,
    NO_LESION,
    NOT_DERMOSCOPY,
    frame_share,
    review_reasons,
)
from models.checkpoint import load_model_file
from tests.conftest import TINY_TRAIN_ARGS, load_script

calibrate = load_script("calibrate")
export = load_script("export")


# ---------------------------------------------------------------- the signals


def disc_probabilities(radius: float, size: int = 64, softness: float = 1.0) -> np.ndarray:
    """A lesion probability map: a disc with a soft border ``softness`` pixels wide."""
    y, x = np.mgrid[:size, :size]
    distance = np.hypot(x - size / 2, y - size / 2) - radius
    return 1 / (1 + np.exp(distance / softness))


def test_flip_features_of_agreeing_confident_variants() -> None:
    sharp = np.stack([disc_probabilities(16, softness=0.05)] * 4)
    signals = flip_features(sharp, 0.5)
    assert signals["flip_agreement"] == 1.0
    assert signals["self_dice"] == pytest.approx(1.0, abs=0.01)
    assert signals["flip_std"] == pytest.approx(0.0, abs=1e-6)
    assert signals["area"] == pytest.approx(math.pi * 16**2 / 64**2, rel=0.05)


def test_disagreeing_or_vague_variants_score_lower() -> None:
    sharp = np.stack([disc_probabilities(16, softness=0.05)] * 4)
    vague = np.stack([disc_probabilities(16, softness=4.0)] * 4)
    shifted = np.stack([disc_probabilities(r, softness=0.05) for r in (10, 14, 18, 22)])
    base = flip_features(sharp, 0.5)
    assert flip_features(vague, 0.5)["self_dice"] < base["self_dice"] - 0.05
    assert flip_features(shifted, 0.5)["flip_std"] > base["flip_std"] + 0.1
    # radii 10, 14, 18, 22: pairwise Dice 2 r1^2 / (r1^2 + r2^2), averaged over the 6 pairs
    radii = (10, 14, 18, 22)
    expected = np.mean([2 * min(a, b) ** 2 / (a * a + b * b)
                        for i, a in enumerate(radii) for b in radii[i + 1:]])
    assert flip_features(shifted, 0.5)["flip_agreement"] == pytest.approx(expected, abs=0.02)
    assert flip_features(shifted[:1], 0.5)["flip_agreement"] == 1.0


def test_flip_features_of_an_empty_prediction() -> None:
    signals = flip_features(np.zeros((4, 8, 8)), 0.5)
    assert signals == {"flip_agreement": 1.0, "self_dice": 1.0, "flip_std": 0.0, "area": 0.0}


# ---------------------------------------------------------------- the quality model


SIGNALS = ("flip_agreement", "self_dice", "flip_std", "area")


def synthetic_signals(count: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    """Signals whose agreement carries the truth, with noise: a fit must find that."""
    rng = np.random.default_rng(seed)
    dice = np.clip(rng.beta(6, 1.2, count), 0.01, 0.995)
    signals = [{"flip_agreement": float(np.clip(d + rng.normal(0, 0.03), 0.01, 0.999)),
                "self_dice": float(rng.uniform(0.5, 0.99)),
                "flip_std": float(rng.uniform(0.001, 0.2)),
                "area": float(rng.uniform(0.01, 0.6))} for d in dice]
    return signals, dice


def test_an_unfitted_model_estimates_the_agreement() -> None:
    model = QualityModel.unfitted()
    assert model.images == 0 and model.features == QUALITY_FEATURES == ("flip_agreement",)
    signals = {"flip_agreement": 0.83, "self_dice": 0.9, "flip_std": 0.1, "area": 0.2}
    assert model.estimate(signals) == pytest.approx(0.83)
    assert model.estimate(signals, empty=True) == 0.0


def test_fit_recovers_the_signal_that_carries_the_dice() -> None:
    signals, dice = synthetic_signals(200)
    model = fit_quality_model(signals, dice, SIGNALS)
    assert model.images == 200 and model.features == SIGNALS
    weights = dict(zip(model.features, model.weights))
    assert weights["flip_agreement"] > 5 * max(abs(weights[name]) for name in SIGNALS[1:])
    held_signals, held_dice = synthetic_signals(100, seed=1)
    estimates = [model.estimate(row) for row in held_signals]
    assert np.corrcoef(estimates, held_dice)[0, 1] > 0.8
    assert all(0 <= value <= 1 for value in estimates)


def test_too_few_images_leave_the_model_unfitted() -> None:
    signals, dice = synthetic_signals(MIN_FIT_IMAGES - 1)
    assert fit_quality_model(signals, dice) == QualityModel.unfitted()


def test_signals_beyond_the_fitted_range_are_clipped_to_it() -> None:
    signals, dice = synthetic_signals(200)
    model = fit_quality_model(signals, dice, SIGNALS)
    inside = {"flip_agreement": 0.9, "self_dice": 0.9, "flip_std": 0.05, "area": 0.6}
    far = {**inside, "area": 0.9999}  # far beyond the fitted 0.01 .. 0.6
    assert model.estimate(far) == pytest.approx(model.estimate({**inside, "area": 0.6}),
                                                abs=0.02)


def test_quality_model_round_trips_through_json() -> None:
    signals, dice = synthetic_signals(100)
    for model in (fit_quality_model(signals, dice), fit_quality_model(signals, dice, SIGNALS),
                  QualityModel.unfitted()):
        copy = QualityModel.from_dict(json.loads(json.dumps(model.to_dict())))
        assert copy == model


# ---------------------------------------------------------------- review reasons


def test_review_reasons() -> None:
    lesion = np.zeros((40, 50), bool)
    lesion[10:30, 10:40] = True
    assert review_reasons(lesion, 0.95, 0.8, dermoscopy=True) == []
    assert review_reasons(lesion, 0.5, 0.8, dermoscopy=True) == [LOW_QUALITY]
    assert review_reasons(lesion, None, 0.8, dermoscopy=False) == [NOT_DERMOSCOPY]
    empty = np.zeros((40, 50), bool)
    assert review_reasons(empty, 0.0, 0.8, dermoscopy=True) == [NO_LESION]
    assert review_reasons(empty, 0.0, 0.8, dermoscopy=False) == [NOT_DERMOSCOPY, NO_LESION]
    filling = np.ones((40, 50), bool)
    filling[:5] = False  # touches three of the four sides
    assert frame_share(filling) > 0.5
    assert review_reasons(filling, 0.9, 0.8, dermoscopy=True) == [LARGER_THAN_FRAME]


# ---------------------------------------------------------------- not dermoscopy


def dermoscopy_like(seed: int) -> np.ndarray:
    """Pinkish skin with a brown blob and a dark vignette, as the synthetic set draws."""
    rng = np.random.default_rng(seed)
    image = np.empty((120, 160, 3), np.float32)
    image[:] = (214, 160, 150) + rng.normal(0, 4, 3)
    y, x = np.mgrid[:120, :160]
    blob = np.hypot(x - 80 + rng.normal(0, 8), y - 60) < rng.uniform(20, 40)
    image[blob] = (120, 75, 55) + rng.normal(0, 4, 3)
    image *= np.clip(1.6 - np.hypot(x - 80, y - 60) / 90, 0.15, 1)[..., None]
    image += rng.normal(0, 3, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def not_dermoscopy() -> dict[str, np.ndarray]:
    page = np.full((120, 160, 3), 248, np.uint8)
    for row in range(20, 110, 18):
        cv2.putText(page, "lorem ipsum 123", (6, row), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (20, 20, 20), 1)
    sky = np.zeros((120, 160, 3), np.uint8)
    sky[:60] = (90, 150, 230)
    sky[60:] = (40, 140, 50)
    checker = ((np.indices((120, 160)) // 10).sum(0) % 2 * 255).astype(np.uint8)
    return {"text page": page, "grey frame": np.full((120, 160, 3), 128, np.uint8),
            "white frame": np.full((120, 160, 3), 255, np.uint8),
            "black frame": np.zeros((120, 160, 3), np.uint8),
            "sky and grass": sky, "checkerboard": np.dstack([checker] * 3)}


def test_the_dermoscopy_check_passes_its_kind_and_flags_other_pictures() -> None:
    check = fit_dermoscopy_check([image_statistics(dermoscopy_like(seed))
                                  for seed in range(200)])
    assert set(check.bounds) == set(STATISTICS) and check.images == 200
    new = [check.failures(image_statistics(dermoscopy_like(seed))) for seed in range(200, 240)]
    assert sum(bool(failed) for failed in new) <= 3  # 6 bounds at 0.25 % each: a few
    for name, picture in not_dermoscopy().items():
        assert check.failures(image_statistics(picture)), name
    assert DermoscopyCheck.from_dict(json.loads(json.dumps(check.to_dict()))) == check


@pytest.mark.parametrize("name", sorted(ACQUISITION_VARIANTS))
def test_each_acquisition_variant_is_a_seeded_rgb_picture(name: str) -> None:
    variant_of = ACQUISITION_VARIANTS[name]
    image = dermoscopy_like(0)
    variant = variant_of(image, np.random.default_rng(1))
    assert variant.dtype == np.uint8 and variant.ndim == 3 and variant.shape[2] == 3
    assert np.array_equal(variant, variant_of(image, np.random.default_rng(1)))
    assert not np.array_equal(variant, image)


def test_acquisition_variants_do_what_they_say() -> None:
    image, rng = dermoscopy_like(0), np.random.default_rng(3)
    field = circular_field(image, rng)
    assert field[0, 0].max() <= 5 and np.array_equal(field[60, 80], image[60, 80])
    bright = bright_light(image, rng)
    assert bright.mean() > image.mean()
    assert (bright.min(axis=2) >= 250).mean() <= EXPOSED_WHITE + 0.01  # exposure control
    assert magnified(image, rng).shape[0] < image.shape[0]
    low = low_resolution(image, rng)
    assert low.shape == image.shape
    detail = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var()
    assert cv2.Laplacian(cv2.cvtColor(low, cv2.COLOR_RGB2GRAY), cv2.CV_32F).var() < detail


def test_a_bright_red_channel_is_not_clipped_but_a_white_pixel_is() -> None:
    bright_skin = np.zeros((64, 64, 3), np.uint8)
    bright_skin[:] = (255, 200, 180)  # a bright dermatoscope saturates the red channel only
    white = np.full((64, 64, 3), 252, np.uint8)
    assert image_statistics(bright_skin)["clipped_share"] == 0
    assert image_statistics(white)["clipped_share"] == 1


def test_a_faint_colour_cast_is_not_measured_as_grey() -> None:
    nearly_grey = np.zeros((64, 64, 3), np.uint8)
    nearly_grey[:] = (150, 149, 149)
    grey = image_statistics(np.full((64, 64, 3), 150, np.uint8))["median_chroma"]
    assert image_statistics(nearly_grey)["median_chroma"] > 10 * grey


def test_acquisition_variants_widen_the_check_for_other_dermatoscopes_only() -> None:
    rng = np.random.default_rng(2)

    def with_variants(seeds: range) -> list[dict[str, float]]:
        rows = []
        for seed in seeds:
            image = dermoscopy_like(seed)
            rows += [image_statistics(image)] + [
                image_statistics(variant(image, rng)) for variant in ACQUISITION_VARIANTS.values()]
        return rows

    plain = [image_statistics(dermoscopy_like(seed)) for seed in range(200)]
    narrow, wide = fit_dermoscopy_check(plain), fit_dermoscopy_check(with_variants(range(200)))
    others = with_variants(range(200, 260))
    assert (sum(bool(wide.failures(row)) for row in others) * 3
            < sum(bool(narrow.failures(row)) for row in others))
    for name, picture in not_dermoscopy().items():
        assert wide.failures(image_statistics(picture)), name


# ---------------------------------------------------------------- calibration


def test_fit_temperature_recovers_the_temperature_of_overconfident_logits() -> None:
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 200_000)
    truth = rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))
    overconfident = true_logits * 2.5
    temperature = fit_temperature(overconfident, truth)
    assert temperature == pytest.approx(2.5, rel=0.05)
    before = calibration_error(1 / (1 + np.exp(-overconfident)), truth)
    after = calibration_error(1 / (1 + np.exp(-overconfident / temperature)), truth)
    assert after < 0.01 < before


def test_calibration_error_by_hand() -> None:
    probabilities = np.array([0.05, 0.05, 0.95, 0.95])
    assert calibration_error(probabilities, np.array([False, False, True, True])) == \
        pytest.approx(0.05)
    assert calibration_error(probabilities, np.array([True, True, False, False])) == \
        pytest.approx(0.95)


def test_review_threshold_catches_failures_within_the_flagging_limit() -> None:
    estimates = np.linspace(0.5, 1.0, 100)
    failures = estimates < 0.6  # the 20 lowest fail
    threshold = review_threshold(estimates, failures)
    flagged = estimates < threshold
    assert flagged.mean() <= 0.2 and (flagged & failures).sum() == failures.sum()
    assert review_threshold(estimates, np.zeros(100, bool)) <= 0.5  # nothing to catch


def test_calibration_round_trips_and_defaults() -> None:
    assert Calibration.from_dict(None) == Calibration()
    signals, dice = synthetic_signals(60)
    calibration = Calibration(1.7, fit_quality_model(signals, dice), 0.8,
                              DermoscopyCheck({name: 0.5 for name in STATISTICS}, 9), "test")
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))) == calibration


# ---------------------------------------------------------------- failure-detection scores


def test_auroc_and_aurc_by_hand() -> None:
    assert auroc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.3, 0.4], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5, 0.7], [True, True]) is None
    coverage, risk = risk_coverage([0.9, 0.1, 0.5], [0.0, 1.0, 0.5])
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1])
    assert risk.tolist() == pytest.approx([0.0, 0.25, 0.5])
    assert aurc([0.9, 0.1, 0.5], [0.0, 1.0, 0.5]) == pytest.approx(0.25)
    # Tied confidences cannot be ordered: each kept set takes the tie's mean risk.
    assert risk_coverage([0.5, 0.5], [0.0, 1.0])[1].tolist() == [0.5, 0.5]


def test_quality_summary() -> None:
    rows = [{"quality": q, "dice": d, "jaccard": d / (2 - d), "threshold_jaccard": t,
             "review": r, "reason": reason}
            for q, d, t, r, reason in ((0.95, 0.96, 0.92, "no", ""),
                                       (0.90, 0.90, 0.82, "no", ""),
                                       (0.60, 0.50, 0.0, "yes", "low quality"),
                                       (0.40, 0.70, 0.0, "yes", "low quality; not dermoscopy"))]
    summary = quality_summary(rows, 0.8)
    assert summary["failures"] == 2 and summary["auroc"] == 1.0
    assert summary["flagged"] == summary["failures_flagged"] == 2
    assert summary["threshold_jaccard_all"] == pytest.approx(0.435)
    assert summary["threshold_jaccard_unflagged"] == pytest.approx(0.87)
    assert summary["reasons"] == {"low quality": 2, "not dermoscopy": 1}
    assert summary["aurc_optimal"] <= summary["aurc"]


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint_dir: Path, synthetic_root: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model calibrated on the synthetic validation images (too few to fit the quality
    model, enough for the temperature and the dermoscopy check)."""
    out = tmp_path_factory.mktemp("calibrated") / "best.pt"
    assert calibrate.main(["--checkpoint", str(tiny_checkpoint_dir / "best.pt"), "--output",
                           str(out), "--data", str(synthetic_root), "--training-data",
                           str(synthetic_root), "--device", "cpu", "--precision", "fp32"]) == 0
    return out


def test_calibrate_writes_the_calibration_and_keeps_the_weights(
        calibrated: Path, tiny_checkpoint_dir: Path, capsys: pytest.CaptureFixture) -> None:
    original, copy = (load_model_file(path) for path in (tiny_checkpoint_dir / "best.pt",
                                                         calibrated))
    assert all(torch.equal(original.weights[k], copy.weights[k]) for k in original.weights)
    assert copy.calibration != original.calibration
    calibration = Calibration.from_dict(copy.calibration)
    assert calibration.temperature > 0 and calibration.temperature != 1.0
    assert calibration.dermoscopy is not None and calibration.dermoscopy.images == 24
    assert "8 images of the val split" in calibration.fitted_on
    predictor = Predictor(calibrated, device="cpu", precision="fp32")
    assert predictor.calibration == calibration


def test_train_calibrates_best_pt_when_it_finishes(tiny_checkpoint_dir: Path) -> None:
    calibration = Calibration.from_dict(
        load_model_file(tiny_checkpoint_dir / "best.pt").calibration)
    # The tiny run holds out 2 of the 24 synthetic pairs: too few for the quality model.
    assert calibration.fitted_on.startswith("2 validation and 22 training images of ")
    assert calibration.quality.images == 0 and calibration.dermoscopy.images == 22
    assert calibration.review_below == UNFITTED_REVIEW_BELOW


def test_the_temperature_changes_probabilities_not_masks(calibrated: Path,
                                                         tiny_checkpoint_dir: Path,
                                                         synthetic_root: Path) -> None:
    image = find_pairs(synthetic_root, "val")[0].image
    plain, tempered = (Predictor(path, device="cpu", precision="fp32").predict_file(image)
                       for path in (tiny_checkpoint_dir / "best.pt", calibrated))
    temperatures = [Predictor(path, device="cpu").calibration.temperature
                    for path in (tiny_checkpoint_dir / "best.pt", calibrated)]
    np.testing.assert_array_equal(plain.mask, tempered.mask)
    np.testing.assert_allclose(tempered.logits * temperatures[1], plain.logits * temperatures[0],
                               rtol=1e-4, atol=1e-4)


def test_predictions_carry_quality_flags_and_measurements(calibrated: Path,
                                                          synthetic_root: Path) -> None:
    predictor = Predictor(calibrated, device="cpu", precision="fp32")
    pair = find_pairs(synthetic_root, "val")[0]
    prediction = predictor.predict_file(pair.image)
    assert 0 <= prediction.quality <= 1
    assert prediction.review == bool(prediction.reason)
    assert prediction.measurements.area_px == int(prediction.mask.sum())
    no_quality = Predictor(calibrated, device="cpu", precision="fp32", quality=False)
    assert no_quality.predict_file(pair.image).quality is None
    strict = Predictor(calibrated, device="cpu", precision="fp32", review_below=1.0)
    assert LOW_QUALITY in strict.predict_file(pair.image).reason or \
        not prediction.mask.any()
    grey = np.full((48, 64, 3), 128, np.uint8)
    assert NOT_DERMOSCOPY in predictor.predict(grey).reason


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_a_review_threshold_outside_0_1_is_a_flag_error(calibrated: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="--review-below"):
        Predictor(calibrated, device="cpu", review_below=bad)


def test_exports_keep_the_calibration_and_give_the_same_quality(
        calibrated: Path, synthetic_root: Path, tmp_path: Path) -> None:
    images = str(synthetic_root / "ISIC2018_Task1-2_Validation_Input")
    exported = {}
    for name, flags in (("model.safetensors", ["--format", "safetensors"]),
                        ("model.onnx", ["--format", "onnx"])):
        exported[name] = tmp_path / name
        assert export.main(["--checkpoint", str(calibrated), "--output", str(exported[name]),
                            "--check-images", images, *flags]) == 0
    qualities = {}
    for name, path in {"pt": calibrated, **exported}.items():
        predictor = Predictor(path, device="cpu", precision="fp32")
        assert predictor.calibration == Predictor(calibrated, device="cpu").calibration, name
        qualities[name] = [predictor.predict_file(pair.image).quality
                           for pair in find_pairs(synthetic_root, "val")]
    np.testing.assert_allclose(qualities["model.safetensors"], qualities["pt"], atol=1e-6)
    np.testing.assert_allclose(qualities["model.onnx"], qualities["pt"], atol=1e-3)


def test_calibrating_an_onnx_export_in_place(calibrated: Path, tiny_checkpoint_dir: Path,
                                             synthetic_root: Path, tmp_path: Path) -> None:
    onnx_path = tmp_path / "plain.onnx"
    assert export.main(["--checkpoint", str(tiny_checkpoint_dir / "best.pt"), "--output",
                        str(onnx_path), "--format", "onnx", "--no-check"]) == 0
    before = Predictor(onnx_path, device="cpu").calibration
    assert calibrate.main(["--checkpoint", str(onnx_path), "--data", str(synthetic_root),
                           "--training-data", str(synthetic_root), "--device", "cpu"]) == 0
    after = Predictor(onnx_path, device="cpu").calibration
    assert "8 images of the val split" in after.fitted_on not in before.fitted_on
    assert after.dermoscopy.images == 24 != before.dermoscopy.images


def test_predict_and_evaluate_report_the_quality(calibrated: Path, synthetic_root: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    evaluate = load_script("evaluate")
    common = ["--checkpoint", str(calibrated), "--device", "cpu", "--precision", "fp32"]
    assert predict.main(["--input", str(synthetic_root / "ISIC2018_Task1-2_Validation_Input"),
                         "--output", str(tmp_path / "masks"), *common]) == 0
    csv_path = tmp_path / "masks" / "predictions.csv"
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"for review ({csv_path})")
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for name, picture in not_dermoscopy().items():
        cv2.imwrite(str(pictures / f"{name.replace(' ', '_')}.png"), picture)
    assert evaluate.main(["--data", str(synthetic_root), "--output", str(tmp_path / "report"),
                          "--non-dermoscopy", str(pictures), "--variants", "2", *common]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    flagged_as_other = summary["quality"]["reasons"].get("not dermoscopy", 0)
    assert f"dermoscopy images flagged not dermoscopy: {flagged_as_other} of 8" in printed
    variants = summary["acquisition_variants"]
    assert set(variants) == set(ACQUISITION_VARIANTS)
    assert all(counts["images"] == 16 and 0 <= counts["flagged"] <= 16
               for counts in variants.values())
    assert "16 circular field copies of the images (seed 7)" in printed
    assert summary["quality"]["images"] == 8
    assert summary["calibration"]["temperature"] == pytest.approx(
        Predictor(calibrated, device="cpu").calibration.temperature)
    assert set(summary["measurements"]) >= {"area_px", "max_diameter_px"}
    assert summary["non_dermoscopy"]["images"] == len(not_dermoscopy())
    assert summary["non_dermoscopy"]["flagged"] >= len(not_dermoscopy()) - 1
    assert (tmp_path / "report" / "risk_coverage.png").is_file()


def fake_samples(models: int, per_model: int, seed: int = 0) -> QualitySamples:
    """Held-out predictions whose flip agreement predicts their Dice."""
    rng = np.random.default_rng(seed)
    samples = QualitySamples()
    for group in range(models):
        for _ in range(per_model):
            dice = float(rng.uniform(0.2, 0.98))
            signals = {"flip_agreement": float(np.clip(dice + rng.normal(0, 0.05), 0.01, 0.99)),
                       "self_dice": float(rng.uniform(0.5, 0.99)),
                       "flip_std": float(0.2 * (1 - dice) + 0.01),
                       "area": float(rng.uniform(0.05, 0.6))}
            samples.add(signals, {"dice": dice, "jaccard": dice / (2 - dice)}, group)
    return samples


def test_out_of_fold_estimates_leave_out_the_predicting_models_images(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import evaluation.fitting as fitting

    samples = fake_samples(models=3, per_model=40)
    fitted_on = []
    real_fit = fitting.fit_quality_model

    def recording_fit(signals, dice):
        fitted_on.append({id(row) for row in signals})
        return real_fit(signals, dice)

    monkeypatch.setattr(fitting, "fit_quality_model", recording_fit)
    estimates = fitting.cross_validated_estimates(samples)
    assert len(fitted_on) == 3  # one fit per model, each without that model's images
    for group, rows in enumerate(fitted_on):
        own = {id(row) for row, g in zip(samples.signals, samples.groups) if g == group}
        assert not rows & own and len(rows) == 80
    assert np.corrcoef(estimates, samples.dice)[0, 1] > 0.9


def test_calibration_fits_the_quality_estimate_on_out_of_fold_predictions(
        tiny_checkpoint_dir: Path, synthetic_root: Path) -> None:
    predictor = Predictor(tiny_checkpoint_dir / "best.pt", device="cpu")
    pairs = find_pairs(synthetic_root, "train")
    samples = fake_samples(models=3, per_model=30)
    calibration, report = fit_calibration(predictor, pairs[:8], pairs, "out of fold",
                                          out_of_fold=samples)
    assert calibration.quality.images == 90 and report.quality_images == 90
    assert calibration.quality == fit_quality_model(samples.signals, samples.dice)
    line = report.lines()[1]
    assert "90 out-of-fold predictions of 3 models" in line and "of the 8 held-out" in line
    own, _ = fit_calibration(predictor, pairs[:8], pairs, "own")
    assert own.quality.images == 0  # 8 own images are too few to fit it
    assert own.temperature == calibration.temperature  # fitted on the model's own images


def test_fold_models_predict_the_folds_they_held_out(synthetic_root: Path,
                                                     tmp_path: Path) -> None:
    import train
    from data.splits import fold_pairs
    from evaluation.fitting import out_of_fold_samples

    models = []
    for fold in range(2):
        out = tmp_path / f"fold{fold}"
        assert train.main(["--data", str(synthetic_root), "--checkpoint-dir", str(out),
                           *TINY_TRAIN_ARGS, "--fold", str(fold), "--folds", "2"]) == 0
        models.append(Predictor(out / "best.pt", device="cpu"))
    samples = out_of_fold_samples(models)
    pairs = find_pairs(synthetic_root, "train")
    assert len(samples.signals) == len(pairs) == 24
    assert samples.groups == [0] * 12 + [1] * 12
    assert set(samples.signals[0]) == set(SIGNALS)
    assert len(fold_pairs(pairs, 1, 2, seed=0)[1]) == samples.groups.count(1)
