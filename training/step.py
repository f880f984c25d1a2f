"""One optimisation step, as ``train.py`` takes it and ``scripts/benchmark.py`` times it."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import nn

from common.device import Hardware
from utils import SegmentationLoss


def make_optimizer(model: nn.Module, lr: float, weight_decay: float,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's parameters: the fused kernel on CPUs and GPUs (one pass over
    each tensor instead of several; measured 2.2 times faster on the 31 M-parameter U-Net on
    a CPU, see docs/experiments.md), the multi-tensor one elsewhere."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                             fused=fused or None)


@dataclass
class Optimisation:
    """What a training step needs: the module to call (possibly compiled or wrapped in
    DistributedDataParallel), its optimiser and gradient scaler, the loss, the hardware
    settings and the gradient-norm clip (0: off); ``eager`` is the module before
    ``torch.compile``, which the step falls back to when compiling fails."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: SegmentationLoss
    hardware: Hardware
    grad_clip: float
    eager: nn.Module | None = None

    @classmethod
    def create(cls, model: nn.Module, hardware: Hardware, lr: float, weight_decay: float,
               loss: str, grad_clip: float) -> Optimisation:
        """AdamW, a grad scaler that is on for fp16 only, and the named loss."""
        scaler = torch.amp.GradScaler(hardware.device.type,
                                      enabled=hardware.amp_dtype == torch.float16)
        return cls(model, make_optimizer(model, lr, weight_decay, hardware.device), scaler,
                   SegmentationLoss(loss), hardware, grad_clip)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def compile(self) -> None:
        """Let ``torch.compile`` fuse the model's kernels from the next step on."""
        self.eager, self.model = self.model, torch.compile(self.model)

    def step(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Forward, backward, clip and update on one batch already on the device; returns the
        loss, still on the device (reading it would synchronise).

        A compiled model compiles in its first steps; if that fails (no C++ compiler on a
        CPU, say), one line says so and training goes on without it: the failure comes before
        any weight changed.
        """
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss = self.forward_backward(image, mask)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            if self.eager is None:
                raise
            reason = " ".join(str(exc).split())[:200]
            print(f"warning: torch.compile failed ({reason}); training without it",
                  file=sys.stderr, flush=True)
            self.model, self.eager = self.eager, None
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.forward_backward(image, mask)
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def forward_backward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The loss of one batch, with its (scaled) gradients accumulated."""
        with self.hardware.autocast():
            loss = self.loss_fn(self.model(image), mask)
        self.scaler.scale(loss).backward()
        return loss


def should_compile(setting: str, hardware: Hardware) -> tuple[bool, str]:
    """Whether to ``torch.compile`` the training model, and why.

    ``on`` and ``off`` decide; ``auto`` compiles where it was measured to pay: on CUDA GPUs and
    on CPUs that compute in bf16 (1.4 times the images per second of eager on an Intel Xeon
    with AMX), not on CPUs computing in fp32, where the compiled model was measured slower
    than eager (docs/speed.md).
    """
    if setting != "auto":
        return setting == "on", f"--compile {setting}"
    if hardware.device.type == "cuda":
        return True, "--compile auto: a CUDA GPU"
    if hardware.device.type == "cpu" and hardware.amp_dtype == torch.bfloat16:
        return True, "--compile auto: bf16 on this CPU"
    precision = str(hardware.amp_dtype or "fp32").replace("torch.", "")
    return False, f"--compile auto: {precision} on {hardware.device.type}"
