"""Tests of app.py, the web page: called through gradio_client as a user's script would, its
masks are predict.py's byte for byte, its table has predict.py's rows, the settings act, bad
photos get a message while the page keeps answering, and it leaves no file behind."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pytest
from PIL import Image

import app
import predict
from predict import PREDICTIONS_CSV, Predictor, prediction_row
from web import page as web_page
from web import segment as web_segment
from web import table as web_table
from web import views as web_views

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 90
# The page's endpoint, as the README shows it.
API_NAME = f"/{web_page.API_NAME}"
# No telemetry from gradio_client either (it honours these, not its own flag alone).
CLIENT_OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1"}


# --------------------------------------------------------------------------- running the app


@dataclass
class RunningApp:
    """``python app.py`` in a subprocess, with its own working and temporary folders."""

    url: str
    process: subprocess.Popen
    cwd: Path
    tmp: Path

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        """What the app printed (stdout and stderr), once it has stopped."""
        self.stop()
        return self.process.stdout.read()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def running_app(*args: str, workdir: Path, threads: int | None = 1) -> Iterator[RunningApp]:
    """Start ``python app.py ARGS`` on a free loopback port, with ``workdir/cwd`` as its
    working directory and ``workdir/tmp`` as its temporary folder; wait until the page answers.

    Args:
        threads: PyTorch threads of the app (1: the arithmetic of the tests' in-process
            predictors, so that masks compare exactly; ``None``: PyTorch's default).
    """
    cwd, tmp = workdir / "cwd", workdir / "tmp"
    cwd.mkdir(parents=True)
    tmp.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--host", "127.0.0.1", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running = RunningApp(f"http://127.0.0.1:{port}/", process, cwd, tmp)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not answers(running.url):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"app.py did not start:\n{running.output()}")
            time.sleep(0.1)
        yield running
    finally:
        running.stop()


class Answer(NamedTuple):
    """The six outputs of ``/segment``, as gradio_client returns them."""

    outlines: list[dict]
    mask_views: list[dict]
    probability_views: list[dict]
    summary: str
    masks: list[str]
    table: str | None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint_dir: Path) -> Path:
    return tiny_checkpoint_dir / "best.pt"


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with running_app("--checkpoint", str(checkpoint), "--device", "cpu",
                     workdir=tmp_path_factory.mktemp("app")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningApp, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gradio_client import Client

    with pytest.MonkeyPatch.context() as patch:
        for name, value in CLIENT_OFFLINE.items():
            patch.setenv(name, value)
        yield Client(server.url, verbose=False,
                     download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture(scope="module")
def photos(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Photos of every kind the page takes: a JPEG, a phone JPEG turned by EXIF, a grey PNG
    and a 16-bit PNG, all of synthetic lesions."""
    folder = tmp_path_factory.mktemp("photos")
    jpegs = sorted(synthetic_root.rglob("*.jpg"))
    rgb = cv2.cvtColor(cv2.imread(str(jpegs[1])), cv2.COLOR_BGR2RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # the phone was held upright: viewers turn the pixels by 90 degrees
    Image.fromarray(rgb).save(folder / "phone.jpg", "JPEG", quality=95, exif=exif.tobytes())
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(folder / "grey.png"), grey)
    cv2.imwrite(str(folder / "deep.png"), rgb[:, :, ::-1].astype(np.uint16) * 257)
    return {"jpeg": jpegs[0], "phone": folder / "phone.jpg", "grey": folder / "grey.png",
            "deep": folder / "deep.png"}


def segment(client: Any, paths: list[Path], **settings: Any) -> Answer:
    from gradio_client import handle_file

    return Answer(*client.predict(photos=[handle_file(str(path)) for path in paths],
                                  api_name=API_NAME, **settings))


def read_png(path: str | Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def median_threshold(checkpoint: Path, photo: Path) -> float:
    """A threshold (on the slider's 0.01 steps) that splits the photo's pixels in two, whatever
    the tiny model predicts."""
    probabilities = Predictor(checkpoint, device="cpu").predict_file(photo).probabilities
    return round(float(np.clip(np.median(probabilities), 0.06, 0.94)), 2)


# --------------------------------------------------------------------------- same as predict.py


def test_masks_are_predict_py_masks_byte_for_byte(client, checkpoint, photos, tmp_path):
    paths = list(photos.values())
    answer = segment(client, paths)
    assert predict.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--input",
                         *map(str, paths), "--output", str(tmp_path)]) == 0
    assert [Path(mask).name for mask in answer.masks] == [
        f"{path.stem}_segmentation.png" for path in paths]
    for mask, path in zip(answer.masks, paths):
        expected = tmp_path / f"{path.stem}_segmentation.png"
        assert Path(mask).read_bytes() == expected.read_bytes(), path.name
    # As viewers show the phone photo: turned, so its mask is taller than wide.
    with Image.open(photos["phone"]) as stored:
        stored_width, stored_height = stored.size
    assert read_png(answer.masks[1]).shape == (stored_width, stored_height)


