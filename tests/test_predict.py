"""Tests of predict.py: mask format and size, bad inputs, unsafe checkpoints, TTA, memory."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from data.dataset import ISICDataset, eval_transforms
from data.imageio import read_image
from data.layouts import find_pairs
from predict import Predictor, postprocess
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^done: (\d+) of (\d+) images, (\d+) failed, [\d.]+ s, [\d.]+ images/s")


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint_dir: Path) -> Path:
    return tiny_checkpoint_dir / "best.pt"


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor(checkpoint, device="cpu", precision="fp32")


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 (H, W, 3): smoothed noise, so that predictions vary across the image."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def write(path: Path, image: np.ndarray) -> Path:
    """Write an RGB image in the format of ``path``'s extension."""
    ok, buffer = cv2.imencode(path.suffix, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.tobytes())
    return path


def run_predict(checkpoint: Path, *args: str) -> int:
    return predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", *args])


def summary(stdout: str) -> tuple[int, int, int]:
    """(done, total, failed) from predict.py's line that starts with ``done:``."""
    match = next(filter(None, map(SUMMARY.match, stdout.splitlines())), None)
    assert match, stdout
    done, total, failed = map(int, match.groups())
    return done, total, failed


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def median_threshold(predictor: Predictor, image: np.ndarray) -> float:
    """A threshold that splits the image's pixels in two, whatever the tiny model predicts."""
    return float(np.median(predictor.predict(image).probabilities))


# --------------------------------------------------------------------------- mask format


@pytest.mark.parametrize("width, height", [(1023, 767), (300, 1200)])
def test_mask_has_the_input_size_and_values_0_255(tmp_path, checkpoint, predictor, capsys,
                                                   width, height):
    image = noise_image(height, width)
    write(tmp_path / "in" / "odd.jpg", image)
    threshold = median_threshold(predictor, read_image(tmp_path / "in" / "odd.jpg"))

    rc = run_predict(checkpoint, "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "out"), "--threshold", f"{threshold:.9f}",
                     "--precision", "fp32")

    assert rc == 0
    assert summary(capsys.readouterr().out) == (1, 1, 0)
    mask = read_png(tmp_path / "out" / "odd_segmentation.png")
    assert mask.shape == (height, width)  # one channel, the input's size
    assert mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 255}


def test_mask_is_thresholded_at_full_size_not_scaled_up(predictor):
    image = noise_image(767, 1023, seed=1)
    predictor_at_median = Predictor(predictor.checkpoint_path, device="cpu", precision="fp32",
                                    threshold=median_threshold(predictor, image))
    logits = predictor_at_median.predict_logits(predictor_at_median.preprocess(image)[None])
    small = logits[0, 0].numpy()
    threshold_logit = np.log(predictor_at_median.threshold / (1 - predictor_at_median.threshold))

    mask = predictor_at_median.predict(image).mask

    resized = cv2.resize(small, (1023, 767), interpolation=cv2.INTER_LINEAR)
    disagree = mask != (resized > threshold_logit)
    # Repeated CPU convolutions may differ in the last bits: only pixels at the threshold.
    assert disagree.mean() < 1e-4
    assert np.abs(resized[disagree] - threshold_logit).max(initial=0) < 1e-4
    scaled_up = cv2.resize((small > threshold_logit).view(np.uint8), (1023, 767),
                           interpolation=cv2.INTER_NEAREST).astype(bool)
    assert (mask != scaled_up).sum() > 0  # smooth edges, not 32x32 blocks


def test_probabilities_are_the_sigmoid_of_the_resized_logits(predictor):
    image = noise_image(50, 70)
    prediction = predictor.predict(image)
    assert prediction.probabilities.shape == (50, 70)
    assert prediction.probabilities.dtype == np.float32
    assert prediction.mask.dtype == bool
    assert 0 <= prediction.probabilities.min() <= prediction.probabilities.max() <= 1
    np.testing.assert_array_equal(prediction.mask,
                                  prediction.probabilities > predictor.threshold)


def test_preprocessing_is_the_validation_transform_of_training(predictor, synthetic_root):
    pairs = find_pairs(synthetic_root, "val")[:3]
    dataset = ISICDataset(pairs, eval_transforms(predictor.img_size, predictor.mean,
                                                 predictor.std))
    for index, pair in enumerate(pairs):
        expected = dataset[index]["image"]
        torch.testing.assert_close(predictor.preprocess(read_image(pair.image)), expected,
                                   rtol=0, atol=0)


