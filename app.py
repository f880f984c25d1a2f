"""A web page that outlines skin lesions in dermoscopy photos, for people who do not use a terminal.

    python app.py                          # then open http://127.0.0.1:7860 in a web browser
    python app.py --checkpoint best.pt --port 8000

Drop one or several photos on the page: each comes back with the lesion outlined, its mask and
its probability map, with a table of predict.py's row for every photo. The masks download in
the ISIC format exactly as ``predict.py`` writes them (the same :class:`Predictor`, the same
file, the same bytes), the table as a CSV. The threshold, test-time augmentation and the
post-processing are set on the page for each request.

The page is also an API: ``gradio_client`` calls it with ``api_name="/segment"``.

Nothing goes to the internet: Gradio's analytics and version check are off, and no share link
is made unless ``--share``. Uploads and results live in one temporary folder, pruned an hour
after use and removed when the app stops. PyTorch and Gradio are imported after the flags are
read, so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import FlagError, UserError, run_script
from common.options import add_hardware_options
from data.layouts import IMAGE_EXTENSIONS
from predict import (
    OUTPUT_SUFFIXES,
    PREDICTIONS_CSV,
    add_checkpoint_option,
    failed_row,
    mask_png_options,
    prediction_row,
    write_image,
    write_predictions_csv,
)

if TYPE_CHECKING:
    import gradio as gr
    import numpy as np

    from models.predictor import Prediction, Predictor

STARTED = time.perf_counter()
TITLE = "Skin-lesion segmentation"
API_NAME = "segment"
DEFAULT_PORT = 7860
DEFAULT_HOST = "127.0.0.1"
# Shown images are scaled down to this longest side; the downloadable masks keep the photo's size.
DISPLAY_SIDE = 1024
THRESHOLD_RANGE = (0.05, 0.95)
# Every 15 minutes, files older than an hour (uploads, results) are deleted.
CACHE_PRUNING = (900, 3600)
MAX_UPLOAD = "200mb"
JPEG_QUALITY = 90
# Set before Gradio is imported: no analytics, no version check, no Hugging Face Hub calls, and
# no history of runs (photos of patients) kept in the browser.
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_MCP_SERVER": "False",
           "GRADIO_RUN_HISTORY": "False"}
NO_PHOTO = "Results appear here when you upload a photo."
# Markdown links to files beside the model card, which the page does not serve.
RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?!https?://)[^)]*\)")


class PortError(FlagError):
    """The port the page should listen on is taken or cannot be used."""


@dataclass
class PhotoResult:
    """What the page shows and offers for one photo: the row of ``predictions.csv`` and the
    files written for it (the outline, mask and probability views, and the ISIC mask)."""

    row: dict[str, Any]
    outline: Path
    mask_view: Path
    probability_view: Path
    mask: Path


@dataclass
class Settings:
    """One request's prediction settings, as the page's controls set them."""

    threshold: float
    tta: bool = False
    keep_largest: bool = False
    fill_holes: bool = False

    def describe(self) -> str:
        """The settings in words, for the summary under the results."""
        switches = (("test-time augmentation", self.tta), ("keep largest region",
                    self.keep_largest), ("fill holes", self.fill_holes))
        return ", ".join([f"threshold {self.threshold:.2f}"]
                         + [f"{name} {'on' if value else 'off'}" for name, value in switches])


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python app.py``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help="port of the page (default: %(default)s)")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on; 0.0.0.0 lets other computers of the network "
                   "open the page (default: %(default)s, this computer only)")
    add_checkpoint_option(p)
    p.add_argument("--share", action="store_true",
                   help="also make a public link through Gradio's share servers (the only "
                   "thing that contacts the internet; off by default)")
    add_hardware_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Serve the page; returns the exit status (1 with one ``error:`` line for a mistake)."""
    args = build_parser().parse_args(argv)
    return run_script(lambda: serve(args))