def test_the_table_is_predict_py_rows_one_per_photo(client, checkpoint, photos):
    paths = [photos["jpeg"], photos["phone"]]
    answer = segment(client, paths)
    predictor = Predictor(checkpoint, device="cpu")
    expected = [prediction_row(path.name, predictor.predict_file(path)) for path in paths]
    rows = read_csv(answer.table)
    assert Path(answer.table).name == PREDICTIONS_CSV
    assert rows == [{key: str(value) for key, value in row.items()} for row in expected]
    for row in expected:
        assert row["image"] in answer.summary and f"{row['lesion_share']:.4g}" in answer.summary
    assert "lesion share" in answer.summary and "2 photos segmented" in answer.summary
    assert [item["caption"] for item in answer.outlines] == [path.name for path in paths]
    outline = cv2.imread(answer.outlines[0]["image"])
    assert outline.shape[:2] == read_png(answer.masks[0]).shape  # small photos: not scaled


def test_new_columns_of_prediction_row_appear_in_the_table():
    rows = [{"image": "a_b.jpg", "width": 4, "lesion_share": 0.123456, "needs_review": True},
            {"image": "c|d.jpg", "width": 5, "lesion_share": 0.5, "quality": None,
             "diameter_mm": 6.25}]
    table = web_table.markdown_table(rows).splitlines()
    assert table[0] == r"| | a_b.jpg | c\|d.jpg |"
    assert table[2:] == ["| width | 4 | 5 |", "| lesion share | 0.1235 | 0.5 |",
                         "| needs review | yes |  |", "| quality |  |  |",
                         "| diameter mm |  | 6.25 |"]


# --------------------------------------------------------------------------- settings


def test_threshold_and_tta_give_the_predictor_s_masks(client, checkpoint, photos):
    photo = photos["jpeg"]
    threshold = median_threshold(checkpoint, photo)
    tuned = segment(client, [photo], threshold=threshold, tta=True)
    expected = Predictor(checkpoint, device="cpu", threshold=threshold, tta=True)
    assert np.array_equal(read_png(tuned.masks[0]) > 0, expected.predict_file(photo).mask)
    assert f"threshold {threshold:.2f}" in tuned.summary
    assert "test-time augmentation on" in tuned.summary
    # A higher threshold marks fewer pixels.
    higher = segment(client, [photo], threshold=min(0.95, threshold + 0.2), tta=True)
    assert (read_png(higher.masks[0]) > 0).sum() < (read_png(tuned.masks[0]) > 0).sum()
    # The shared predictor is not changed by a request's settings.
    default = segment(client, [photo])
    assert np.array_equal(read_png(default.masks[0]) > 0,
                          Predictor(checkpoint, device="cpu").predict_file(photo).mask)


def test_keep_largest_and_fill_holes_give_the_predictor_s_masks(client, checkpoint, photos):
    photo = photos["jpeg"]
    threshold = median_threshold(checkpoint, photo)
    answer = segment(client, [photo], threshold=threshold, keep_largest=True, fill_holes=True)
    expected = Predictor(checkpoint, device="cpu", threshold=threshold, keep_largest=True,
                         fill_holes=True).predict_file(photo).mask
    assert np.array_equal(read_png(answer.masks[0]) > 0, expected)
    assert "keep largest region on, fill holes on" in answer.summary


# --------------------------------------------------------------------------- bad photos


def test_unreadable_photos_are_named_and_the_others_answered(client, photos, tmp_path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"these are notes, not a photo\n")
    truncated = tmp_path / "cut.jpg"
    data = photos["jpeg"].read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    answer = segment(client, [not_an_image, photos["jpeg"], truncated])
    assert [Path(mask).name for mask in answer.masks] == [f"{photos['jpeg'].stem}"
                                                          "_segmentation.png"]
    assert "notes.jpg: the file is not a readable image" in answer.summary
    assert "cut.jpg: the file is truncated" in answer.summary
    assert "/" not in answer.summary.split("Not segmented:")[1]  # no temporary paths
    rows = read_csv(answer.table)  # as predict.py's: the failures keep their row, flagged
    assert [row["image"] for row in rows] == ["notes.jpg", photos["jpeg"].name, "cut.jpg"]
    assert [row["review"] for row in rows] == ["yes", rows[1]["review"], "yes"]
    assert rows[0]["reason"].startswith("unreadable: notes.jpg: the file is not a readable")


