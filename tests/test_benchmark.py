"""Tests of scripts/benchmark.py on a tiny U-Net (real measurements are made by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from common.device import cpu_supports_bf16
from models import UNetConfig
from tests.conftest import load_script

TINY = ["--device", "cpu", "--base-channels", "4", "--depth", "2", "--img-size", "32",
        "--batch-size", "2", "--seconds", "0.2", "--min-steps", "1", "--warmup", "1"]
COLUMNS = ["setting", "train img/s", "inference img/s", "train speed-up", "inference speed-up",
           "train TFLOP/s", "inference TFLOP/s", "train peak MiB", "inference peak MiB"]
DEFAULT_MARK = " (train.py default)"


benchmark = load_script("benchmark")


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the Markdown table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


def test_tiny_cpu_benchmark_reports_every_setting(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    json_path = tmp_path / "speed.json"
    assert benchmark.main([*TINY, "--json", str(json_path)]) == 0
    header, rows = markdown_table(capsys.readouterr().out)

    assert header == COLUMNS
    names = [row[0] for row in rows]
    assert [name.removesuffix(DEFAULT_MARK) for name in names] == [
        "fp32", "fp32 + channels_last", "bf16", "bf16 + channels_last"]
    default = "bf16 + channels_last" if cpu_supports_bf16() else "fp32 + channels_last"
    assert [name for name in names if name.endswith(DEFAULT_MARK)] == [default + DEFAULT_MARK]
    for row in rows:
        assert all(float(cell.removesuffix("x")) > 0 for cell in row[1:]), row
    assert rows[0][3:5] == ["1.00x", "1.00x"]  # the fp32 baseline

    results = json.loads(json_path.read_text())
    assert [row["setting"] for row in results["rows"]] == names
    assert results["model"]["norm"] == "group"  # train.py's default, as --norm's
    flops = results["flops_per_image"]
    for row in results["rows"]:
        for phase in ("train", "inference"):
            assert row[f"{phase}_img_s"] > 0 and row[f"{phase}_peak_mib"] > 0
            assert row[f"{phase}_tflops"] == pytest.approx(
                flops[phase] * row[f"{phase}_img_s"] / 1e12)


def test_flops_per_image_scale_with_pixels_and_backward_costs_about_twice_forward() -> None:
    config = UNetConfig(base_channels=4, depth=2)
    small, large = (benchmark.flops_per_image(config, size) for size in (32, 64))
    assert large == {phase: 4 * count for phase, count in small.items()}
    # The backward pass computes weight and input gradients (2 forwards), except the input
    # gradient of the first convolution, which the image does not need.
    assert 2 * small["inference"] < small["train"] < 3 * small["inference"]


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--seconds", "-1"], "--seconds must be at least 0, got -1.0"),
])
def test_bad_options_give_one_error_line(flags: list[str], message: str,
                                         capsys: pytest.CaptureFixture) -> None:
    assert benchmark.main([*TINY, *flags]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {message}"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_gives_one_error_line(capsys: pytest.CaptureFixture) -> None:
    assert benchmark.main([*TINY, "--device", "cuda"]) == 1
    assert capsys.readouterr().err.startswith("error: --device cuda: CUDA is not available")


def test_the_onnx_row_gives_inference_only(capsys: pytest.CaptureFixture) -> None:
    assert benchmark.main([*TINY, "--onnx"]) == 0
    _, rows = markdown_table(capsys.readouterr().out)
    onnx = rows[-1]
    assert onnx[0] == "ONNX Runtime (CPUExecutionProvider), fp32"
    assert onnx[1] == onnx[3] == onnx[5] == onnx[7] == "-"  # no training in ONNX Runtime
    assert float(onnx[2]) > 0 and onnx[4].endswith("x")