def serve(args: argparse.Namespace) -> int:
    """Load the model, then serve the page until Ctrl-C or SIGTERM; the temporary folder of
    uploads and results is removed on the way out.

    Raises:
        PortError: ``--port`` is out of range or taken.
        CheckpointError, FlagError: see :class:`models.predictor.Predictor`.
    """
    check_port(args.host, args.port)
    with tempfile.TemporaryDirectory(prefix="isic-app-") as workspace:
        use_workspace(Path(workspace))
        predictor = load_predictor(args)
        page = build_page(predictor)
        stop_on_sigterm()
        try:
            _, local_url, share_url = page.launch(
                server_name=args.host, server_port=args.port, share=args.share,
                prevent_thread_lock=True, quiet=True, show_error=True, max_file_size=MAX_UPLOAD)
            print(f"the page is at {local_url} (ready {time.perf_counter() - STARTED:.1f} s "
                  "after start); open it in a web browser, Ctrl-C stops it", flush=True)
            if share_url:
                print(f"public link: {share_url}", flush=True)
            page.block_thread()
        except KeyboardInterrupt:
            pass  # a stop that came before Gradio's own wait, which catches the later ones
        finally:
            page.close(verbose=False)
    return 0


def check_port(host: str, port: int) -> None:
    """Refuse a port that is out of range or already taken, before the model is loaded.

    Raises:
        PortError: with the fix.
    """
    import socket

    if not 1 <= port <= 65535:
        raise PortError(f"--port must be between 1 and 65535, got {port}")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            # As the server itself will: a port left in TIME_WAIT by a stopped app is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        raise PortError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another "
                        "--port, or stop the program that uses it") from None


def use_workspace(folder: Path) -> None:
    """Keep Gradio offline and its uploads and results in ``folder`` (set before Gradio is
    imported: some of its modules read these once)."""
    os.environ.update(OFFLINE)
    os.environ["GRADIO_TEMP_DIR"] = str(folder)


def stop_on_sigterm() -> None:
    """Make SIGTERM (what service managers send) stop the page as Ctrl-C does, so that the
    temporary folder is removed."""
    import signal

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The model, loaded once for all requests, and run once on a blank image so that the
    first photo does not wait for the kernels' set-up."""
    import numpy as np

    from models.bundled import describe_model
    from models.predictor import Predictor

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision)
    print(describe_model(predictor.checkpoint_path, predictor.info), flush=True)
    predictor.predict(np.zeros((predictor.img_size, predictor.img_size, 3), np.uint8))
    return predictor


# ---------------------------------------------------------------- the page


def build_page(predictor: Predictor) -> gr.Blocks:
    """The page: photos and settings on the left, results on the right, one endpoint
    (``/segment``) that every change of an input calls.

    Args:
        predictor: the loaded model; each request uses it through
            :meth:`Predictor.with_settings`, never changing it.
    """
    import gradio as gr

    low, high = THRESHOLD_RANGE
    with gr.Blocks(title=TITLE, delete_cache=CACHE_PRUNING, analytics_enabled=False) as page:
        gr.Markdown(introduction(predictor.checkpoint_path))
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
        card = model_card(predictor.checkpoint_path)
        if card:
            with gr.Accordion("Model card", open=False):
                gr.Markdown(card)

        def segment(photos: list[str] | None, threshold: float, tta: bool, keep_largest: bool,
                    fill_holes: bool) -> tuple:
            """Outline the lesion in each photo."""
            return answer(predictor, photos or [], Settings(threshold, tta, keep_largest,
                                                            fill_holes))

        gr.on([photos.change, threshold.change, tta.change, keep_largest.change,
               fill_holes.change], segment,
              inputs=[photos, threshold, tta, keep_largest, fill_holes],
              outputs=[outlines, mask_views, probability_views, summary, masks, table],
              api_name=API_NAME, trigger_mode="always_last")
    return page


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
temporary folder that is emptied an hour after use and deleted when the page stops.
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


# ---------------------------------------------------------------- one request