def test_a_file_of_another_type_is_refused_with_a_message(client, photos, tmp_path):
    from gradio_client.exceptions import AppError

    text = tmp_path / "notes.txt"
    text.write_text("not a photo")
    with pytest.raises(AppError, match="Invalid file type"):
        segment(client, [text])
    assert segment(client, [photos["jpeg"]]).masks  # still answering


def test_no_photo_is_an_empty_answer(client):
    answer = Answer(*client.predict(photos=[], api_name=API_NAME))
    assert answer.summary == web_segment.NO_PHOTO and answer.masks == [] and answer.table is None


def test_a_10000x7000_photo_gets_a_full_size_mask_and_small_views(client, tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (70, 100, 3), dtype=np.uint8)
    photo = tmp_path / "large.jpg"
    cv2.imwrite(str(photo), cv2.resize(small, (10000, 7000), interpolation=cv2.INTER_LINEAR),
                [cv2.IMWRITE_JPEG_QUALITY, 70])
    answer = segment(client, [photo])
    mask = read_png(answer.masks[0])
    assert mask.shape == (7000, 10000) and set(np.unique(mask).tolist()) <= {0, 255}
    for view in (answer.outlines, answer.mask_views, answer.probability_views):
        assert cv2.imread(view[0]["image"]).shape[:2] == (717, 1024)


# --------------------------------------------------------------------------- the page itself


def test_the_page_names_its_model_and_what_it_is_not(server, checkpoint):
    with urllib.request.urlopen(server.url + "config", timeout=10) as response:
        config = response.read().decode()
    assert "Not a diagnostic device" in config and "dermoscopy" in config
    assert str(checkpoint) in config
    from models.bundled import BUNDLED_MODEL

    assert "the bundled ISIC model" in web_page.model_words(BUNDLED_MODEL)
    card = web_page.model_card(BUNDLED_MODEL)
    assert "not a diagnostic device" in card and "](image-ids.txt)" not in card


def test_stopping_leaves_no_file_behind(checkpoint, photos, tmp_path, monkeypatch):
    from gradio_client import Client

    for name, value in CLIENT_OFFLINE.items():
        monkeypatch.setenv(name, value)
    # An app of its own: the others' is still answering.
    with running_app("--checkpoint", str(checkpoint), "--device", "cpu",
                     workdir=tmp_path / "app") as server:
        client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
        segment(client, [photos["jpeg"]])
        assert list(server.tmp.iterdir()), "the uploads live in the temporary folder"
        assert not list(server.cwd.iterdir())
        assert server.stop() == 0
        assert not list(server.tmp.iterdir()) and not list(server.cwd.iterdir())


def test_a_taken_port_is_one_error_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main(["--port", str(port)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "\n" not in error


def test_help_answers_without_importing_pytorch_or_gradio() -> None:
    result = subprocess.run([sys.executable, "-X", "importtime", "app.py", "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--checkpoint" in result.stdout
    assert "--share" in result.stdout and "7860" in result.stdout
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                if line.startswith("import time:")}
    assert not {"torch", "gradio", "cv2", "numpy"} & imported, sorted(imported)


def test_shown_images_are_scaled_down_never_up():
    assert web_views.display_size(7000, 10000) == (1024, 717)
    assert web_views.display_size(3000, 2000) == (683, 1024)
    assert web_views.display_size(48, 64) == (64, 48)


def test_a_stop_before_the_page_waits_ends_cleanly(checkpoint: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # SIGTERM (a KeyboardInterrupt here) that lands between the launch and Gradio's own wait,
    # as it does when the page is stopped the moment it answers: exit 0, nothing left behind.
    import gradio

    def stopped(self: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gradio.Blocks, "block_thread", stopped)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    for name in [*app.OFFLINE, "GRADIO_TEMP_DIR"]:  # app.main sets them: restored afterwards
        monkeypatch.setenv(name, os.environ.get(name, ""))
    port = free_port()
    assert app.main(["--checkpoint", str(checkpoint), "--port", str(port)]) == 0
    assert not list(tmp_path.glob("isic-app-*")) and not answers(f"http://127.0.0.1:{port}")
