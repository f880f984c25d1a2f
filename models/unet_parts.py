"""Building blocks of the U-Net (Ronneberger et al., 2015), composed in ``models/unet.py``."""

from __future__ import annotations

import torch
from torch import nn

from common.errors import FlagError

NORMS = ("batch", "group")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """BatchNorm, or GroupNorm with groups of 4 channels (at most 32 groups), which does not
    depend on the batch size (for batches of a few images per GPU)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, max(1, channels // 4)), channels)
    raise FlagError(f"unknown normalisation {kind!r}; use one of {NORMS}")


class DoubleConv(nn.Sequential):
    """Two (conv3x3 -> normalisation -> ReLU) layers; padding keeps the spatial size.

    Input ``(N, in_channels, H, W)``, output ``(N, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            # No conv bias: the normalisation's shift makes it redundant.
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then :class:`DoubleConv`: ``(N, C_in, H, W) -> (N, C_out, H//2, W//2)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels, norm))


class Up(nn.Module):
    """Upsample by 2, concatenate the skip connection, then :class:`DoubleConv`.

    ``forward(x, skip)``: ``x`` is ``(N, in_channels, h, w)`` from the level below and ``skip`` is
    ``(N, in_channels // 2, 2h, 2w)`` from the encoder; the output is
    ``(N, out_channels, 2h, 2w)``.

    Args:
        bilinear: bilinear upsampling followed by a 1x1 conv instead of a transposed conv
            (fewer parameters, no checkerboard artefacts).
        norm: ``"batch"`` or ``"group"`` (see :func:`norm_layer`).
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = False,
                 norm: str = "batch") -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, kernel_size=1),
            )
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class OutConv(nn.Conv2d):
    """1x1 convolution to class logits: ``(N, C_in, H, W) -> (N, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)
