"""The model that ships with the repository, and which model a script uses when given none.

A user's own ``models/checkpoints/best.pt`` (what ``python train.py`` writes) wins; without
one, the bundled ISIC model in ``models/pretrained/`` is used, so that prediction works the
moment the repository is cloned.
"""

from __future__ import annotations

from pathlib import Path

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
BUNDLED_MODEL = PRETRAINED_DIR / "isic-unet-w16-128px.safetensors"
MODEL_CARD = PRETRAINED_DIR / "MODEL_CARD.md"
# Relative to the working directory, as train.py's --checkpoint-dir is.
USER_CHECKPOINT = Path("models/checkpoints/best.pt")


def default_model() -> Path:
    """The user's ``models/checkpoints/best.pt`` if it exists, else the bundled model."""
    return USER_CHECKPOINT if USER_CHECKPOINT.is_file() else BUNDLED_MODEL


def describe_model(path: str | Path) -> str:
    """One line saying which model is used, for scripts to print."""
    path = Path(path)
    if path.resolve() == BUNDLED_MODEL.resolve():
        return (f"model: the bundled ISIC model ({relative(path)}; see {relative(MODEL_CARD)}); "
                "pass --checkpoint to use another")
    return f"model: {path}"


def relative(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
