"""torch.hub entry points of this repository.

    import torch
    model = torch.hub.load("<github user>/<this repository>", "unet_isic", trust_repo=True)
    predictor = torch.hub.load("<github user>/<this repository>", "isic_predictor", tta=True)
    model = torch.hub.load("path/to/a/clone", "unet_isic", source="local")

``unet`` is an untrained U-Net, ``unet_isic`` the bundled ISIC weights (an ``nn.Module`` in eval
mode), ``isic_predictor`` a ready :class:`inference.predictor.Predictor` on them. Nothing is
downloaded but the repository itself: the weights ship inside it (``models/pretrained/``).
"""

from __future__ import annotations

from typing import Any

dependencies = ["torch", "numpy", "cv2", "safetensors", "PIL"]


def unet(**config: Any):
    """An untrained U-Net; keyword arguments as :class:`models.unet.UNetConfig` (defaults:
    ``train.py``'s, the paper's width 64 and depth 4, GroupNorm, deep-supervision heads).

    Input ``(N, 3, H, W)`` of any size, output logits ``(N, 1, H, W)``.
    """
    from models.unet import UNet, UNetConfig

    return UNet(UNetConfig(**config))


def unet_isic():
    """The bundled U-Net trained on ISIC 2017 dermoscopy images, in eval mode, float32.

    Input: RGB images resized (area averaging) to the model's square size, 128x128 for the
    bundled model (``unet_isic.img_size``), scaled to [0, 1] and normalised per channel with the
    ImageNet mean (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225), as
    ``(N, 3, 128, 128)`` float32. Output: lesion logits ``(N, 1, 128, 128)``; a pixel is lesion
    where the sigmoid exceeds 0.5 (``unet_isic.threshold``). ``isic_predictor`` does all of this
    for images of any size, and resizes the masks back. See ``models/pretrained/MODEL_CARD.md``.
    """
    from models.bundled import BUNDLED_MODEL
    from models.checkpoint import load_model_file

    bundle = load_model_file(BUNDLED_MODEL)
    model = bundle.build()
    model.img_size, model.mean, model.std = bundle.img_size, bundle.mean, bundle.std
    model.threshold = bundle.threshold
    return model


def isic_predictor(**options: Any):
    """A :class:`inference.predictor.Predictor` on the bundled ISIC weights; keyword arguments as
    the Predictor's (``tta=True``, ``device="cuda"``, ``threshold=0.4``, ...).

    ``predictor.predict(rgb_uint8_image)`` or ``predictor.predict_file("lesion.jpg")`` give a
    :class:`inference.predictor.Prediction` at the image's size: ``.mask``, ``.probabilities``
    (calibrated), ``.quality`` (the estimated Dice), ``.review`` and ``.reason`` (the review
    flag), ``.measurements`` (the lesion's size, diameters, asymmetry, border, colours).
    """
    from inference.predictor import Predictor
    from models.bundled import BUNDLED_MODEL

    return Predictor(BUNDLED_MODEL, **options)
