"""A browser opens app.py's page, uploads a photo and sees the lesion outlined and the table:
Debian's Chromium, driven by Playwright, headless, offline, with a fresh profile. Skipped
where no Chromium is installed (``apt-get install chromium``; no browser is ever downloaded).

Run as a script, it takes the README's screenshot, with the bundled model and a real
dermoscopy photo of the shared ISIC sample:

    python tests/test_app_browser.py --screenshot docs/app-screenshot.png
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Headless, no GPU, and none of Chromium's own calls home (updates, sync, QUIC probes).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
RESULT_TIMEOUT_MS = 60_000
VIEWPORT = {"width": 1280, "height": 1000}
SCREENSHOT_PHOTO = "ISIC_0000035.jpg"
SCREENSHOT_LIMIT = 300_000  # bytes


def find_chromium() -> str | None:
    """The installed Chromium, or ``None``."""
    found = [path for path in CHROMIUM_PATHS if Path(path).is_file()]
    return found[0] if found else shutil.which("chromium")


# Skipped before the fixtures are built.
pytestmark = [
    pytest.mark.skipif(find_chromium() is None,
                       reason="no Chromium installed (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="Playwright not installed (pip install playwright)")]


@contextmanager
def chromium_page(profile: Path) -> Iterator[Any]:
    """A Playwright page in the installed Chromium, with the profile folder ``profile``
    (fresh: nothing of a previous run)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=find_chromium(), headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def upload_and_wait(page: Any, url: str, photo: Path) -> list[str]:
    """Open the page, upload ``photo`` and wait until its outline and table are shown.

    Returns:
        The URLs of every request the page made.
    """
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url)
    page.locator("#photos input[type=file]").set_input_files(str(photo))
    outline = page.locator("#outlines img").first
    outline.wait_for(state="visible", timeout=RESULT_TIMEOUT_MS)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                           arg=outline.element_handle(), timeout=RESULT_TIMEOUT_MS)
    page.locator("#summary", has_text=photo.name).wait_for(timeout=RESULT_TIMEOUT_MS)
    return requests


def test_a_browser_uploads_a_photo_and_sees_the_outline(tiny_checkpoint_dir, synthetic_root,
                                                        tmp_path):
    from tests.test_app import running_app

    photo = sorted(synthetic_root.rglob("*.jpg"))[0]
    checkpoint = tiny_checkpoint_dir / "best.pt"
    with running_app("--checkpoint", str(checkpoint), "--device", "cpu",
                     workdir=tmp_path / "app") as server, \
            chromium_page(tmp_path / "profile") as page:
        requests = upload_and_wait(page, server.url, photo)
        summary = page.locator("#summary").inner_text()
        assert "lesion share" in summary and "1 photo segmented" in summary
        for field in ("quality", "review", "reason", "max diameter px", "colours"):
            assert field in summary, field
        for view, caption in (("#mask-views", "mask"), ("#probability-views", "probability")):
            assert page.locator(f"{view} img").first.is_visible()
            assert f"{photo.name}: {caption}" in page.locator(view).inner_text()
        assert page.get_by_text("Not a diagnostic device").is_visible()
        assert f"{photo.stem}_segmentation" in page.locator("#masks").inner_text()
    # The page needs nothing from the internet: fonts, scripts and styles come from the app.
    hosts = {urlparse(url).hostname for url in requests if url.startswith("http")}
    assert hosts == {"127.0.0.1"}, sorted(hosts)


# --------------------------------------------------------------------------- the review mode


def zoomed_photo_box(page: Any, shown: tuple[int, int]) -> tuple[float, float, float]:
    """Where the editor draws the shown photo of ``shown`` ``(width, height)`` pixels: the
    screen position of its top-left corner and the zoom (screen pixels per photo pixel). The
    editor centres the photo in its canvas and writes its zoom, as "135%", in its top bar."""
    canvas = page.locator("#review-editor canvas").first.bounding_box()
    zoom = float(page.locator("#review-editor").get_by_text("%").first.inner_text()
                 .strip().rstrip("%")) / 100
    left = canvas["x"] + canvas["width"] / 2 - shown[0] * zoom / 2
    top = canvas["y"] + canvas["height"] / 2 - shown[1] * zoom / 2
    return left, top, zoom


def drag(page: Any, points: list[tuple[float, float]]) -> None:
    """Press the mouse at the first point, move through the others, release."""
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point, steps=2)
    page.mouse.up()


