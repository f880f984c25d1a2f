"""Tests of the review mode's parts (web/review.py) and the corrections folder
(data/corrections.py), and of the whole way from three saved corrections to a fine-tuned model
that predicts; the page itself is driven in a browser by tests/test_app_browser.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from data.corrections import (
    CorrectionExistsError,
    count_corrections,
    is_saved,
    save_correction,
)
from data.imageio import write_mask
from data.layouts import find_pairs
from data.synthetic import render_sample
from web.review import (
    MASK_RGBA,
    ReviewError,
    ReviewItem,
    corrected_mask,
    edited_mask,
    editor_value,
    photos_to_review,
    review_order,
    starting_mask,
)
from web.views import display_mask


def write_photo(path: Path, height: int, width: int, seed: int = 0) -> Path:
    image, _ = render_sample(np.random.default_rng(seed), height, width)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def item(name: str, reason: str, quality: float | None) -> ReviewItem:
    return ReviewItem(Path(name), reason, quality, Path("unused.png"))


def test_flagged_photos_come_first_then_the_lowest_quality() -> None:
    items = [item("a.jpg", "", 0.95), item("b.jpg", "low quality", 0.7), item("c.jpg", "", 0.6),
             item("d.jpg", "not dermoscopy", 0.9), item("e.jpg", "", None)]
    assert [i.photo.name for i in review_order(items)] == [
        "b.jpg", "d.jpg", "c.jpg", "a.jpg", "e.jpg"]
    assert item("b.jpg", "low quality", 0.7).label(saved=True) == (
        "b.jpg (review: low quality, quality 0.70) - saved")


def test_an_unchanged_mask_keeps_the_full_size_prediction_and_edits_scale_up() -> None:
    rng = np.random.default_rng(0)
    predicted = cv2.resize((rng.random((30, 45)) > 0.5).astype(np.uint8), (1500, 1000),
                           interpolation=cv2.INTER_NEAREST) > 0
    shown = display_mask(predicted, (1024, 683))
    assert np.array_equal(corrected_mask(predicted, shown), predicted)
    edited = shown.copy()
    edited[100:200, 100:300] = True
    edited[400:500, 600:700] = False
    saved = corrected_mask(predicted, edited)
    assert saved.shape == predicted.shape
    assert saved[160:280, 160:430].all() and not saved[600:720, 900:1020].any()
    outside = np.ones_like(saved)
    outside[138:302, 138:452] = outside[578:742, 868:1042] = False
    assert np.array_equal(saved[outside], predicted[outside])


def test_the_editor_layer_becomes_the_mask_and_a_cleared_editor_is_refused() -> None:
    layer = np.zeros((40, 60, 4), np.uint8)
    layer[10:20, 5:25] = MASK_RGBA
    layer[30:35, 40:50] = (255, 40, 40, 20)  # the faint rim of a stroke: not lesion
    value = {"background": np.zeros((40, 60, 4), np.uint8), "layers": [layer]}
    mask = edited_mask(value, (40, 60))
    assert mask.sum() == 200 and mask[10:20, 5:25].all()
    assert not edited_mask({"background": value["background"], "layers": []}, (40, 60)).any()
    with pytest.raises(ReviewError, match="choose the photo"):
        edited_mask({"background": None, "layers": []}, (40, 60))


def test_the_editor_starts_from_a_saved_correction(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "ISIC_0000003.jpg", 40, 60)
    predicted = np.zeros((40, 60), bool)
    predicted[10:30, 10:30] = True
    item = ReviewItem(photo, "", 0.9, tmp_path / "predicted.png")
    write_mask(item.mask, predicted)
    folder = tmp_path / "corrections"
    assert np.array_equal(starting_mask(item, folder), predicted)
    value = editor_value(item, folder)
    assert value["background"].shape == (40, 60, 3)
    assert np.array_equal(value["layers"][0][..., 3] > 0, predicted)
    corrected = ~predicted
    save_correction(folder, photo, corrected)
    assert np.array_equal(starting_mask(item, folder), corrected)
    assert np.array_equal(editor_value(item, folder)["layers"][0][..., 3] > 0, corrected)


def test_photos_come_from_uploads_and_a_local_folder_only(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    photos = [write_photo(folder / f"ISIC_000000{i}.jpg", 40, 60, i) for i in range(2)]
    assert photos_to_review(["up.jpg"], str(folder), allow_folders=True) == [
        Path("up.jpg"), *photos]
    with pytest.raises(ReviewError, match="--host 127.0.0.1"):
        photos_to_review(None, str(folder), allow_folders=False)
    with pytest.raises(ReviewError, match="does not exist"):
        photos_to_review(None, str(tmp_path / "missing"), allow_folders=True)
    with pytest.raises(ReviewError, match="upload photos"):
        photos_to_review([], "  ", allow_folders=True)


def test_a_saved_correction_is_never_overwritten_silently(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "in" / "ISIC_0000001.png", 40, 60)
    folder = tmp_path / "corrections"
    first = np.zeros((40, 60), bool)
    first[5:15, 5:15] = True
    written = save_correction(folder, photo, first)
    assert written == folder / "masks" / "ISIC_0000001_segmentation.png"
    assert is_saved(folder, "ISIC_0000001") and count_corrections(folder) == 1
    with pytest.raises(CorrectionExistsError, match="Replace a saved correction"):
        save_correction(folder, photo, ~first)
    assert np.array_equal(cv2.imread(str(written), cv2.IMREAD_UNCHANGED) > 0, first)
    as_jpeg = write_photo(tmp_path / "other" / "ISIC_0000001.jpg", 40, 60)
    save_correction(folder, as_jpeg, ~first, replace=True)
    assert [p.name for p in (folder / "images").iterdir()] == ["ISIC_0000001.jpg"]
    saved = cv2.imread(str(written), cv2.IMREAD_UNCHANGED)
    assert saved.dtype == np.uint8 and set(np.unique(saved)) == {0, 255}
    assert np.array_equal(saved > 0, ~first) and count_corrections(folder) == 1


def test_three_corrections_train_from_a_model_with_replay_and_the_result_predicts(
        tiny_checkpoint_dir: Path, synthetic_root: Path, tmp_path: Path) -> None:
    import predict
    import train

    folder = tmp_path / "corrections"
    for index in range(3):
        image, mask = render_sample(np.random.default_rng(10 + index), 60, 80)
        photo = tmp_path / "photos" / f"ISIC_100000{index}.jpg"
        photo.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(photo), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        save_correction(folder, photo, mask > 0)
    assert [pair.id for pair in find_pairs(folder)] == [f"ISIC_100000{i}" for i in range(3)]
    out = tmp_path / "finetuned"
    assert train.main(["--init", str(tiny_checkpoint_dir / "best.pt"), "--data", str(folder),
                       "--replay", str(synthetic_root), "--checkpoint-dir", str(out),
                       "--epochs", "2", "--batch-size", "2", "--workers", "0", "--no-cache",
                       "--precision", "fp32", "--device", "cpu"]) == 0
    masks = tmp_path / "masks"
    assert predict.main(["--checkpoint", str(out / "best.pt"), "--device", "cpu", "--input",
                         str(folder / "images"), "--output", str(masks)]) == 0
    for index in range(3):
        written = cv2.imread(str(masks / f"ISIC_100000{index}_segmentation.png"),
                             cv2.IMREAD_UNCHANGED)
        assert written.shape == (60, 80)
