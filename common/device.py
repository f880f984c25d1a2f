"""Device and precision: which device to run on, which autocast dtype and memory format (the
flags that choose them are in :mod:`common.options`)."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.errors import FlagError
from common.options import PRECISIONS


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; any other name is checked to exist.

    Raises:
        FlagError: not a device name, or the device is not available here.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FlagError(f"--device {name}: not a device name; use auto, cpu, cuda, cuda:N "
                        "or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlagError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise FlagError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return device


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast
    is several times faster than fp32; elsewhere it is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` on ``device``; ``None`` means plain fp32.

    ``auto``: bf16 on Ampere+ GPUs and bf16-capable CPUs, fp16 on older GPUs, else fp32.

    Raises:
        FlagError: fp16 on a CPU, or an unknown precision.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise FlagError("--precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
        return torch.float16
    if precision != "auto":
        raise FlagError(f"--precision {precision}: unknown; use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


@dataclass(frozen=True)
class Hardware:
    """Where and how tensors are computed: the device, the autocast dtype (``None``: fp32) and
    whether images use the channels_last memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = True

    @classmethod
    def choose(cls, device: str = "auto", precision: str = "auto",
               channels_last: bool = True) -> Hardware:
        """From the flags' values; raises :class:`FlagError` for unusable ones."""
        chosen = select_device(device)
        return cls(chosen, autocast_dtype(precision, chosen), channels_last)

    @property
    def sum_dtype(self) -> torch.dtype:
        """The dtype to add up losses and scores in on the device: float64, whose sums of
        float32 values are exact, except on Apple MPS, which has none."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self) -> Any:
        """The autocast context of this precision (a no-op for fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """A ``(N, 3, H, W)`` batch on the device, in the memory format."""
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)

    def batch(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """A data-loader batch's ``image`` and ``mask`` on the device."""
        return self.images(batch["image"]), batch["mask"].to(self.device, non_blocking=True)

    def module(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device, in the memory format."""
        return model.to(self.device, memory_format=self.memory_format)

    def synchronize(self) -> None:
        """Wait for queued kernels, so that a clock read after this covers them."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def describe(self) -> str:
        return f"{self.device}, precision {self.amp_dtype or torch.float32}"


def configure_backends(device: torch.device) -> None:
    """On CUDA: TF32 matrix products and cuDNN autotuning (the input sizes are fixed)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
