"""Starting from a trained model (``train.py --init``), replaying another data set in every batch
(``--replay``), and the calibration a fine-tuned model keeps."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from common.errors import FlagError
from data.dataset import EpochSampler, ReplaySampler
from data.layouts import find_pairs
from evaluation.fitting import fit_calibration
from inference.calibration import Calibration
from inference.predictor import Predictor
from models.bundled import BUNDLED_MODEL
from models.checkpoint import load_checkpoint, load_model_file
from tests.conftest import TINY_TRAIN_ARGS, load_script
from training.options import PRESETS, parse_args


def batches_of(sampler: EpochSampler, batch: int) -> list[list[int]]:
    indices = [index for index, _ in sampler]
    return [indices[i:i + batch] for i in range(0, len(indices), batch)]


@pytest.mark.parametrize("world", [1, 2])
def test_every_batch_replays_its_share_and_every_new_image_comes_once(world: int) -> None:
    main, replay, batch = 37, 500, 8
    samplers = [ReplaySampler(main, replay, 0.25, batch, seed=3, rank=rank, world=world)
                for rank in range(world)]
    seen = Counter()
    for sampler in samplers:
        sampler.set_epoch(1)
        for indices in batches_of(sampler, batch):
            assert len(indices) == batch
            assert sum(index >= main for index in indices) == 2  # 0.25 of 8
            seen.update(index for index in indices if index < main)
    assert set(seen) == set(range(main))
    # the last step is filled up with images from the start of the epoch's order
    assert max(seen.values()) <= 2 and sum(seen.values()) == len(samplers[0]) * world * 6 // 8


def test_replay_order_is_seeded_and_changes_with_the_epoch() -> None:
    sampler = ReplaySampler(20, 100, 0.5, 4, seed=0)
    sampler.set_epoch(0)
    first = list(sampler)
    assert first == list(sampler)
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] != [i for i, _ in first]


def test_replay_resumes_mid_epoch() -> None:
    sampler = ReplaySampler(20, 100, 0.5, 4, seed=0)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.set_epoch(2, start=8)
    assert list(sampler) == whole[8:] and len(sampler) == len(whole) - 8


def test_init_takes_the_models_architecture_and_the_finetune_preset() -> None:
    args = parse_args(["--init", "bundled", "--data", "x"])
    bundle = load_model_file(BUNDLED_MODEL)
    assert args.img_size == bundle.img_size
    assert args.base_channels == bundle.config.base_channels
    assert args.lr == PRESETS["finetune"]["lr"] and args.max_minutes == 5
    assert parse_args(["--init", "bundled", "--lr", "1e-4"]).lr == 1e-4  # explicit flags win


def test_a_flag_that_contradicts_the_init_model_is_refused() -> None:
    with pytest.raises(FlagError, match="--base-channels 64 contradicts the --init model"):
        parse_args(["--init", "bundled", "--base-channels", "64"])


def test_init_with_resume_is_refused(tiny_checkpoint_dir: Path) -> None:
    with pytest.raises(FlagError, match="--init and --resume"):
        parse_args(["--init", "bundled", "--resume", str(tiny_checkpoint_dir / "last.pt")])


def tiny_flags_without_architecture() -> list[str]:
    """TINY_TRAIN_ARGS without the flags an --init model fixes."""
    flags = list(TINY_TRAIN_ARGS)
    for name in ("--img-size", "--base-channels", "--depth"):
        index = flags.index(name)
        del flags[index:index + 2]
    return flags


def test_init_and_replay_on_the_command_line(tiny_checkpoint_dir: Path, synthetic_root: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    # With a learning rate of almost nothing the trained weights stay the initial model's: the
    # run started from them, not from random weights.
    out = tmp_path / "run"
    flags = tiny_flags_without_architecture()
    code = train.main(["--init", str(tiny_checkpoint_dir / "best.pt"), "--data",
                       str(synthetic_root), "--replay", str(synthetic_root), "--checkpoint-dir",
                       str(out), *flags, "--lr", "1e-12", "--ema", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"starting from {tiny_checkpoint_dir / 'best.pt'}" in printed
    assert "replaying 24 training images" in printed and "50% of every batch" in printed
    initial = load_checkpoint(tiny_checkpoint_dir / "best.pt")
    tuned = load_checkpoint(out / "best.pt")
    assert tuned["args"]["init"] == str(tiny_checkpoint_dir / "best.pt")
    assert tuned["args"]["replay"] == str(synthetic_root)
    for name, weight in initial["model"].items():
        assert torch.allclose(tuned["model"][name].float(), weight.float(), atol=1e-6), name


def test_init_share_averages_the_initial_weights_into_best_pt(
        tiny_checkpoint_dir: Path, synthetic_root: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    flags = tiny_flags_without_architecture()
    initial = tiny_checkpoint_dir / "best.pt"
    assert train.main(["--init", str(initial), "--data", str(synthetic_root),
                       "--checkpoint-dir", str(out), *flags, "--lr", "1e-2", "--ema", "0",
                       "--init-share", "0.25"]) == 0
    assert "25% of the weights of" in capsys.readouterr().out
    start, trained = load_checkpoint(initial)["model"], load_checkpoint(out / "last.pt")["model"]
    blended = load_checkpoint(out / "best.pt")["model"]
    changed = 0
    for name, weight in trained.items():
        expected = 0.25 * start[name].float() + 0.75 * weight.float()
        assert torch.allclose(blended[name].float(), expected, atol=1e-6), name
        changed += not torch.allclose(weight.float(), start[name].float())
    assert changed  # the run trained: the average is not the initial model


def test_too_few_held_out_images_keep_the_initial_calibration(
        tiny_checkpoint_dir: Path, synthetic_root: Path) -> None:
    predictor = Predictor(tiny_checkpoint_dir / "best.pt", device="cpu")
    pairs = find_pairs(synthetic_root, "train")
    bundled = Calibration.from_dict(load_model_file(BUNDLED_MODEL).calibration)
    assert bundled.quality.images > 0
    kept, report = fit_calibration(predictor, pairs[:5], pairs[5:], "five images",
                                   fallback=bundled)
    assert kept.quality == bundled.quality and kept.review_below == bundled.review_below
    assert kept.temperature == bundled.temperature  # fitted with the quality estimate
    assert "kept from the model the run started from" in " ".join(report.lines())
    unfitted, _ = fit_calibration(predictor, pairs[:5], pairs[5:], "five images")
    assert unfitted.quality.images == 0 and np.isfinite(unfitted.temperature)


def test_make_clinic_splits_and_restyles_the_images(synthetic_root: Path, tmp_path: Path) -> None:
    import cv2

    make_clinic = load_script("make_clinic")
    out = tmp_path / "clinic"
    assert make_clinic.main(["--source", f"{synthetic_root}:train", f"{synthetic_root}:val",
                             "--output", str(out), "--corrections", "5"]) == 0
    corrections, test = find_pairs(out / "corrections"), find_pairs(out / "test")
    assert len(corrections) == 5 and len(test) == 24 + 8 - 5
    assert not {pair.id for pair in corrections} & {pair.id for pair in test}
    pair = corrections[0]
    original = next(p for p in find_pairs(synthetic_root, "train") + find_pairs(
        synthetic_root, "val") if p.id == pair.id)
    before = cv2.imread(str(original.image)).astype(float).mean(axis=(0, 1))
    after = cv2.imread(str(pair.image)).astype(float).mean(axis=(0, 1))
    assert after[2] > before[2] and after[0] < after[2]  # BGR: warmer, blue held back
    mask = cv2.imread(str(pair.mask), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(mask)) <= {0, 255}
    assert make_clinic.main(["--source", str(synthetic_root), "--output", str(out)]) == 1


def test_make_clinic_magnifies_and_outlines_as_the_clinic_does(synthetic_root: Path,
                                                               tmp_path: Path) -> None:
    import cv2

    make_clinic = load_script("make_clinic")
    plain, clinic = tmp_path / "plain", tmp_path / "clinic"
    common = ["--source", f"{synthetic_root}:val", "--corrections", "0"]
    assert make_clinic.main([*common, "--output", str(plain), "--zoom", "1",
                             "--margin", "0"]) == 0
    assert make_clinic.main([*common, "--output", str(clinic), "--zoom", "2",
                             "--margin", "0.05"]) == 0
    for before, after in zip(find_pairs(plain / "test"), find_pairs(clinic / "test")):
        mask = cv2.imread(str(before.mask), cv2.IMREAD_GRAYSCALE) > 127
        grown = cv2.imread(str(after.mask), cv2.IMREAD_GRAYSCALE) > 127
        image = cv2.imread(str(after.image))
        assert grown.shape == image.shape[:2] == (24, 32)  # the central half of 48x64
        centre = mask[12:36, 16:48]
        assert (grown | ~centre).all() and grown.sum() > centre.sum()  # grown, not moved
    assert make_clinic.main([*common, "--output", str(tmp_path / "bad"), "--zoom", "0.5"]) == 1
