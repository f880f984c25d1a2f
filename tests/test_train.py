"""End-to-end tests of train.py on the tiny synthetic data set: checkpoints, resuming, the time
budget, W&B offline logging, presets, and one-line errors for a user's mistakes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from data.dataset import IMAGENET_MEAN, IMAGENET_STD, ISICDataset, eval_transforms
from data.layouts import find_pairs
from data.splits import split_pairs
from models import build_model
from models.checkpoint import load_checkpoint
from tests.conftest import RUN_FILES, TINY_TRAIN_ARGS
from training.options import PRESETS, build_parser, parse_args

REPO_ROOT = Path(__file__).resolve().parents[1]
COMMON_KEYS = {"format", "version", "model", "model_config", "img_size", "normalization",
               "threshold", "args", "epoch", "step", "train_seconds", "metrics", "best_dice"}
RESUME_KEYS = {"optimizer", "scaler", "rng", "wandb_id"}


def tiny_args(data: Path, checkpoint_dir: Path, *extra: str) -> list[str]:
    """Command-line arguments of a tiny run; flags in ``extra`` win over TINY_TRAIN_ARGS."""
    return ["--data", str(data), "--checkpoint-dir", str(checkpoint_dir), *TINY_TRAIN_ARGS,
            *extra]


def one_error_line(capsys: pytest.CaptureFixture) -> str:
    """The single line a failed run printed on stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and "Traceback" not in lines[0]
    return lines[0]


def steps_per_epoch(checkpoint: dict) -> int:
    """Optimizer steps in one epoch of the run that wrote ``checkpoint`` (last batch dropped)."""
    args = checkpoint["args"]
    pairs = find_pairs(args["data"], "train", skip_unpaired=args["skip_unpaired"])
    train_pairs, _ = split_pairs(pairs, args["val_fraction"], args["seed"])
    return len(train_pairs) // args["batch_size"]


# ---------------------------------------------------------------- checkpoints


def test_training_writes_checkpoints_and_the_record(tiny_checkpoint_dir: Path) -> None:
    assert sorted(p.name for p in tiny_checkpoint_dir.iterdir()) == RUN_FILES


def test_checkpoint_contents(tiny_checkpoint_dir: Path, synthetic_root: Path) -> None:
    best = load_checkpoint(tiny_checkpoint_dir / "best.pt")
    last = load_checkpoint(tiny_checkpoint_dir / "last.pt")
    assert set(best) >= COMMON_KEYS and not RESUME_KEYS & set(best)  # best.pt: weights only
    assert set(last) >= COMMON_KEYS | RESUME_KEYS
    for checkpoint in (best, last):
        assert checkpoint["model_config"] == {
            "in_channels": 3, "out_channels": 1, "base_channels": 4, "depth": 2,
            "bilinear": False, "norm": "group", "deep_supervision": True}
        assert checkpoint["img_size"] == 32 and checkpoint["threshold"] == 0.5
        assert checkpoint["normalization"] == {"mean": list(IMAGENET_MEAN),
                                               "std": list(IMAGENET_STD)}
        args = checkpoint["args"]
        assert args["data"] == str(synthetic_root) and args["img_size"] == 32
        assert {"seed", "val_fraction", "official_val", "skip_unpaired"} <= set(args)
        assert checkpoint["epoch"] == 1 and checkpoint["step"] == steps_per_epoch(checkpoint)
        metrics = checkpoint["metrics"]
        assert {"val_loss", "val_dice", "val_iou", "train_loss", "lr", "seconds"} <= set(metrics)
        assert 0.0 <= metrics["val_iou"] <= metrics["val_dice"] <= 1.0
        assert np.isfinite(metrics["val_loss"]) and np.isfinite(metrics["train_loss"])
        assert checkpoint["best_dice"] == metrics["val_dice"]
    assert last["optimizer"]["state"] and last["optimizer"]["param_groups"]
    assert {"python", "numpy", "torch"} <= set(last["rng"])
    assert last["wandb_id"] is None


def test_checkpoint_rebuilds_the_model_on_its_own(tiny_checkpoint_dir: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint_dir / "best.pt")
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])  # strict
    model.eval()
    size = checkpoint["img_size"]
    with torch.no_grad():
        logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 1, size, size) and torch.isfinite(logits).all()


