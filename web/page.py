"""The page's layout and words: a tab that segments photos, a tab that reviews and corrects
masks, the introduction and the bundled model's card."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from data.layouts import IMAGE_EXTENSIONS
from web.review import build_review_tab
from web.segment import NO_PHOTO, answer

if TYPE_CHECKING:
    import gradio as gr

    from inference.predictor import Predictor

TITLE = "Skin-lesion segmentation"
API_NAME = "segment"
THRESHOLD_RANGE = (0.05, 0.95)
# Every 15 minutes, files older than an hour (uploads, results) are deleted.
CACHE_PRUNING = (900, 3600)
# Markdown links to files beside the model card, which the page does not serve.
RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://)[^)]*\)")


@dataclass(frozen=True)
class ReviewSettings:
    """The review mode's place on this computer: the corrections folder, and whether a folder
    of photos may be read (only while the page serves this computer alone)."""

    corrections: Path
    allow_folders: bool


def build_page(predictor: Predictor, review: ReviewSettings) -> gr.Blocks:
    """The page: a tab that segments photos (photos and settings on the left, results on the
    right, one endpoint, ``/segment``, that every change of an input calls) and a tab that
    reviews and corrects masks (:mod:`web.review`).

    Args:
        predictor: the loaded model; each request uses it through
            :meth:`Predictor.with_settings`, never changing it.
        review: where corrections go and whether a folder of this computer may be read.
    """
    import gradio as gr

    with gr.Blocks(title=TITLE, delete_cache=CACHE_PRUNING, analytics_enabled=False) as page:
        gr.Markdown(introduction(predictor.checkpoint_path))
        with gr.Tab("Segment", elem_id="segment-tab"):
            build_segment_tab(predictor)
        with gr.Tab("Review and correct", elem_id="review-tab"):
            build_review_tab(predictor, review.corrections, review.allow_folders)
        card = model_card(predictor.checkpoint_path)
        if card:
            with gr.Accordion("Model card", open=False):
                gr.Markdown(card)
    return page


def build_segment_tab(predictor: Predictor) -> None:
    """The segmenting tab's controls and its ``/segment`` endpoint, inside the page's
    ``gr.Blocks``."""
    import gradio as gr

    low, high = THRESHOLD_RANGE
    with gr.Row():
        with gr.Column(scale=2):
            photos = gr.File(label="Dermoscopy photos (JPEG, PNG)", file_count="multiple",
                             file_types=list(IMAGE_EXTENSIONS), type="filepath",
                             elem_id="photos")
            threshold = gr.Slider(low, high, step=0.01, elem_id="threshold",
                                  value=min(max(predictor.threshold, low), high),
                                  label="Threshold",
                                  info="lesion where the model's probability is above it")
            tta = gr.Checkbox(label="Test-time augmentation",
                              info="average over flips: smoother, 4 times slower")
            keep_largest = gr.Checkbox(label="Keep the largest region only")
            fill_holes = gr.Checkbox(label="Fill holes in the lesion")
            masks = gr.File(label="Masks (ISIC format)", file_count="multiple",
                            interactive=False, elem_id="masks")
            table = gr.File(label="Table (CSV)", interactive=False, elem_id="table")
        with gr.Column(scale=3):
            outlines = gr.Gallery(label="Outline", selected_index=0, height=620,
                                  object_fit="contain", elem_id="outlines")
            with gr.Row():
                mask_views = gr.Gallery(label="Mask", selected_index=0, height=320,
                                        object_fit="contain", elem_id="mask-views")
                probability_views = gr.Gallery(label="Probability", selected_index=0,
                                               height=320, object_fit="contain",
                                               elem_id="probability-views")
            summary = gr.Markdown(NO_PHOTO, label="Summary", elem_id="summary")

    def segment(photos: list[str] | None, threshold: float, tta: bool, keep_largest: bool,
                fill_holes: bool) -> tuple:
        """Outline the lesion in each photo."""
        return answer(predictor.with_settings(threshold=threshold, tta=tta,
                                              keep_largest=keep_largest,
                                              fill_holes=fill_holes), photos or [])

    gr.on([photos.change, threshold.change, tta.change, keep_largest.change,
           fill_holes.change], segment,
          inputs=[photos, threshold, tta, keep_largest, fill_holes],
          outputs=[outlines, mask_views, probability_views, summary, masks, table],
          api_name=API_NAME, trigger_mode="always_last")


def introduction(checkpoint: Path) -> str:
    """The page's opening words: what it does, what it is not, which model it uses."""
    return f"""# {TITLE}

Drop one or several **dermoscopy** photos below. Each comes back with the lesion outlined and
its largest diameter drawn, its mask and the model's probability map (dark blue 0, yellow 1),
an estimate of the outline's quality (the Dice it would score against an expert's, 0 to 1),
a review flag with its reason (low quality, not dermoscopy, no lesion found, lesion larger than
the frame) and the lesion's measurements (size, diameters, asymmetry, border, colours).
Download the masks in the ISIC format (`<name>_segmentation.png`: one channel, values 0 and
255, the photo's size) and a table (CSV) with one row per photo, as `predict.py` writes them.

**Not a diagnostic device.** It outlines a lesion; it does not tell whether it is benign or
malignant, and no medical decision should rest on it. For dermoscopy images only: other photos
get meaningless outlines (most are flagged "not dermoscopy").

{model_words(checkpoint)} Uploads and results stay on the computer that runs this page, in a
temporary folder that is emptied an hour after use and deleted when the page stops. The tab
**Review and correct** lists photos with the flagged first and saves the masks you correct, to
fine-tune the model on them.
"""


def model_words(checkpoint: Path) -> str:
    """One sentence naming the model, as :func:`models.bundled.describe_model` does for the
    command line."""
    from models.bundled import BUNDLED_MODEL

    if checkpoint.resolve() == BUNDLED_MODEL.resolve():
        return (f"Model: the bundled ISIC model (`{BUNDLED_MODEL.name}`), a U-Net trained on "
                "ISIC 2017 images; see its model card at the bottom of the page.")
    return f"Model: `{checkpoint}`."


def model_card(checkpoint: Path) -> str | None:
    """The bundled model's card, its links to neighbouring files reduced to their words;
    ``None`` for another model."""
    from models.bundled import BUNDLED_MODEL, MODEL_CARD

    if checkpoint.resolve() != BUNDLED_MODEL.resolve() or not MODEL_CARD.is_file():
        return None
    return RELATIVE_LINK.sub(r"\1", MODEL_CARD.read_text(encoding="utf-8"))