def answer(predictor: Predictor, photos: Sequence[str], settings: Settings) -> tuple:
    """Segment the uploaded photos and fill the page's outputs.

    Returns:
        The outline, mask and probability galleries (``(file, caption)`` pairs), the summary
        (Markdown), the ISIC mask files and the CSV file (``None`` without results).
    """
    if not photos:
        return [], [], [], NO_PHOTO, [], None
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="result-", dir=os.environ.get("GRADIO_TEMP_DIR")))
    results, failures = segment_photos(
        predictor.with_settings(threshold=settings.threshold, tta=settings.tta,
                                keep_largest=settings.keep_largest,
                                fill_holes=settings.fill_holes),
        [Path(photo) for photo in photos], folder)
    table = folder / PREDICTIONS_CSV
    write_predictions_csv(rows_in_order(results, failures, photos), table)
    summary = summary_markdown(results, failures, settings, time.perf_counter() - started)
    names = [result.row["image"] for result in results]
    return ([(str(result.outline), name) for result, name in zip(results, names)],
            [(str(result.mask_view), f"{name}: mask") for result, name in zip(results, names)],
            [(str(result.probability_view), f"{name}: probability")
             for result, name in zip(results, names)],
            summary, [str(result.mask) for result in results], str(table))


@dataclass
class Failure:
    """A photo that could not be segmented: its place among the uploads, its row of
    ``predictions.csv`` and the message the page shows."""

    index: int
    row: dict[str, Any]
    message: str


def segment_photos(predictor: Predictor, photos: Sequence[Path], folder: Path
                   ) -> tuple[list[PhotoResult], list[Failure]]:
    """Segment each photo into its own subfolder of ``folder`` (two uploads may share a name).

    A photo that cannot be read fails alone: it is named in a warning on the page, keeps its
    row (flagged, with the reason) in the table, and the others are still answered.

    Returns:
        The results of the photos that were read, and the failures.
    """
    import gradio as gr

    from models.predictor import IMAGE_ERRORS

    results: list[PhotoResult] = []
    failures: list[Failure] = []
    for index, photo in enumerate(photos):
        try:
            results.append(segment_photo(predictor, photo, folder / str(index)))
        except (*IMAGE_ERRORS, UserError, MemoryError) as exc:
            message = failure_message(photo, exc)
            failures.append(Failure(index, failed_row(photo.name, message), message))
            gr.Warning(message)
    return results, failures