def test_stored_val_dice_matches_an_independent_evaluation(tiny_checkpoint_dir: Path) -> None:
    # Rebuild everything from the checkpoint alone: split, transforms, model; then Dice of
    # sigmoid > threshold per validation image, averaged over images.
    checkpoint = load_checkpoint(tiny_checkpoint_dir / "best.pt")
    args = checkpoint["args"]
    _, val_pairs = split_pairs(find_pairs(args["data"]), args["val_fraction"], args["seed"])
    dataset = ISICDataset(val_pairs, eval_transforms(checkpoint["img_size"]))
    model = build_model(checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    dices = []
    for item in dataset:
        with torch.no_grad():
            probs = torch.sigmoid(model(item["image"][None]))[0, 0].numpy()
        pred, truth = probs > checkpoint["threshold"], item["mask"][0].numpy() > 0.5
        both = pred.sum() + truth.sum()
        dices.append(1.0 if both == 0 else 2 * np.logical_and(pred, truth).sum() / both)
    assert checkpoint["metrics"]["val_dice"] == pytest.approx(np.mean(dices), abs=1e-3)


# ---------------------------------------------------------------- resuming and the budget


def test_resume_continues_to_the_next_epoch(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    first = load_checkpoint(tiny_checkpoint_dir / "last.pt")
    shutil.copy(tiny_checkpoint_dir / "last.pt", tmp_path / "last.pt")
    out = tmp_path / "resumed"
    # Only --epochs (and where to write): the architecture and data come from the checkpoint.
    assert train.main(["--resume", str(tmp_path / "last.pt"), "--epochs", "2",
                       "--checkpoint-dir", str(out)]) == 0
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["epoch"] == 2 and first["epoch"] == 1
    assert resumed["step"] == 2 * first["step"] == 2 * steps_per_epoch(first)
    assert resumed["model_config"] == first["model_config"]
    assert resumed["args"]["epochs"] == 2 and resumed["args"]["img_size"] == first["img_size"]
    adam_steps = {int(s["step"]) for s in resumed["optimizer"]["state"].values()}
    assert adam_steps == {resumed["step"]}  # the optimizer state was carried over, not reset
    assert resumed["train_seconds"] > first["train_seconds"]
    assert resumed["best_dice"] == max(first["best_dice"], resumed["metrics"]["val_dice"])


def test_resume_refuses_a_new_architecture(tiny_checkpoint_dir: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    code = train.main(["--resume", str(tiny_checkpoint_dir / "last.pt"), "--img-size", "64"])
    assert code == 1
    assert "leave --img-size out" in one_error_line(capsys)


def test_resume_from_best_is_a_clear_error(tiny_checkpoint_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    # best.pt has no optimizer state; a user who points --resume at it must be told to use
    # last.pt, not shown a KeyError traceback.
    code = train.main(["--resume", str(tiny_checkpoint_dir / "best.pt"), "--epochs", "2",
                       "--checkpoint-dir", str(tmp_path)])
    assert code == 1
    assert "last.pt" in one_error_line(capsys)


def test_missing_resume_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train.main(["--resume", str(tmp_path / "last.pt")]) == 1
    assert "train.py" in one_error_line(capsys)


def test_max_minutes_stops_early_but_validates_and_saves(synthetic_root: Path,
                                                         tmp_path: Path) -> None:
    budget_minutes = 0.001
    assert train.main(tiny_args(synthetic_root, tmp_path, "--epochs", "50",
                                "--max-minutes", str(budget_minutes))) == 0
    assert (tmp_path / "best.pt").is_file()
    last = load_checkpoint(tmp_path / "last.pt")
    assert 1 <= last["epoch"] < 50
    assert last["train_seconds"] >= budget_minutes * 60
    assert 0.0 <= last["metrics"]["val_dice"] <= 1.0
    # The schedule follows the budget: once it is spent the learning rate has fully decayed.
    args = last["args"]
    assert last["metrics"]["lr"] == pytest.approx(args["lr"] * args["min_lr_ratio"])


# ---------------------------------------------------------------- W&B


def test_wandb_offline_logs_validation_dice(synthetic_root: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "checkpoints"
    assert train.main(tiny_args(synthetic_root, out, "--wandb")) == 0

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].is_dir()
    run_id = load_checkpoint(out / "last.pt")["wandb_id"]
    assert run_id and runs[0].name.endswith(run_id)  # a resumed run continues the same W&B run
    summary = runs[0] / "files" / "wandb-summary.json"
    if summary.is_file():
        assert "val/dice" in json.loads(summary.read_text())
    else:  # offline runs keep the summary in the binary log only
        assert b"val/dice" in b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))


# ---------------------------------------------------------------- errors and presets


def test_nonexistent_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "no-such-folder"
    assert train.main(tiny_args(missing, tmp_path / "out")) == 1
    line = one_error_line(capsys)
    assert str(missing) in line and "does not exist" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value, expected", [
    ("--batch-size", "0", "--batch-size must be at least 1"),
    ("--epochs", "0", "--epochs must be at least 1"),
    ("--val-fraction", "1.5", "--val-fraction must be in"),
    ("--max-minutes", "-1", "--max-minutes must be positive"),
    ("--precision", "fp16", "fp16 needs a GPU"),
])
def test_bad_flag_values_are_one_line(synthetic_root: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture, flag: str, value: str,
                                      expected: str) -> None:
    if flag == "--precision" and torch.cuda.is_available():
        pytest.skip("fp16 is valid with a GPU")
    assert train.main(tiny_args(synthetic_root, tmp_path, flag, value)) == 1
    assert expected in one_error_line(capsys)
    assert not any(tmp_path.iterdir())


def test_zero_val_fraction_without_official_val_is_a_clear_error(
        synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train.main(tiny_args(synthetic_root, tmp_path, "--val-fraction", "0")) == 1
    line = one_error_line(capsys)
    assert "--val-fraction" in line or "--official-val" in line, line


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "tpu"])
def test_unusable_device_is_one_line(synthetic_root: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture, device: str) -> None:
    assert train.main(tiny_args(synthetic_root, tmp_path, "--device", device)) == 1
    assert device in one_error_line(capsys)


