"""U-Net model; trained checkpoints are written to ``models/checkpoints/``."""

from models.unet import UNet, UNetConfig, build_model, count_parameters

__all__ = ["UNet", "UNetConfig", "build_model", "count_parameters"]
