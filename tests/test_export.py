"""Tests of scripts/export.py and the formats it writes: safetensors (weights without pickle)
and ONNX (run by ONNX Runtime), both loadable by predict.py and the Predictor API."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors import safe_open

import predict
from inference.predictor import Predictor
from models.checkpoint import SCALE_SUFFIX, CheckpointError, load_checkpoint, load_model_file
from tests.conftest import load_script, shared_data

export = load_script("export")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint_dir: Path) -> Path:
    return tiny_checkpoint_dir / "best.pt"


@pytest.fixture(scope="module")
def check_images(synthetic_root: Path) -> str:
    return str(synthetic_root / "ISIC2018_Task1-2_Validation_Input")


def exported(checkpoint: Path, check_images: str, output: Path, *flags: str) -> int:
    return export.main(["--checkpoint", str(checkpoint), "--output", str(output),
                        "--check-images", check_images, *flags])


def masks_of(model: Path, images: str, out: Path) -> dict[str, np.ndarray]:
    assert predict.main(["--checkpoint", str(model), "--input", images, "--output", str(out),
                         "--device", "cpu", "--precision", "fp32"]) == 0
    return {path.name: cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            for path in sorted(out.glob("*_segmentation.png"))}


def test_safetensors_holds_the_settings_and_predicts_the_same_masks(
        checkpoint: Path, check_images: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "model.safetensors"
    assert exported(checkpoint, check_images, output, "--format", "safetensors") == 0
    out = capsys.readouterr().out
    assert "largest logit difference 0.00e+00" in out and "100.00000%" in out, out
    assert output.read_bytes()[8:9] == b"{"  # a safetensors JSON header, no pickle
    original, copy = load_model_file(checkpoint), load_model_file(output)
    assert copy.settings() == original.settings()
    assert copy.info["epoch"] == original.info["epoch"] and "args" in copy.info
    assert copy.weights.keys() == original.weights.keys()
    assert all(torch.equal(copy.weights[k], original.weights[k]) for k in copy.weights)
    ours, theirs = (masks_of(model, check_images, tmp_path / name)
                    for model, name in ((output, "a"), (checkpoint, "b")))
    assert ours.keys() == theirs.keys() and len(ours) == 8
    assert all(np.array_equal(ours[name], theirs[name]) for name in ours)


def test_fp16_safetensors_is_half_the_size_and_nearly_the_same(
        checkpoint: Path, check_images: str, tmp_path: Path) -> None:
    fp32, fp16 = tmp_path / "fp32.safetensors", tmp_path / "fp16.safetensors"
    assert exported(checkpoint, check_images, fp32, "--format", "safetensors", "--no-check") == 0
    # --check stays on; many of the tiny one-epoch model's logits sit so close to the threshold
    # that fp16 rounding flips some 0.1 % of its pixels (the bundled model: 99.989 % agree).
    assert exported(checkpoint, check_images, fp16, "--format", "safetensors",
                    "--dtype", "fp16", "--min-agreement", "0.995") == 0
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    assert {t.dtype for t in load_model_file(fp16).weights.values()} == {torch.float16}


def test_int8_safetensors_stores_a_quarter_and_loads_as_fp32_close_to_the_original(
        checkpoint: Path, check_images: str, tmp_path: Path) -> None:
    fp32, int8 = tmp_path / "fp32.safetensors", tmp_path / "int8.safetensors"
    assert exported(checkpoint, check_images, fp32, "--format", "safetensors", "--no-check") == 0
    # --check stays on; the tiny test model's logits sit close to the threshold, so more of
    # its pixels flip than a trained model's (the bundled model: 99.91 % at least).
    assert exported(checkpoint, check_images, int8, "--format", "safetensors",
                    "--dtype", "int8", "--min-agreement", "0.98") == 0
    original, quantized = load_model_file(fp32).weights, load_model_file(int8).weights
    assert quantized.keys() == original.keys()
    for name, weight in original.items():
        if weight.dim() >= 2:  # kernels: int8, off by at most half a step of their channel
            step = weight.flatten(1).abs().amax(dim=1) / 127
            error = (quantized[name] - weight).flatten(1).abs().amax(dim=1)
            assert quantized[name].dtype == torch.float32
            assert bool((error <= step / 2 + 1e-7).all()), name
    with safe_open(int8, framework="pt") as f:
        stored = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    kernels = {name for name, weight in original.items() if weight.dim() >= 2}
    def size(tensors: dict) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())

    assert size(stored) < 0.3 * size(original)  # the tiny model's metadata is left out
    assert {stored[name].dtype for name in kernels} == {torch.int8}
    assert all(stored[name + SCALE_SUFFIX].shape == (original[name].shape[0],)
               for name in kernels)


def test_onnx_has_dynamic_sizes_settings_in_its_metadata_and_agrees_with_pytorch(
        checkpoint: Path, check_images: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    import onnx
    import onnxruntime

    output = tmp_path / "model.onnx"
    assert exported(checkpoint, check_images, output, "--format", "onnx") == 0
    assert "check on 8 images" in capsys.readouterr().out
    graph = onnx.load(output)
    assert graph.opset_import[0].version >= 17
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    source = load_checkpoint(checkpoint)
    assert json.loads(metadata["img_size"]) == source["img_size"]
    assert json.loads(metadata["threshold"]) == source["threshold"]
    assert json.loads(metadata["normalization"]) == source["normalization"]

    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    model = load_model_file(checkpoint).build()
    for shape in [(1, 3, 32, 32), (3, 3, 45, 70), (1, 3, 13, 9)]:  # not multiples of 4 too
        image = torch.randn(*shape)
        (logits,) = session.run(None, {"image": image.numpy()})
        with torch.no_grad():
            expected = model(image).numpy()
        assert logits.shape == (shape[0], 1, *shape[2:])
        np.testing.assert_allclose(logits, expected, atol=1e-4)

    onnx_masks = masks_of(output, check_images, tmp_path / "onnx")
    torch_masks = masks_of(checkpoint, check_images, tmp_path / "torch")
    assert onnx_masks.keys() == torch_masks.keys() and len(onnx_masks) == 8
    for name, mask in onnx_masks.items():
        assert (mask == torch_masks[name]).mean() >= 0.999, name


def test_the_predictor_runs_onnx_with_its_own_settings(checkpoint: Path, check_images: str,
                                                       tmp_path: Path) -> None:
    output = tmp_path / "model.onnx"
    assert exported(checkpoint, check_images, output, "--format", "onnx", "--no-check") == 0
    onnx_predictor = Predictor(output, device="cpu", tta=True)
    torch_predictor = Predictor(checkpoint, device="cpu", precision="fp32", tta=True)
    assert onnx_predictor.img_size == torch_predictor.img_size
    assert onnx_predictor.threshold == torch_predictor.threshold
    assert onnx_predictor.info["epoch"] == torch_predictor.info["epoch"]
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    np.testing.assert_allclose(onnx_predictor.predict(image).probabilities,
                               torch_predictor.predict(image).probabilities, atol=1e-4)


def test_a_check_past_its_tolerance_fails_loudly_and_leaves_no_file(
        checkpoint: Path, check_images: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "model.onnx"
    assert exported(checkpoint, check_images, output, "--format", "onnx",
                    "--tolerance", "0") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the exported model differs"), err
    assert not output.exists()


def test_export_refuses_a_dtype_for_onnx_and_a_foreign_file(
        checkpoint: Path, check_images: str, tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    assert exported(checkpoint, check_images, tmp_path / "m.onnx", "--format", "onnx",
                    "--dtype", "fp16") == 1
    assert "--dtype applies to safetensors only" in capsys.readouterr().err
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(CheckpointError, match="not a model exported by this project"):
        load_model_file(other)


def test_onnx_on_real_full_resolution_images(checkpoint: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    images = shared_data("isic-fullres-sample") / "images"
    assert exported(checkpoint, str(images), tmp_path / "model.onnx", "--format", "onnx") == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("check on")]
    assert line and "check on 32 images" in line[0]