def test_a_drawn_stroke_and_an_erased_patch_are_saved_at_the_photos_full_size(
        tiny_checkpoint_dir, tmp_path):
    """Review two photos, paint a band and erase across it on the first, save it, save the
    second unchanged, and be refused a silent overwrite."""
    from data.synthetic import render_sample
    from predict import Predictor
    from tests.test_app import running_app
    from web.views import display_size

    photos = tmp_path / "photos"
    photos.mkdir()
    for name, seed in (("ISIC_0000001", 1), ("ISIC_0000002", 2)):
        image, _ = render_sample(np.random.default_rng(seed), 1000, 1500)
        cv2.imwrite(str(photos / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    corrections = tmp_path / "corrections"
    shown = display_size(1000, 1500)
    with running_app("--checkpoint", str(tiny_checkpoint_dir / "best.pt"), "--device", "cpu",
                     "--corrections", str(corrections), workdir=tmp_path / "app") as server, \
            chromium_page(tmp_path / "profile") as page:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(server.url)
        page.get_by_role("tab", name="Review and correct").click()
        page.locator("#review-photos input[type=file]").set_input_files(
            sorted(str(path) for path in photos.iterdir()))
        page.locator("#review-start").click()
        page.locator("#review-list input").wait_for(timeout=RESULT_TIMEOUT_MS)
        page.wait_for_function(
            "() => document.querySelector('#review-list input').value.includes('ISIC_')",
            timeout=RESULT_TIMEOUT_MS)
        first = page.locator("#review-list input").input_value().split(" ")[0]
        page.locator("#review-editor").get_by_text("%").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        page.wait_for_timeout(1000)  # the photo and its layer drawn
        page.locator("#review-editor").scroll_into_view_if_needed()
        left, top, zoom = zoomed_photo_box(page, shown)

        def at(x: float, y: float) -> tuple[float, float]:  # shares of the photo -> screen
            return left + x * shown[0] * zoom, top + y * shown[1] * zoom

        page.get_by_role("button", name="Brush", exact=True).click()
        drag(page, [at(0.25, 0.8), at(0.5, 0.8), at(0.75, 0.8)])
        page.get_by_role("button", name="Erase", exact=True).click()
        drag(page, [at(0.5, 0.65), at(0.5, 0.8), at(0.5, 0.95)])
        page.locator("#review-save").click()
        status = page.locator("#review-status")
        status.get_by_text("1 correction saved").wait_for(timeout=RESULT_TIMEOUT_MS)

        page.locator("#review-save").click()  # again, without "Replace"
        page.get_by_text("is saved in").first.wait_for(timeout=RESULT_TIMEOUT_MS)
        saved_first = (corrections / "masks" / f"{Path(first).stem}_segmentation.png")
        before = saved_first.read_bytes()

        page.locator("#review-list input").click()
        page.get_by_role("option").filter(has_not_text=first).first.click()
        page.wait_for_timeout(1000)
        page.locator("#review-save").click()
        status.get_by_text("2 corrections saved").wait_for(timeout=RESULT_TIMEOUT_MS)

    assert saved_first.read_bytes() == before  # the refused save wrote nothing
    mask = cv2.imread(str(saved_first), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (1000, 1500) and set(np.unique(mask)) <= {0, 255}
    # Pixels whose shown value was not changed keep the full-size prediction, which the tiny
    # model leaves speckled below the shown size: hence shares, not every pixel.
    band = mask[796:805] == 255  # the middle of the painted band, at 80 % of the height
    assert band[:, 450:700].mean() > 0.98 and band[:, 820:1050].mean() > 0.98
    assert band[:, 740:761].mean() < 0.02  # the erased patch across it
    predicted = Predictor(tiny_checkpoint_dir / "best.pt", device="cpu")
    second = photos / "ISIC_0000002.jpg" if "0000001" in first else photos / "ISIC_0000001.jpg"
    unchanged = cv2.imread(str(corrections / "masks" / f"{second.stem}_segmentation.png"),
                           cv2.IMREAD_UNCHANGED)
    assert np.array_equal(unchanged > 0, predicted.predict_file(second).mask)
    assert not np.array_equal(mask > 0, predicted.predict_file(photos / first).mask)
    images = sorted(path.name for path in (corrections / "images").iterdir())
    assert images == ["ISIC_0000001.jpg", "ISIC_0000002.jpg"]
    for name in images:
        assert (corrections / "images" / name).read_bytes() == (photos / name).read_bytes()
    hosts = {urlparse(url).hostname for url in requests if url.startswith("http")}
    assert hosts == {"127.0.0.1"}, sorted(hosts)


# --------------------------------------------------------------------------- the screenshot


def take_screenshot(output: Path, photo: Path) -> int:
    """Serve the bundled model, segment ``photo`` in Chromium and save the page as a PNG
    of at most :data:`SCREENSHOT_LIMIT` bytes; returns its size."""
    from tests.test_app import running_app

    with tempfile.TemporaryDirectory(prefix="app-screenshot-") as work, \
            running_app(workdir=Path(work) / "app", threads=None) as server, \
            chromium_page(Path(work) / "profile") as page:
        upload_and_wait(page, server.url, photo)
        page.mouse.move(0, 0)  # no hover highlight in the picture
        picture = page.screenshot(full_page=True)
    return save_small_png(picture, output)


def save_small_png(picture: bytes, output: Path) -> int:
    """Save a PNG screenshot, reduced to 256 colours when it is over the size limit (a page of
    flat colours keeps its look); returns the size written."""
    from PIL import Image

    output.parent.mkdir(parents=True, exist_ok=True)
    if len(picture) > SCREENSHOT_LIMIT:
        with Image.open(io.BytesIO(picture)) as image:
            buffer = io.BytesIO()
            image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                buffer, "PNG", optimize=True)
        picture = buffer.getvalue()
    output.write_bytes(picture)
    return len(picture)


def default_photo() -> Path:
    """``ISIC_0000035.jpg`` of the shared full-resolution sample, else any photo there."""
    from tests.conftest import SHARED_DATA

    images = SHARED_DATA / "isic-fullres-sample" / "images"
    preferred = images / SCREENSHOT_PHOTO
    found = [preferred] if preferred.is_file() else sorted(images.glob("*.jpg"))[:1]
    if not found:
        raise SystemExit(f"error: no photo in {images}; pass --photo")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot of app.py's page with a result.")
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--photo", type=Path, default=None,
                        help=f"the photo to segment (default: {SCREENSHOT_PHOTO} of the shared "
                        "ISIC sample)")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("error: no Chromium installed (apt-get install chromium)", file=sys.stderr)
        return 1
    size = take_screenshot(args.screenshot, args.photo or default_photo())
    print(f"wrote {args.screenshot} ({size / 1000:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # as pytest's pythonpath: app, predict and tests import
    sys.exit(main())
