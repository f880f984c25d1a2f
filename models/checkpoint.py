"""Reading and writing model files: training checkpoints (``.pt``) and the release format
(``.safetensors``), both loadable without running any pickled code.

A training checkpoint (``best.pt``, ``last.pt``) is a ``torch.save`` of plain types: the
weights, what prediction needs (model config, image size, normalisation, threshold), the run's
arguments and metrics, and in ``last.pt`` everything needed to resume. The release format is a
safetensors file of the weights alone, with the same prediction settings and provenance as
JSON in its metadata: no pickle at all, readable from any language. :func:`load_model_file`
reads either into a :class:`ModelBundle`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from models.unet import UNet, UNetConfig, build_model

CHECKPOINT_FORMAT = "isic-unet"
CHECKPOINT_VERSION = 1
# What prediction needs from a training checkpoint.
PREDICTION_KEYS = ("model", "model_config", "img_size", "normalization", "threshold")
# Provenance kept with exported weights (the rest of a checkpoint is for resuming).
INFO_KEYS = ("epoch", "step", "train_seconds", "metrics", "best_dice", "args", "synthetic_data")
# What inference.calibration fitted on held-out images (optional: a model may not have it yet).
CALIBRATION_KEY = "calibration"
# What a model file's metadata (safetensors, ONNX) holds besides its format and version.
METADATA_KEYS = (*PREDICTION_KEYS, *INFO_KEYS, CALIBRATION_KEY)
SAFETENSORS_SUFFIX = ".safetensors"
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
INT8 = "int8"
# 2: int8 weights (one scale per output channel beside each kernel); readers of version 1
# would load the integers as weights, so they must refuse these files.
SAFETENSORS_VERSION = 2
SCALE_SUFFIX = ":scale"  # ':' never occurs in a state-dict key


class CheckpointError(UserError, ValueError):
    """A model file is missing, unreadable, unsafe to load, or not one of this project."""


def save_checkpoint(payload: dict[str, Any], path: str | Path, durable: bool = True) -> Path:
    """Write ``payload`` to ``path`` atomically: a crash mid-write leaves the old file intact.

    The file is created with the user's umask (as any other file they write), so that a group
    can share checkpoints on a shared server. The payload must hold plain types only (dicts,
    lists, numbers, strings, tensors) so that :func:`load_checkpoint` can read it with
    ``weights_only=True``.

    Args:
        durable: ``fsync`` before the rename, so that the file also survives a power cut.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    with atomic_file(path) as f, without_crc32():
        torch.save(payload, f)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    return path


@contextmanager
def without_crc32() -> Iterator[None]:
    """torch.save without the zip entries' CRC-32, which takes 70 % of the time of writing a
    checkpoint (1.29 s of 0.47 GB last.pt, 0.37 s without); integrity comes from the atomic
    rename and the fsync. Older PyTorch versions, without the setting, compute it."""
    try:
        from torch.utils.serialization import config
    except ImportError:
        yield
        return
    previous = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        yield
    finally:
        config.save.compute_crc32 = previous


class atomic_file:
    """``with atomic_file(path) as f``: a binary file written beside ``path`` and renamed onto
    it when the block ends without an exception (removed otherwise); mode ``0o666`` less the
    umask, as ``open`` gives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.file = os.fdopen(fd, "wb")
        return self.file

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` without running any pickled code.

    Args:
        mmap: map the tensors' storage instead of reading it (for reading the other entries
            of a large checkpoint).

    Raises:
        CheckpointError: the file does not exist, needs pickle code to load, or is not a
            checkpoint of this project.
    """
    path = Path(path)
    _check_exists(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(
            f"{path} is not a checkpoint this project can load safely "
            f"(refused without running its code: {str(exc).splitlines()[0][:200]})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by this project's train.py")
    if payload.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this project; update it")
    return payload


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; train one with `python train.py` "
            "(or `python train.py --data synthetic` for the offline demo)"
        )


# ---------------------------------------------------------------- what prediction needs


@dataclass
class ModelBundle:
    """Trained weights with everything needed to predict with them.

    Attributes:
        config: the U-Net's architecture.
        weights: its state dict (any floating dtype; :meth:`build` loads it as float32).
        img_size: the square input size ``S`` the model was trained at.
        mean, std: per-channel normalisation of RGB values in ``[0, 1]``.
        threshold: lesion probability above which a pixel is lesion, in ``(0, 1)``.
        info: provenance: ``epoch``, ``metrics``, ``args`` of the training run (when known).
        path: the file it was read from.
        calibration: the model's calibration (``inference.calibration.Calibration.to_dict``),
            ``None`` when it was never calibrated.
    """

    config: UNetConfig
    weights: dict[str, torch.Tensor]
    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    calibration: dict[str, Any] | None = None

    def build(self) -> UNet:
        """The U-Net with these weights, in float32 and eval mode.

        Raises:
            CheckpointError: the weights do not fit the config.
        """
        model = build_model(self.config)
        try:
            model.load_state_dict({k: v.float() for k, v in self.weights.items()})
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path} does not hold a U-Net of this project "
                                  f"({str(exc).splitlines()[0][:200]})") from exc
        return model.eval()

    def settings(self) -> dict[str, Any]:
        """The prediction settings as plain types (what export writes into the metadata)."""
        settings = {"model_config": self.config.to_dict(), "img_size": self.img_size,
                    "normalization": {"mean": list(self.mean), "std": list(self.std)},
                    "threshold": self.threshold}
        if self.calibration is not None:
            settings[CALIBRATION_KEY] = self.calibration
        return settings


