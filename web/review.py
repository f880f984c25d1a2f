"""The page's review mode: predict a set of photos, list them with the flagged and the
lowest-quality first, correct a mask with a brush and an eraser, and save the photo and its
corrected mask into a corrections folder that ``train.py`` reads as it is.

The editor shows the photo scaled down (:data:`web.views.DISPLAY_SIDE`) with the predicted
mask as a red layer (or the correction saved for it, to go on from there). On saving, the pixels
whose shown value was changed (and their neighbours) take the edit, scaled up to the photo's
size; everywhere else the full-size mask the editor started from is kept, so that a photo saved
without changes keeps its predicted mask exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from common.errors import UserError
from data.corrections import count_corrections, is_saved, mask_path, save_correction
from data.imageio import read_mask, write_mask
from data.layouts import IMAGE_EXTENSIONS, find_images
from web.segment import failure_message
from web.views import display_mask, display_photo, display_size

if TYPE_CHECKING:
    from inference.predictor import Predictor

# The predicted mask's layer: red at 43 % opacity, the brush the same.
MASK_RGBA = (255, 40, 40, 110)
BRUSH_COLOUR = ("#ff2828", 0.45)
# A pixel counts as lesion from half the layer's opacity: the soft rims of strokes do not.
PAINTED_ALPHA = MASK_RGBA[3] // 2
NO_LIST = "Predict a set of photos to list them here, the flagged and lowest-quality first."


class ReviewError(UserError):
    """What the review mode cannot do with the current input; shown as a warning."""


@dataclass(frozen=True)
class ReviewItem:
    """One predicted photo: its file, the review flag's reason (``""`` when not flagged), the
    quality estimate and the full-size predicted mask written in the page's folder."""

    photo: Path
    reason: str
    quality: float | None
    mask: Path

    def label(self, saved: bool) -> str:
        """The photo's entry in the list."""
        quality = "no quality estimate" if self.quality is None else f"quality {self.quality:.2f}"
        flag = f"review: {self.reason}" if self.reason else "no flag"
        return f"{self.photo.name} ({flag}, {quality}){' - saved' if saved else ''}"


def review_order(items: list[ReviewItem]) -> list[ReviewItem]:
    """Flagged photos first, then by quality from the lowest (unknown quality last), then name."""
    return sorted(items, key=lambda item: (not item.reason, item.quality is None,
                                           item.quality or 0.0, item.photo.name))


def photos_to_review(uploads: list[str] | None, folder: str, allow_folders: bool) -> list[Path]:
    """The uploaded photos and those of ``folder`` (a path on the page's computer).

    Raises:
        ReviewError: no photo given, a folder that does not exist, or a folder asked for while
            the page serves other computers (it would let them read this one's files).
    """
    photos = [Path(upload) for upload in uploads or []]
    if folder.strip():
        if not allow_folders:
            raise ReviewError("reading a folder works only when the page serves this computer "
                              "alone (--host 127.0.0.1); upload the photos instead")
        path = Path(folder.strip()).expanduser()
        if not path.is_dir():
            raise ReviewError(f"folder {path} does not exist on this computer; give the full "
                              "path of a folder of photos")
        photos += find_images(path)
    if not photos:
        raise ReviewError("upload photos or give a folder of photos first")
    return photos


def predict_for_review(predictor: Predictor, photos: list[Path], workspace: Path
                       ) -> tuple[list[ReviewItem], list[str]]:
    """Predict each photo and keep its full-size mask in ``workspace`` (created).

    Returns:
        The items in :func:`review_order`, and a message for each photo that could not be read.
    """
    from inference.predictor import IMAGE_ERRORS

    workspace.mkdir(parents=True, exist_ok=True)
    items, failures = [], []
    for index, photo in enumerate(photos):
        try:
            prediction = predictor.predict_file(photo)
        except (*IMAGE_ERRORS, UserError, MemoryError) as exc:
            failures.append(failure_message(photo, exc))
            continue
        mask = workspace / f"{index}_predicted.png"
        write_mask(mask, prediction.mask)
        items.append(ReviewItem(photo, prediction.reason, prediction.quality, mask))
    return review_order(items), failures


