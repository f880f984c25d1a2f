"""The bundled ISIC model: present, small, safe to load, used when no checkpoint is given, and
reachable through torch.hub; on real images it writes good masks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.calibration import Calibration
from inference.predictor import Predictor
from inference.quality import QUALITY_FEATURES
from models.bundled import BUNDLED_MODEL, MODEL_CARD, default_model, describe_model
from models.checkpoint import load_checkpoint, load_model_file, save_checkpoint
from tests.conftest import load_script, shared_data

ROOT = Path(__file__).resolve().parents[1]


def test_the_bundled_model_is_small_safetensors_with_its_settings_and_card() -> None:
    assert BUNDLED_MODEL.suffix == ".safetensors"
    assert BUNDLED_MODEL.read_bytes()[8:9] == b"{"  # a JSON header: no pickle anywhere
    folder = sum(path.stat().st_size for path in BUNDLED_MODEL.parent.iterdir())
    assert folder <= 8 * 2**20 and BUNDLED_MODEL.stat().st_size < 2_000_000
    bundle = load_model_file(BUNDLED_MODEL)
    assert bundle.img_size == 128 and bundle.threshold == 0.5
    assert bundle.config.base_channels == 16 and bundle.config.norm == "group"
    assert {"epoch", "metrics", "args"} <= set(bundle.info)
    calibration = Calibration.from_dict(bundle.calibration)  # fitted on held-out images
    # the quality estimate on out-of-fold predictions of the 1797 training images
    assert calibration.quality.images == 1797 and calibration.quality.features == QUALITY_FEATURES
    assert "out-of-fold" in calibration.fitted_on and calibration.dermoscopy.images == 1000
    assert 1 < calibration.temperature < 3 and 0.5 < calibration.review_below < 1
    card = MODEL_CARD.read_text()
    for words in ("not a diagnostic device", "CC BY-NC", "python train.py", "Dice",
                  "## Quality estimate", "## Measurements", "scripts/calibrate.py"):
        assert words in card, words


def test_without_a_checkpoint_the_users_best_pt_wins_else_the_bundled_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint_dir: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_model() == BUNDLED_MODEL
    assert "bundled ISIC model" in describe_model(default_model())
    own = tmp_path / "models" / "checkpoints" / "best.pt"
    own.parent.mkdir(parents=True)
    trained = load_checkpoint(tiny_checkpoint_dir / "best.pt")
    assert trained["synthetic_data"]  # the test set is the synthetic generator's
    own.write_bytes((tiny_checkpoint_dir / "best.pt").read_bytes())
    assert default_model() == BUNDLED_MODEL  # a model of synthetic images is never the default
    assert "trained on the synthetic demo set" in describe_model(default_model())
    save_checkpoint({**trained, "synthetic_data": False,
                     "args": {**trained["args"], "data": "data/ISIC2018"}}, own)
    assert default_model().resolve() == own.resolve()
    line = describe_model(own, load_model_file(own).info)
    assert line == (f"model: {own} (trained on data/ISIC2018, 32 px, 1 epochs, validation Dice "
                    f"{trained['metrics']['val_dice']:.3f})")


def test_after_the_quick_starts_demo_the_default_model_is_still_the_bundled_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import train

    monkeypatch.chdir(tmp_path)
    assert train.main(["--preset", "cpu-demo", "--epochs", "1", "--img-size", "32",
                       "--base-channels", "4", "--depth", "2", "--workers", "0",
                       "--cache-dir", str(tmp_path / "cache")]) == 0
    assert (tmp_path / "models" / "checkpoints" / "demo" / "best.pt").is_file()
    assert default_model() == BUNDLED_MODEL
    for line in (describe_model(default_model()), describe_model(Predictor().checkpoint_path)):
        assert line.startswith("model: the bundled ISIC model"), line


def test_predict_uses_the_bundled_model_and_says_so(tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    import cv2

    assert cv2.imwrite(str(tmp_path / "photo.jpg"), image)
    result = subprocess.run([sys.executable, str(ROOT / "predict.py"), "--input",
                             str(tmp_path / "photo.jpg"), "--output", str(tmp_path / "out"),
                             "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("model: the bundled ISIC model")
    assert cv2.imread(str(tmp_path / "out" / "photo_segmentation.png")).shape[:2] == (60, 80)


@pytest.fixture(scope="module")
def hub() -> object:
    return lambda entry, **kwargs: torch.hub.load(str(ROOT), entry, source="local", **kwargs)


def test_hub_entries(hub) -> None:
    untrained = hub("unet", base_channels=4, depth=2)
    assert untrained.config.base_channels == 4 and untrained.training
    model = hub("unet_isic")
    assert not model.training and model.img_size == 128
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 128, 128))
    assert logits.shape == (1, 1, 128, 128)
    predictor = hub("isic_predictor", tta=True, device="cpu")
    assert predictor.settings.tta and predictor.checkpoint_path == BUNDLED_MODEL
    image = np.full((90, 70, 3), 180, np.uint8)
    assert predictor.predict(image).mask.shape == (90, 70)


def test_the_bundled_model_segments_real_full_resolution_images(tmp_path: Path) -> None:
    # A floor well below the model card's figure for this sample, far above a broken model's.
    root = shared_data("isic-fullres-sample")
    evaluate = load_script("evaluate")
    assert evaluate.main(["--data", str(root), "--output", str(tmp_path), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["settings"]["checkpoint"] == str(BUNDLED_MODEL)
    assert summary["metrics"]["dice"]["mean"] > 0.85
    # Floors below the model card's figures (AUROC 0.99, Spearman 0.67, 3 of 3 failures
    # flagged, errors of 7 % and 4 %), far above what an estimate unrelated to the Dice gives.
    quality = summary["quality"]
    assert quality["auroc"] > 0.85 and quality["spearman"] > 0.5
    assert quality["failures_flagged"] >= 2 and quality["flagged"] <= 10
    assert summary["calibration"]["expected_calibration_error"] < summary["calibration"][
        "expected_calibration_error_without_temperature"]
    measured = summary["measurements"]
    assert measured["area_px"]["median_relative_error"] < 0.12
    assert measured["max_diameter_px"]["median_relative_error"] < 0.08