def test_unknown_choice_is_an_argparse_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["--precision", "fp64"])
    assert info.value.code == 2
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


def test_script_prints_one_line_and_exits_1() -> None:
    result = subprocess.run([sys.executable, "train.py", "--data", "/nonexistent"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/nonexistent" in lines[0]


def test_preset_gives_defaults_and_explicit_flags_win() -> None:
    preset = PRESETS["cpu-demo"]
    args = parse_args(["--preset", "cpu-demo", "--epochs", "1"])
    assert args.epochs == 1 != preset["epochs"]
    for name, value in preset.items():
        if name != "epochs":
            assert getattr(args, name) == value, name
    # An explicit flag wins even when it repeats the built-in default.
    default_size = build_parser().get_default("img_size")
    args = parse_args(["--preset", "cpu-demo", "--img-size", str(default_size)])
    assert args.img_size == default_size != preset["img_size"]


def test_without_preset_the_defaults_apply() -> None:
    args = parse_args([])
    parser = build_parser()
    assert args.epochs == parser.get_default("epochs")
    assert args.base_channels == 64 and args.depth == 4 and not args.bilinear


def test_ema_is_saved_as_the_model_and_resumes(synthetic_root: Path, tmp_path: Path) -> None:
    assert train.main(tiny_args(synthetic_root, tmp_path, "--ema", "0.9", "--augment", "flips",
                                "--loss", "dice")) == 0
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["ema_updates"] == last["step"] > 0
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in last["model"])
    assert train.main(["--resume", str(tmp_path / "last.pt"), "--epochs", "2"]) == 0
    resumed = load_checkpoint(tmp_path / "last.pt")
    assert resumed["ema_updates"] == resumed["step"] == 2 * last["step"]
    assert resumed["args"]["ema"] == 0.9 and resumed["args"]["loss"] == "dice"


def test_batch_norm_trains_predicts_and_is_kept_on_resume(synthetic_root: Path,
                                                          tmp_path: Path) -> None:
    from predict import Predictor

    assert train.main(tiny_args(synthetic_root, tmp_path, "--norm", "batch",
                                "--loss", "focal_dice")) == 0
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["model_config"]["norm"] == "batch"
    assert best["model_config"]["deep_supervision"]
    assert any(key.startswith("aux_heads.") for key in best["model"])
    assert any(key.endswith("running_mean") for key in best["model"])
    image = np.zeros((40, 50, 3), np.uint8)
    prediction = Predictor(tmp_path / "best.pt", device="cpu").predict(image)
    assert prediction.mask.shape == (40, 50)
    with pytest.raises(ValueError, match="--norm"):
        parse_args(["--resume", str(tmp_path / "last.pt"), "--norm", "group"])


def test_a_run_saved_before_the_norm_and_deep_supervision_flags_resumes(
        synthetic_root: Path, tmp_path: Path) -> None:
    assert train.main(tiny_args(synthetic_root, tmp_path, "--norm", "batch",
                                "--no-deep-supervision")) == 0
    last = load_checkpoint(tmp_path / "last.pt")
    for name in ("norm", "deep_supervision"):
        del last["args"][name], last["model_config"][name]
    last["args"]["compile"] = False  # an on/off switch then
    torch.save(last, tmp_path / "last.pt")
    assert parse_args(["--resume", str(tmp_path / "last.pt")]).compile == "off"
    assert train.main(["--resume", str(tmp_path / "last.pt"), "--epochs", "2"]) == 0
    resumed = load_checkpoint(tmp_path / "last.pt")
    assert resumed["epoch"] == 2 and not resumed["args"]["deep_supervision"]
    assert not any(key.startswith("aux_heads.") for key in resumed["model"])


def test_a_fold_run_validates_on_its_fold_and_keeps_the_last_epoch(
        synthetic_root: Path, tmp_path: Path) -> None:
    from data.splits import fold_pairs
    from evaluation.sources import training_pairs

    out = tmp_path / "fold1"
    assert train.main(tiny_args(synthetic_root, out, "--fold", "1", "--folds", "4",
                                "--epochs", "2", "--best-epoch", "last")) == 0
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == 2 and best["args"]["fold"] == 1  # whatever its validation Dice
    expected = fold_pairs(find_pairs(synthetic_root, "train"), 1, 4, seed=0)
    assert training_pairs(best, "val")[1] == expected[1]  # as scripts/evaluate.py reads it
    assert training_pairs(best, "train")[1] == expected[0]


@pytest.mark.parametrize("flags, named", [(["--fold", "4", "--folds", "4"], "--fold 4"),
                                          (["--fold", "0", "--official-val"], "--fold 0"),
                                          (["--init-share", "0.5"], "--init-share")])
def test_fold_and_init_share_mistakes_are_one_line(flags: list[str], named: str,
                                                   synthetic_root: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert train.main(tiny_args(synthetic_root, tmp_path / "run", *flags)) == 1
    assert named in one_error_line(capsys)