def starting_mask(item: ReviewItem, corrections: Path) -> np.ndarray:
    """The mask the editor starts from, bool at the photo's size: the correction saved for
    this photo, else the predicted one."""
    predicted = read_mask(item.mask) > 0
    saved = mask_path(corrections, item.photo.stem)
    if saved.is_file():
        mask = read_mask(saved) > 0
        if mask.shape == predicted.shape:
            return mask
    return predicted


def editor_value(item: ReviewItem, corrections: Path) -> dict[str, Any]:
    """The editor's content for ``item``: the photo scaled down as the background and
    :func:`starting_mask` as the one layer (RGBA, transparent outside the lesion)."""
    start = starting_mask(item, corrections)
    size = display_size(*start.shape)
    layer = np.zeros((size[1], size[0], 4), np.uint8)
    layer[display_mask(start, size)] = MASK_RGBA
    return {"background": display_photo(item.photo, size), "layers": [layer], "composite": None}


def edited_mask(value: dict[str, Any] | None, shape: tuple[int, int]) -> np.ndarray:
    """The mask painted in the editor, bool at the shown ``shape`` ``(height, width)``.

    Raises:
        ReviewError: the editor holds no photo (it was cleared).
    """
    if not value or value.get("background") is None:
        raise ReviewError("the editor holds no photo; choose the photo in the list again")
    layers = [layer for layer in value.get("layers") or [] if layer is not None]
    painted = np.zeros(shape, bool)
    for layer in layers:  # RGBA: the editor's image mode
        alpha = layer[..., 3]
        if alpha.shape != shape:
            alpha = cv2.resize(alpha, shape[::-1], interpolation=cv2.INTER_NEAREST)
        painted |= alpha >= PAINTED_ALPHA
    return painted


def corrected_mask(start: np.ndarray, edited: np.ndarray) -> np.ndarray:
    """The full-size mask: ``edited`` (bool, shown size) scaled up where the shown mask was
    changed and one shown pixel around (so that a stroke over the outline leaves no seam),
    ``start`` (bool ``(H, W)``, the mask the editor started from) everywhere else."""
    height, width = start.shape
    shown = display_mask(start, (edited.shape[1], edited.shape[0]))
    changed = cv2.dilate((edited != shown).view(np.uint8), np.ones((3, 3), np.uint8))
    changed = cv2.resize(changed, (width, height), interpolation=cv2.INTER_NEAREST) > 0
    drawn = cv2.resize(edited.view(np.uint8) * np.uint8(255), (width, height),
                       interpolation=cv2.INTER_LINEAR) > 127
    return np.where(changed, drawn, start)


def save_edit(item: ReviewItem, value: dict[str, Any] | None, corrections: Path,
              replace: bool) -> str:
    """Save ``item``'s photo and the mask edited in ``value`` into ``corrections``.

    Returns:
        What was saved and how many corrections the folder holds, in Markdown.

    Raises:
        ReviewError: see :func:`edited_mask`.
        CorrectionExistsError: see :func:`data.corrections.save_correction`.
    """
    start = starting_mask(item, corrections)
    width, height = display_size(*start.shape)
    mask = corrected_mask(start, edited_mask(value, (height, width)))
    written = save_correction(corrections, item.photo, mask, replace)
    count = count_corrections(corrections)
    return (f"Saved `{item.photo.name}` and `{written.name}` ({start.shape[1]}x"
            f"{start.shape[0]}) in `{corrections}`: {count} correction"
            f"{'s' if count != 1 else ''} saved. Train on them with `python train.py --init "
            f"bundled --data {corrections} --replay <your ISIC folder>`")


def choices(items: list[ReviewItem], corrections: Path) -> list[tuple[str, str]]:
    """The list's entries: ``(label, index)`` in review order, saved ones marked."""
    return [(item.label(is_saved(corrections, item.photo.stem)), str(index))
            for index, item in enumerate(items)]


