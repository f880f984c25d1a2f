"""The model that ships with the repository, and which model a script uses when given none.

A user's own ``models/checkpoints/best.pt`` (what ``python train.py`` writes) wins, unless it
was trained on the synthetic demo data; otherwise the bundled ISIC model in
``models/pretrained/`` is used, so that prediction works the moment the repository is cloned
and stays on a real model whatever demo was run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
BUNDLED_MODEL = PRETRAINED_DIR / "isic-unet-w16-128px.safetensors"
MODEL_CARD = PRETRAINED_DIR / "MODEL_CARD.md"
# Relative to the working directory, as train.py's --checkpoint-dir is.
USER_CHECKPOINT = Path("models/checkpoints/best.pt")


def model_path(name: str | Path) -> Path:
    """The file a model name on a command line means: ``bundled`` is the bundled model, any
    other name a path."""
    return BUNDLED_MODEL if str(name) == "bundled" else Path(name)


def default_model() -> Path:
    """The user's ``models/checkpoints/best.pt`` if it exists and was trained on real images,
    else the bundled model."""
    if USER_CHECKPOINT.is_file() and not trained_on_synthetic_data(USER_CHECKPOINT):
        return USER_CHECKPOINT
    return BUNDLED_MODEL


def trained_on_synthetic_data(checkpoint: Path) -> bool:
    """Whether a ``train.py`` checkpoint was trained on the synthetic demo set (its tensors are
    mapped, not read). A file that cannot be read counts as real: using it reports why."""
    from models.checkpoint import CheckpointError, load_checkpoint

    try:
        payload = load_checkpoint(checkpoint, mmap=True)
    except CheckpointError:
        return False
    return is_synthetic_run(payload)


def is_synthetic_run(info: dict[str, Any]) -> bool:
    """Whether a model's provenance (a checkpoint, or ``Predictor.info``) says it was trained on
    the synthetic demo set (checkpoints written before ``synthetic_data`` was recorded: by
    their ``--data synthetic``)."""
    if "synthetic_data" in info:
        return bool(info["synthetic_data"])
    return info.get("args", {}).get("data") == "synthetic"


def describe_model(path: str | Path, info: dict[str, Any] | None = None) -> str:
    """One line saying which model is used and, for one of the user's, what it was trained on
    (from its provenance ``info``, as ``Predictor.info`` holds it), for scripts to print."""
    path = Path(path)
    if path.resolve() == BUNDLED_MODEL.resolve():
        line = (f"model: the bundled ISIC model ({relative(path)}; see {relative(MODEL_CARD)}); "
                "pass --checkpoint to use another")
        if USER_CHECKPOINT.is_file() and trained_on_synthetic_data(USER_CHECKPOINT):
            line += (f" ({USER_CHECKPOINT} was trained on the synthetic demo set and is used "
                     "only when named)")
        return line
    return f"model: {path}{training_summary(info or {})}"


def training_summary(info: dict[str, Any]) -> str:
    """`` (trained on DATA, N px, E epochs, validation Dice D)`` from a model's provenance, or
    ``""`` when it records none."""
    args, metrics = info.get("args", {}), info.get("metrics", {})
    parts = []
    if "data" in args:
        kind = "synthetic demo images" if is_synthetic_run(info) else args["data"]
        parts.append(f"trained on {kind}")
    if "img_size" in args:
        parts.append(f"{args['img_size']} px")
    if "epoch" in info:
        parts.append(f"{info['epoch']} epochs")
    if "val_dice" in metrics:
        parts.append(f"validation Dice {metrics['val_dice']:.3f}")
    return f" ({', '.join(parts)})" if parts else ""


def relative(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