def test_batches_give_the_same_predictions_as_single_images(checkpoint):
    predictor = Predictor(checkpoint, device="cpu", precision="fp32", batch_size=2)
    images = [noise_image(40, 60, seed=1), noise_image(90, 30, seed=2),
              noise_image(33, 33, seed=3)]

    batched = predictor.predict_batch(images)

    assert [p.mask.shape for p in batched] == [(40, 60), (90, 30), (33, 33)]
    for image, prediction in zip(images, batched):
        single = predictor.predict(image)
        np.testing.assert_allclose(prediction.probabilities, single.probabilities, atol=1e-5)


def test_predictor_reads_settings_from_the_checkpoint(checkpoint, predictor):
    payload = torch.load(checkpoint, weights_only=True)
    assert predictor.img_size == payload["img_size"]
    assert predictor.threshold == payload["threshold"]
    assert list(predictor.mean) == payload["normalization"]["mean"]
    assert predictor.info["epoch"] == payload["epoch"] and "model" not in predictor.info
    assert Predictor(checkpoint, device="cpu", threshold=0.3).threshold == 0.3
    with pytest.raises(ValueError, match="threshold"):
        Predictor(checkpoint, device="cpu", threshold=1.0)


# --------------------------------------------------------------------------- inputs


def test_files_folders_and_globs_in_one_call(tmp_path, checkpoint, capsys):
    write(tmp_path / "a" / "x1.png", noise_image(40, 50))
    write(tmp_path / "a" / "x2.jpg", noise_image(41, 51))
    write(tmp_path / "b" / "y1.bmp", noise_image(42, 52))
    write(tmp_path / "b" / "y2.tiff", noise_image(43, 53))
    write(tmp_path / "c.jpg", noise_image(44, 54))
    out = tmp_path / "out"

    rc = run_predict(checkpoint, "--input", str(tmp_path / "a"), str(tmp_path / "b" / "*.bmp"),
                     str(tmp_path / "c.jpg"), str(tmp_path / "a" / "x1.png"),  # a duplicate
                     "--output", str(out), "--batch-size", "2")

    assert rc == 0
    assert summary(capsys.readouterr().out) == (4, 4, 0)
    assert sorted(p.name for p in out.iterdir()) == [
        "c_segmentation.png", "predictions.csv", "x1_segmentation.png", "x2_segmentation.png",
        "y1_segmentation.png"]
    assert read_png(out / "y1_segmentation.png").shape == (42, 52)
    rows = read_csv(out / "predictions.csv")
    assert [row["image"] for row in rows] == ["x1.png", "x2.jpg", "y1.bmp", "c.jpg"]
    assert [(row["width"], row["height"]) for row in rows] == [
        ("50", "40"), ("51", "41"), ("52", "42"), ("54", "44")]


def test_predicting_into_the_input_folder_twice_skips_the_outputs(tmp_path, checkpoint,
                                                                 capsys):
    folder = tmp_path / "photos"
    write(folder / "x1.png", noise_image(40, 50))
    write(folder / "x2.jpg", noise_image(41, 51))
    for _ in range(2):
        rc = run_predict(checkpoint, "--input", str(folder), str(folder / "*.png"),
                         "--output", str(folder), "--overlay", "--save-probabilities")
        assert rc == 0
        assert summary(capsys.readouterr().out) == (2, 2, 0)
    assert len(list(folder.iterdir())) == 2 + 2 * 3 + 1  # images, outputs, predictions.csv


