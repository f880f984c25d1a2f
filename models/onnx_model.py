"""The U-Net as an ONNX model: exporting it, and running it with ONNX Runtime.

The exported graph takes normalised images ``(N, 3, H, W)`` of any batch size and any height
and width (sizes that are not multiples of ``2**depth`` included: the padding is part of the
graph) and returns logits ``(N, 1, H, W)``. The prediction settings (image size,
normalisation, threshold, architecture) and the training provenance are stored in the model's
metadata, as JSON strings, so that nothing but the ``.onnx`` file is needed to use it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from common.errors import FlagError
from models.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    METADATA_KEYS,
    CheckpointError,
    ModelBundle,
    atomic_file,
    settings_bundle,
)

ONNX_SUFFIX = ".onnx"
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"


def export_onnx(bundle: ModelBundle, path: str | Path, opset: int = OPSET) -> Path:
    """Write ``bundle``'s U-Net (eval mode, float32) as ONNX with dynamic batch, height and
    width, and its settings in the metadata.

    Raises:
        FlagError: an opset below 17.
    """
    if opset < 17:
        raise FlagError(f"--opset {opset}: use 17 or newer")
    import onnx

    model = bundle.build()
    size = bundle.img_size
    example = torch.zeros(1, 3, size, size)
    batch, height, width = (torch.export.Dim(name, min=1, max=65536)
                            for name in ("batch", "height", "width"))
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (example,), raw, dynamo=True, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes={"x": {0: batch, 2: height, 3: width}},
                          external_data=False, verbose=False)
        graph = onnx.load(raw)
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(CHECKPOINT_VERSION),
                **{key: json.dumps(value) for key, value in bundle.settings().items()},
                **{key: json.dumps(value) for key, value in bundle.info.items()}}
    onnx.helper.set_model_props(graph, metadata)
    path = Path(path)
    with atomic_file(path) as f:
        f.write(graph.SerializeToString())
    return path


def read_metadata(path: Path) -> ModelBundle:
    """The settings an exported ``.onnx`` holds, as a :class:`ModelBundle` without weights.

    Raises:
        CheckpointError: missing, not ONNX, or not exported by this project.
    """
    import onnx

    if not path.is_file():
        raise CheckpointError(f"model {path} not found; export one with `python "
                              "scripts/export.py --format onnx`")
    try:
        graph = onnx.load(path, load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ...
        raise CheckpointError(f"{path} is not a readable ONNX model ({exc})") from exc
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a model exported by this project (export one with "
                              "`python scripts/export.py --format onnx`)")
    values = {key: json.loads(value) for key, value in metadata.items() if key in METADATA_KEYS}
    return settings_bundle(values, {}, path)


def update_metadata(path: Path, updates: dict[str, str]) -> None:
    """Set metadata entries of an exported ``.onnx`` (atomically), the graph unchanged.

    Raises:
        CheckpointError: the file is not an ONNX model of this project.
    """
    import onnx

    read_metadata(path)  # refuses files that are not this project's
    graph = onnx.load(path, load_external_data=False)
    metadata = {prop.key: prop.value for prop in graph.metadata_props}
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {**metadata, **updates})
    with atomic_file(path) as f:
        f.write(graph.SerializeToString())


class OnnxRunner:
    """An ONNX Runtime session of an exported U-Net: normalised ``(N, 3, H, W)`` float32 in,
    logits ``(N, 1, H, W)`` out.

    Args:
        path: the ``.onnx`` file.
        device: ``cuda`` uses ONNX Runtime's CUDA provider (``onnxruntime-gpu``), ``cpu`` the
            CPU; ``auto`` the CUDA provider when it is installed and a GPU is present.

    Raises:
        FlagError: ``cuda`` without the CUDA provider.
    """

    def __init__(self, path: Path, device: str = "auto") -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in available and torch.cuda.is_available()
        if device.startswith("cuda") and not cuda:
            raise FlagError(f"--device {device}: ONNX Runtime has no CUDA provider here "
                            f"(available: {', '.join(available)}); install onnxruntime-gpu, or "
                            "use --device cpu")
        use_cuda = cuda and device != "cpu"
        self.providers = (["CUDAExecutionProvider"] if use_cuda else []) + [
            "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about reused buffers are not for users
        self.session = ort.InferenceSession(str(path), options, providers=self.providers)
        self.device = torch.device("cuda" if use_cuda else "cpu")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})
        return torch.from_numpy(logits)

    def describe(self) -> str:
        return f"ONNX Runtime ({self.providers[0]})"


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix == ONNX_SUFFIX

