"""The plain U-Net of Ronneberger et al. (2015), with BatchNorm and same-size padding."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.unet_parts import DoubleConv, Down, OutConv, Up


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`UNet`; stored in every checkpoint.

    Attributes:
        in_channels: image channels (3 for RGB).
        out_channels: logit channels (1 for binary lesion segmentation).
        base_channels: width of the first level, doubled at each level down (64 in the paper,
            about 31.0 M parameters at depth 4).
        depth: number of 2x down-sampling steps.
        bilinear: bilinear upsampling + 1x1 conv instead of transposed convolutions.
    """

    in_channels: int = 3
    out_channels: int = 1
    base_channels: int = 64
    depth: int = 4
    bilinear: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class UNet(nn.Module):
    """Encoder, bottleneck and decoder joined by skip connections.

    Input ``(N, in_channels, H, W)`` for any ``H, W >= 1``; output logits
    ``(N, out_channels, H, W)`` (apply a sigmoid for lesion probabilities). Sizes that are not
    multiples of ``2**depth`` are zero-padded (the mean colour, after normalisation) on all
    sides and the logits cropped back.
    """

    def __init__(self, config: UNetConfig | None = None, **overrides: int | bool) -> None:
        super().__init__()
        config = config or UNetConfig()
        if overrides:
            config = UNetConfig(**{**config.to_dict(), **overrides})
        if config.depth < 1 or config.base_channels < 1:
            raise ValueError(f"depth and base_channels must be positive, got {config}")
        self.config = config
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        self.inc = DoubleConv(config.in_channels, widths[0])
        self.downs = nn.ModuleList(Down(w, w * 2) for w in widths[:-1])
        self.ups = nn.ModuleList(
            Up(w * 2, w, bilinear=config.bilinear) for w in reversed(widths[:-1])
        )
        self.outc = OutConv(widths[0], config.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        multiple = 2**self.config.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2
            x = F.pad(x, [left, pad_w - left, top, pad_h - top])
            logits = self._forward_padded(x)
            return logits[..., top:top + height, left:left + width]
        return self._forward_padded(x)

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()  # the bottleneck
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


def build_model(config: dict | UNetConfig) -> UNet:
    """Rebuild a :class:`UNet` from the config dict stored in a checkpoint (or a config)."""
    if isinstance(config, dict):
        unknown = set(config) - set(UNetConfig.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}")
        config = UNetConfig(**config)
    return UNet(config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