def build_review_tab(predictor: Predictor, corrections: Path, allow_folders: bool) -> None:
    """The review mode's controls and events, inside the page's ``gr.Blocks``.

    Args:
        predictor: the page's model.
        corrections: the folder corrections are saved into.
        allow_folders: whether a folder of this computer may be read (the page serves this
            computer alone).
    """
    import gradio as gr

    gr.Markdown(f"""Predict a set of photos, then correct the masks that need it: the list puts
the photos flagged for review first, then the lowest quality estimates. Paint the lesion with the
brush, remove what is not lesion with the eraser, and save: the photo and its mask (full size,
values 0 and 255, `<name>_segmentation.png`) go into `{corrections}` (`images/` + `masks/`),
which trains as it is: `python train.py --init bundled --data {corrections} --replay
<your ISIC folder>`.""")
    items = gr.State([])
    with gr.Row():
        with gr.Column(scale=2):
            uploads = gr.File(label="Photos to review", file_count="multiple",
                              file_types=list(IMAGE_EXTENSIONS), type="filepath",
                              elem_id="review-photos")
            folder = gr.Textbox(label="or a folder of photos on this computer",
                                placeholder="/path/to/photos", elem_id="review-folder",
                                interactive=allow_folders)
            start = gr.Button("Predict and list", variant="primary", elem_id="review-start")
            listed = gr.Dropdown(label="Photos, flagged and lowest quality first", choices=[],
                                 elem_id="review-list", info=NO_LIST)
            replace = gr.Checkbox(label="Replace a saved correction", elem_id="review-replace")
            save = gr.Button("Save correction", elem_id="review-save")
            status = gr.Markdown(f"{count_corrections(corrections)} corrections saved in "
                                 f"`{corrections}`.", elem_id="review-status")
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                label="Mask (red): brush adds, eraser removes", elem_id="review-editor",
                sources=(), transforms=(), layers=False, image_mode="RGBA", format="png",
                type="numpy", brush=gr.Brush(colors=[BRUSH_COLOUR], color_mode="fixed"),
                eraser=gr.Eraser(), height=720, buttons=["fullscreen"])

    def start_review(upload_list: list[str] | None, folder_text: str) -> tuple:
        try:
            photos = photos_to_review(upload_list, folder_text, allow_folders)
        except ReviewError as exc:
            gr.Warning(str(exc))
            return gr.update(), gr.update()
        found, failures = predict_for_review(predictor, photos, workspace_folder())
        for message in failures:
            gr.Warning(message)
        flagged = sum(bool(item.reason) for item in found)
        return found, gr.update(choices=choices(found, corrections),
                                value="0" if found else None,
                                info=f"{len(found)} photos, {flagged} flagged for review")

    def show(found: list[ReviewItem], index: str | None) -> Any:
        return editor_value(found[int(index)], corrections) if index else None

    def save_correction_of(found: list[ReviewItem], index: str | None,
                           value: dict[str, Any] | None, replace_saved: bool) -> tuple:
        try:
            if not index:
                raise ReviewError("choose a photo in the list first")
            message = save_edit(found[int(index)], value, corrections, replace_saved)
        except UserError as exc:
            gr.Warning(str(exc))
            return f"**Not saved:** {exc}", gr.update(), gr.update()
        return message, gr.update(choices=choices(found, corrections), value=index), False

    start.click(start_review, [uploads, folder], [items, listed],
                api_visibility="private")
    listed.change(show, [items, listed], editor, api_visibility="private")
    save.click(save_correction_of, [items, listed, editor, replace], [status, listed, replace],
               api_visibility="private")


def workspace_folder() -> Path:
    """A new folder for one review's predicted masks, in the page's temporary folder."""
    import os
    import tempfile

    return Path(tempfile.mkdtemp(prefix="review-", dir=os.environ.get("GRADIO_TEMP_DIR")))
