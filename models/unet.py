"""The plain U-Net of Ronneberger et al. (2015) with same-size padding and a normalisation layer
after each convolution (GroupNorm or BatchNorm), and optional deep supervision (auxiliary heads
on the decoder, used in training only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.unet_parts import DoubleConv, Down, OutConv, Up

# What configs stored before these fields existed were trained with.
LEGACY_CONFIG = {"norm": "batch", "deep_supervision": False}


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`UNet`; stored in every checkpoint. The defaults
    are ``train.py``'s.

    Attributes:
        in_channels: image channels (3 for RGB).
        out_channels: logit channels (1 for binary lesion segmentation).
        base_channels: width of the first level, doubled at each level down (64 in the paper,
            about 31.0 M parameters at depth 4).
        depth: number of 2x down-sampling steps.
        bilinear: bilinear upsampling + 1x1 conv instead of transposed convolutions.
        norm: ``"group"`` (GroupNorm: each image normalised by itself) or ``"batch"``
            (BatchNorm, the paper's).
        deep_supervision: 1x1 logit heads on the decoder's coarser levels, whose outputs a
            model in training mode returns too (for :class:`utils.SegmentationLoss`).
    """

    in_channels: int = 3
    out_channels: int = 1
    base_channels: int = 64
    depth: int = 4
    bilinear: bool = False
    norm: str = "group"
    deep_supervision: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> UNetConfig:
        """The config a checkpoint stored; fields it lacks take the values of
        :data:`LEGACY_CONFIG` (what models saved before they existed were), others the
        defaults.

        Raises:
            ValueError: a key that is no field.
        """
        unknown = set(config) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown U-Net config keys {sorted(unknown)}")
        return cls(**{**LEGACY_CONFIG, **config})


class UNet(nn.Module):
    """Encoder, bottleneck and decoder joined by skip connections.

    Input ``(N, in_channels, H, W)`` for any ``H, W >= 1``; output logits
    ``(N, out_channels, H, W)`` (apply a sigmoid for lesion probabilities). Sizes that are not
    multiples of ``2**depth`` are zero-padded (the mean colour, after normalisation) on all
    sides and the logits cropped back.

    With ``deep_supervision``, a model in training mode returns a tuple: those logits, then
    logits from ``depth - 1`` decoder levels at 1/2, 1/4, ... of the input size (rounded up);
    in eval mode it returns the logits alone, so that prediction is unchanged.
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
        self.inc = DoubleConv(config.in_channels, widths[0], config.norm)
        self.downs = nn.ModuleList(Down(w, w * 2, config.norm) for w in widths[:-1])
        self.ups = nn.ModuleList(
            Up(w * 2, w, bilinear=config.bilinear, norm=config.norm)
            for w in reversed(widths[:-1])
        )
        self.outc = OutConv(widths[0], config.out_channels)
        # Heads on the decoder outputs at 1/2, 1/4, ... of the input size, finest first.
        self.aux_heads = nn.ModuleList(
            OutConv(w, config.out_channels) for w in widths[1:-1]
        ) if config.deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # Padded and cropped whatever the size (by zero pixels when it is a multiple already):
        # no branch on the size, so that one exported graph serves every size.
        height, width = x.shape[-2:]
        multiple = 2**self.config.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        top, left = pad_h // 2, pad_w // 2
        outputs = self._forward_padded(F.pad(x, [left, pad_w - left, top, pad_h - top]))
        box = (top, left, height, width)
        if isinstance(outputs, torch.Tensor):
            return crop(outputs, *box, scale=1)
        return tuple(crop(out, *box, scale=2**level) for level, out in enumerate(outputs))

    def _forward_padded(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()  # the bottleneck
        with_aux = self.aux_heads is not None and self.training
        decoded = []  # kept only for the auxiliary heads, so inference frees them as it goes
        for up in self.ups:
            x = up(x, skips.pop())
            if with_aux:
                decoded.append(x)
        logits = self.outc(x)
        if not with_aux:
            return logits
        coarser = reversed(decoded[:-1])  # 1/2, 1/4, ... of the input size
        return (logits, *(head(f) for head, f in zip(self.aux_heads, coarser)))


def crop(x: torch.Tensor, top: int, left: int, height: int, width: int,
         scale: int) -> torch.Tensor:
    """The box ``(top, left, height, width)`` of full-resolution pixels, cut from ``x`` whose
    pixels are ``scale`` times coarser (rounded outwards)."""
    return x[..., top // scale:-(-(top + height) // scale),
             left // scale:-(-(left + width) // scale)]


def build_model(config: dict[str, Any] | UNetConfig) -> UNet:
    """Rebuild a :class:`UNet` from a config, or the config dict stored in a checkpoint (see
    :meth:`UNetConfig.from_dict`)."""
    return UNet(UNetConfig.from_dict(config) if isinstance(config, dict) else config)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