def bundle_from_checkpoint(payload: dict[str, Any], path: Path | None = None) -> ModelBundle:
    """The :class:`ModelBundle` of a training checkpoint's payload.

    Raises:
        CheckpointError: prediction settings are missing or the config is not a U-Net's.
    """
    missing = [key for key in PREDICTION_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; use a best.pt or last.pt "
                              "written by this project's train.py")
    return settings_bundle(payload, payload["model"], path)


def settings_bundle(settings: dict[str, Any], weights: dict[str, torch.Tensor],
                    path: Path | None) -> ModelBundle:
    """A :class:`ModelBundle` of ``weights`` and the prediction settings and provenance
    (:data:`INFO_KEYS`) found in ``settings``.

    Raises:
        CheckpointError: a setting is missing or malformed.
    """
    info = {key: settings[key] for key in INFO_KEYS if key in settings}
    try:
        config = UNetConfig.from_dict(settings["model_config"])
        norm = settings["normalization"]
        return ModelBundle(config, weights, int(settings["img_size"]), tuple(norm["mean"]),
                           tuple(norm["std"]), float(settings["threshold"]), info, path,
                           settings.get(CALIBRATION_KEY))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} does not describe a U-Net of this project ({exc})") \
            from exc


def load_model_file(path: str | Path) -> ModelBundle:
    """Read a ``.safetensors`` export or a ``.pt`` training checkpoint.

    Raises:
        CheckpointError: missing, unsafe, not of this project, or incomplete.
    """
    path = Path(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        return load_safetensors(path)
    return bundle_from_checkpoint(load_checkpoint(path), path)


# ---------------------------------------------------------------- the release format


def save_safetensors(bundle: ModelBundle, path: str | Path, dtype: str = "fp32") -> Path:
    """Write ``bundle`` as safetensors: the weights in ``dtype`` (``fp32``, ``fp16``,
    ``bf16``, or ``int8``: see :func:`quantize_int8`), and as metadata the prediction settings
    and provenance, each a JSON string.

    Raises:
        CheckpointError: an unknown ``dtype``.
    """
    if dtype not in (*WEIGHT_DTYPES, INT8):
        raise CheckpointError(f"--dtype {dtype}: use one of {', '.join((*WEIGHT_DTYPES, INT8))}")
    from safetensors.torch import save

    weights = {name: tensor.detach().cpu() for name, tensor in bundle.weights.items()}
    if dtype == INT8:
        tensors = quantize_int8(weights)
    else:
        tensors = {name: tensor.to(WEIGHT_DTYPES[dtype]) if tensor.is_floating_point()
                   else tensor for name, tensor in weights.items()}
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    metadata = {"format": CHECKPOINT_FORMAT, "version": str(SAFETENSORS_VERSION),
                "weights_dtype": dtype,
                **{key: json.dumps(value) for key, value in bundle.settings().items()},
                **{key: json.dumps(value) for key, value in bundle.info.items()}}
    path = Path(path)
    with atomic_file(path) as f:
        f.write(save(tensors, metadata=metadata))
    return path


def load_safetensors(path: Path) -> ModelBundle:
    """Read what :func:`save_safetensors` wrote.

    Raises:
        CheckpointError: missing, not a safetensors file, or not of this project.
    """
    from safetensors import SafetensorError, safe_open

    _check_exists(path)
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            weights = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a model exported by this project (export one "
                              "with `python scripts/export.py --format safetensors`)")
    if int(metadata.get("version", 0)) > SAFETENSORS_VERSION:
        raise CheckpointError(f"{path} was written by a newer version of this project; update it")
    if metadata.get("weights_dtype") == INT8:
        weights = dequantize_int8(weights)
    try:
        values = {key: json.loads(value) for key, value in metadata.items()
                  if key in METADATA_KEYS}
    except ValueError as exc:
        raise CheckpointError(f"{path} has unreadable metadata ({exc})") from exc
    return settings_bundle(values, weights, path)


def quantize_int8(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convolution kernels (float tensors of 2 or more dimensions) as int8, symmetric, one fp32
    scale per output channel (``name + SCALE_SUFFIX``); other float tensors (biases, norm
    weights) in fp16, integer tensors as they are. Halves an fp16 file."""
    tensors = {}
    for name, tensor in weights.items():
        if tensor.is_floating_point() and tensor.dim() >= 2:
            flat = tensor.float().flatten(1)
            scale = (flat.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
            tensors[name] = torch.round(flat / scale[:, None]).to(torch.int8).view_as(tensor)
            tensors[name + SCALE_SUFFIX] = scale
        else:
            tensors[name] = tensor.half() if tensor.is_floating_point() else tensor
    return tensors


def dequantize_int8(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fp32 weights of what :func:`quantize_int8` wrote."""
    weights = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is not None:
            tensor = tensor.float() * scale.view(-1, *[1] * (tensor.dim() - 1))
        weights[name] = tensor
    return weights


def update_safetensors_metadata(path: Path, updates: dict[str, str]) -> None:
    """Set metadata entries of a ``.safetensors`` model of this project (atomically), the
    tensors unchanged.

    Raises:
        CheckpointError: the file is not a model of this project.
    """
    from safetensors import safe_open
    from safetensors.torch import save

    load_safetensors(path)  # refuses files that are not this project's
    with safe_open(path, framework="pt") as f:
        metadata = {**(f.metadata() or {}), **updates}
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    with atomic_file(path) as out:
        out.write(save(tensors, metadata=metadata))