def rows_in_order(results: Sequence[PhotoResult], failures: Sequence[Failure],
                  photos: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of all photos, failed ones included, in the order they were uploaded."""
    rows = iter(result.row for result in results)
    failed = {failure.index: failure.row for failure in failures}
    return [failed[index] if index in failed else next(rows) for index in range(len(photos))]


def failure_message(photo: Path, exc: BaseException) -> str:
    """The error of one photo in the words of the page: named by its file name, not by the
    temporary path it was uploaded to."""
    if isinstance(exc, MemoryError):
        return f"{photo.name} is too large for this computer's memory; scale it down"
    return f"{photo.name}: " + str(exc).replace(f"{photo}: ", "").replace(str(photo), "the file")


def segment_photo(predictor: Predictor, photo: Path, folder: Path) -> PhotoResult:
    """Predict one photo as predict.py does and write what the page shows and offers.

    Args:
        predictor: with this request's settings.
        photo: the uploaded file, its original bytes.
        folder: where this photo's files go (created).
    """
    prediction = predictor.predict_file(photo)
    folder.mkdir(parents=True)
    mask = folder / f"{photo.stem}{OUTPUT_SUFFIXES[0]}"
    write_mask(mask, prediction.mask)
    outline, mask_view, probability_view = display_views(photo, prediction)
    stem = folder / photo.stem
    views = (Path(f"{stem}_outline.jpg"), Path(f"{stem}_mask.png"),
             Path(f"{stem}_probability.jpg"))
    for path, image in zip(views, (outline, mask_view, probability_view)):
        write_view(path, image)
    return PhotoResult(prediction_row(photo.name, prediction), *views, mask)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """The ISIC mask file, byte for byte what predict.py writes: one channel, 0 and 255, the
    photo's size, predict.py's PNG settings."""
    import numpy as np

    write_image(path, mask.view(np.uint8) * np.uint8(255), mask_png_options())


def write_view(path: Path, image: np.ndarray) -> None:
    """A shown image (BGR or gray uint8); JPEG at quality 90 or PNG by the extension."""
    import cv2

    params = (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY) if path.suffix == ".jpg" else ()
    write_image(path, image, params)


def display_size(height: int, width: int) -> tuple[int, int]:
    """``(width, height)`` of a shown image: the photo scaled down to :data:`DISPLAY_SIDE`
    on its longest side, never up."""
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_views(photo: Path, prediction: Prediction
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The photo with the lesion outlined (its largest diameter drawn, its quality and review
    flag written on it), the mask, and the probabilities in a colour map, BGR or gray uint8 at
    :func:`display_size`.

    The photo is decoded at the JPEG decoder's reduced scale where that still leaves
    :data:`DISPLAY_SIDE` pixels: a 10000x7000 photo is not decoded in full a second time.
    """
    import cv2
    import numpy as np

    from data.imageio import read_image_reduced
    from models.predictor import draw_prediction

    size = display_size(*prediction.mask.shape)
    image, _ = read_image_reduced(photo, DISPLAY_SIDE // 2)
    image = cv2.cvtColor(cv2.resize(image, size, interpolation=cv2.INTER_AREA),
                         cv2.COLOR_RGB2BGR)
    # Area averaging of 0/1 rounds to the majority of the pixels each shown pixel covers.
    mask = cv2.resize(prediction.mask.view(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
    draw_prediction(image, prediction)
    probabilities = cv2.resize(prediction.probabilities, size, interpolation=cv2.INTER_AREA)
    colours = cv2.applyColorMap(cv2.convertScaleAbs(probabilities, alpha=255),
                                cv2.COLORMAP_VIRIDIS)
    return image, mask.view(np.uint8) * np.uint8(255), colours


# ---------------------------------------------------------------- the table


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in the order they first appear: new columns of
    ``prediction_row`` show without changes here."""
    return list(dict.fromkeys(key for row in rows for key in row))


def summary_markdown(results: Sequence[PhotoResult], failures: Sequence[Failure],
                     settings: Settings, seconds: float) -> str:
    """The text panel: a table of the rows, the photos that failed, the settings and the time
    the server took."""
    parts = []
    if results:
        parts.append(markdown_table([result.row for result in results]))
    parts.extend(f"**Not segmented:** {escape(failure.message)}" for failure in failures)
    count = len(results)
    parts.append(f"{count} photo{'s' if count != 1 else ''} segmented in {seconds:.2f} s; "
                 f"{settings.describe()}.")
    return "\n\n".join(parts)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table with a column per photo (headed by its file name) and a line per
    field, underscores read as spaces: a photo's many fields read down, as a card does."""
    fields = [key for key in columns(rows) if key != "image"]
    lines = ["| | " + " | ".join(escape(readable(row.get("image"))) for row in rows) + " |",
             "|" + "|".join(" --- " for _ in range(len(rows) + 1)) + "|"]
    lines += ["| " + " | ".join([field.replace("_", " ")]
                                + [escape(readable(row.get(field))) for row in rows]) + " |"
              for field in fields]
    return "\n".join(lines)


def readable(value: Any) -> str:
    """A value of a row as the table shows it: floats to 4 significant digits, yes/no for
    booleans, nothing for ``None``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def escape(text: str) -> str:
    """``text`` shown literally in a Markdown table (file names may hold ``*`` or ``|``); an
    underscore inside a word is literal already."""
    return re.sub(r"([\\`*\[\]<>|])", r"\\\1", text)


if __name__ == "__main__":
    sys.exit(main())
