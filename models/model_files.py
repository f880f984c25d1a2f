"""Writing into a model file of any kind this project reads (a ``train.py`` checkpoint, a
safetensors or an ONNX export), chosen by its suffix; above both formats' modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.checkpoint import (
    CALIBRATION_KEY,
    SAFETENSORS_SUFFIX,
    load_checkpoint,
    save_checkpoint,
    update_safetensors_metadata,
)
from models.onnx_model import is_onnx, update_metadata


def write_calibration(path: str | Path, calibration: dict[str, Any]) -> Path:
    """Store a model's calibration (``inference.calibration.Calibration.to_dict``) in its file,
    leaving the weights and everything else as they are: a training checkpoint's entry, a
    safetensors or ONNX file's metadata. Atomic, as every write of a model file here.

    Raises:
        CheckpointError: the file cannot be read as a model of this project.
    """
    path = Path(path)
    if is_onnx(path):
        update_metadata(path, {CALIBRATION_KEY: json.dumps(calibration)})
    elif path.suffix == SAFETENSORS_SUFFIX:
        update_safetensors_metadata(path, {CALIBRATION_KEY: json.dumps(calibration)})
    else:
        payload = load_checkpoint(path)
        payload.pop("format"), payload.pop("version")
        save_checkpoint({**payload, CALIBRATION_KEY: calibration}, path)
    return path