def test_bad_files_are_reported_and_the_others_still_processed(tmp_path, checkpoint, capsys):
    folder = tmp_path / "in"
    write(folder / "good.png", noise_image(30, 40))
    jpeg = write(folder / "whole.jpg", noise_image(64, 64)).read_bytes()
    (folder / "whole.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (folder / "notes.txt").write_text("not an image")
    write(folder / ".hidden.png", noise_image(30, 40))
    out = tmp_path / "out"

    rc = run_predict(checkpoint, "--input", str(folder), "--output", str(out))

    captured = capsys.readouterr()
    assert rc == 1
    assert summary(captured.out) == (1, 3, 2)
    assert sorted(p.name for p in out.iterdir()) == ["good_segmentation.png", "predictions.csv"]
    assert "corrupt.jpg" in captured.err and "truncated.jpg" in captured.err
    rows = {row["image"]: row for row in read_csv(out / "predictions.csv")}
    assert sorted(rows) == ["corrupt.jpg", "good.png", "truncated.jpg"]
    for name in ("corrupt.jpg", "truncated.jpg"):  # the failures keep their row
        assert rows[name]["review"] == "yes" and rows[name]["reason"].startswith("unreadable")
        assert rows[name]["quality"] == rows[name]["width"] == ""
    assert rows["good.png"]["width"] == "40" and rows["good.png"]["quality"] != ""
    assert "notes.txt" not in captured.err and ".hidden" not in captured.err


@pytest.mark.parametrize("make_input", [
    lambda tmp: str(tmp / "missing.jpg"),
    lambda tmp: str(tmp / "*.png"),
    lambda tmp: str(tmp),  # a folder without images
])
def test_an_input_that_matches_nothing_is_one_clear_line(tmp_path, checkpoint, capsys,
                                                         make_input):
    (tmp_path / "readme.txt").write_text("no images here")
    rc = run_predict(checkpoint, "--input", make_input(tmp_path), "--output",
                     str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "matches no image" in err
    assert not (tmp_path / "out").exists()


def test_two_inputs_with_one_stem_are_refused(tmp_path, checkpoint, capsys):
    write(tmp_path / "a" / "same.jpg", noise_image(30, 30))
    write(tmp_path / "b" / "same.png", noise_image(30, 30))
    rc = run_predict(checkpoint, "--input", str(tmp_path / "a"), str(tmp_path / "b"),
                     "--output", str(tmp_path / "out"))
    assert rc == 1
    assert "same_segmentation.png" in capsys.readouterr().err


def test_an_output_that_is_a_file_is_one_clear_line(tmp_path, checkpoint, capsys):
    image = write(tmp_path / "img.jpg", noise_image(30, 40))
    existing = tmp_path / "masks.png"
    existing.write_bytes(b"not a folder")
    rc = run_predict(checkpoint, "--input", str(image), "--output", str(existing))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.splitlines() == [f"error: --output {existing} is a file, not a folder; name a "
                                "folder for the masks (it is created if missing)"]
    assert existing.read_bytes() == b"not a folder"


# --------------------------------------------------------------------------- checkpoints


def test_a_missing_checkpoint_says_how_to_train_one_without_a_traceback(tmp_path):
    image = write(tmp_path / "img.jpg", noise_image(30, 40))
    result = subprocess.run(
        [sys.executable, "predict.py", "--input", str(image), "--output", str(tmp_path / "out"),
         "--checkpoint", str(tmp_path / "none.pt")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "none.pt not found" in result.stderr and "train.py" in result.stderr
    assert "Traceback" not in result.stderr


class _CreatesMarkerWhenUnpickled:
    """Unpickling calls open(marker, "w"): what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_that_would_run_pickled_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "isic-unet", "version": 1, "model": _CreatesMarkerWhenUnpickled(marker),
                "model_config": {}, "img_size": 32, "threshold": 0.5,
                "normalization": {"mean": [0, 0, 0], "std": [1, 1, 1]}}, evil)
    image = write(tmp_path / "img.jpg", noise_image(30, 40))

    rc = run_predict(evil, "--input", str(image), "--output", str(tmp_path / "out"))

    assert rc == 1
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()
    # The file really does run code when loaded unsafely: the test above could fail.
    torch.load(evil, weights_only=False)["model"].close()
    assert marker.exists()


@pytest.mark.parametrize("content", ["plain dict", "random bytes"])
def test_a_file_that_is_not_a_checkpoint_of_this_project_is_refused(tmp_path, capsys, content):
    path = tmp_path / "other.pt"
    if content == "plain dict":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    else:
        path.write_bytes(np.random.default_rng(0).bytes(500))
    image = write(tmp_path / "img.jpg", noise_image(30, 40))

    rc = run_predict(path, "--input", str(image), "--output", str(tmp_path / "out"))

    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "other.pt" in err


# --------------------------------------------------------------------------- options


def test_tta_makes_predictions_flip_equivariant(checkpoint):
    # 64 px at a model size of 32: the INTER_AREA resize commutes with flips exactly.
    image = noise_image(64, 64, seed=4)
    for tta in (True, False):
        predictor = Predictor(checkpoint, device="cpu", precision="fp32", tta=tta)
        probabilities = predictor.predict(image).probabilities
        flipped = predictor.predict(np.ascontiguousarray(image[:, ::-1])).probabilities
        difference = np.abs(flipped[:, ::-1] - probabilities).max()
        if tta:
            assert difference < 1e-5
        else:  # the control: a U-Net alone is not symmetric
            assert difference > 1e-4


def test_tta_overlay_and_probabilities_are_written(tmp_path, checkpoint, predictor, capsys):
    gray = np.repeat(np.linspace(60, 200, 120, dtype=np.uint8)[None, :, None], 90, axis=0)
    image = np.repeat(gray, 3, axis=2)  # no green in it, unlike the contour
    write(tmp_path / "lesion.png", image)
    threshold = median_threshold(predictor, image)
    out = tmp_path / "out"

    rc = run_predict(predictor.checkpoint_path, "--input", str(tmp_path / "lesion.png"),
                     "--output", str(out), "--tta", "--overlay", "--save-probabilities",
                     "--threshold", f"{threshold:.9f}")

    assert rc == 0
    assert summary(capsys.readouterr().out) == (1, 1, 0)
    overlay = cv2.imread(str(out / "lesion_overlay.jpg"))
    assert overlay.shape == (90, 120, 3)
    blue, green, red = overlay[..., 0].astype(int), overlay[..., 1], overlay[..., 2].astype(int)
    assert ((green > 180) & (green - np.maximum(blue, red) > 100)).any()
    probabilities = read_png(out / "lesion_probability.png")
    assert probabilities.shape == (90, 120) and probabilities.dtype == np.uint8
    assert read_png(out / "lesion_segmentation.png").shape == (90, 120)


def test_postprocess_keeps_the_largest_region_and_fills_holes():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    mask[18:22, 18:22] = False  # a hole
    mask[2:5, 34:37] = True  # a speck
    mask[0:8, 0:2] = mask[0:8, 6:8] = mask[6:8, 0:8] = True  # a U open to the top border

    largest = postprocess(mask, keep_largest=True)
    filled = postprocess(mask, fill_holes=True)
    both = postprocess(mask, keep_largest=True, fill_holes=True)

    assert largest.sum() == 20 * 20 - 16 and not largest[3, 35] and not largest[7, 3]
    assert filled[20, 20] and filled[3, 35]
    assert not filled[2, 4]  # the inside of the U touches the border: not a hole
    assert both.sum() == 20 * 20
    np.testing.assert_array_equal(postprocess(mask), mask)


# --------------------------------------------------------------------------- large images


@pytest.mark.parametrize("workers", [1, 2])
def test_a_4288x2848_image_needs_only_a_few_full_size_arrays(tmp_path, checkpoint, capsys,
                                                            workers):
    # A batch of 8 does not mean 8 full-size arrays: each worker finishes one image at a time
    # (float32 logits, the mask, its PNG), and the JPEGs are decoded at 1/8 scale.
    height, width = 2848, 4288
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    for index in range(3):
        write(tmp_path / "in" / f"big{index}.jpg", image)
    del image
    full_rgb = height * width * 3
    for options, budget in (([], 1 + 2 * workers), (["--overlay", "--save-probabilities",
                                                     "--keep-largest", "--fill-holes"],
                                                    2 + 3 * workers)):
        tracemalloc.start()
        try:
            rc = run_predict(checkpoint, "--input", str(tmp_path / "in"), "--output",
                             str(tmp_path / "out"), "--batch-size", "8", "--workers",
                             str(workers), *options)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert rc == 0
        assert summary(capsys.readouterr().out) == (3, 3, 0)
        assert peak < budget * full_rgb, f"{options}: peak {peak / full_rgb:.1f} full images"
    assert read_png(tmp_path / "out" / "big2_segmentation.png").shape == (height, width)


def test_a_full_resolution_isic_image(tmp_path, checkpoint, capsys):
    images = shared_data("isic-fullres-sample") / "images"
    first = sorted(images.glob("*.jpg"))[0]
    rc = run_predict(checkpoint, "--input", str(first), "--output", str(tmp_path))
    assert rc == 0
    mask = read_png(tmp_path / f"{first.stem}_segmentation.png")
    assert mask.shape == read_image(first).shape[:2]
    assert set(np.unique(mask).tolist()) <= {0, 255}


def test_help_answers_without_importing_pytorch() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "predict.py", "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--checkpoint" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {"torch", "cv2", "albumentations", "numpy"} & imported, sorted(imported)


def test_the_prediction_flags_come_from_the_settings_object(tiny_checkpoint_dir) -> None:
    import argparse
    from dataclasses import fields

    from common.errors import FlagError
    from inference.settings import PredictionSettings, add_prediction_options

    parser = argparse.ArgumentParser()
    add_prediction_options(parser)
    assert PredictionSettings.from_args(parser.parse_args([])) == PredictionSettings()
    args = parser.parse_args(["--threshold", "0.3", "--tta", "--no-quality", "--batch-size", "2",
                              "--mm-per-pixel", "0.02", "--precision", "fp32"])
    chosen = PredictionSettings.from_args(args)
    assert (chosen.threshold, chosen.tta, chosen.quality, chosen.batch_size,
            chosen.mm_per_pixel, chosen.precision) == (0.3, True, False, 2, 0.02, "fp32")
    dests = {action.dest for action in parser._actions} - {"help"}
    assert dests == {item.name for item in fields(PredictionSettings)}
    with pytest.raises(FlagError, match="--threshold"):
        PredictionSettings(threshold=1.5).checked()
    with pytest.raises(FlagError, match="unknown prediction settings: colour"):
        PredictionSettings().with_changes(colour="red")
    predictor = Predictor(tiny_checkpoint_dir / "best.pt", device="cpu")
    assert predictor.with_settings(tta=True).settings.tta and not predictor.settings.tta
    with pytest.raises(FlagError, match="device cannot change"):
        predictor.with_settings(device="cuda")
