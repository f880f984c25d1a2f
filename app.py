"""A web page that outlines skin lesions in dermoscopy photos, for people who do not use a terminal.

    python app.py                          # then open http://127.0.0.1:7860 in a web browser
    python app.py --checkpoint best.pt --port 8000

Drop one or several photos on the page: each comes back with the lesion outlined, its mask and
its probability map, with a table of predict.py's row for every photo. The masks download in
the ISIC format exactly as ``predict.py`` writes them (the same :class:`Predictor`, the same
file, the same bytes), the table as a CSV. The threshold, test-time augmentation and the
post-processing are set on the page for each request. The review tab lists a set of photos
with the flagged first, lets a mask be corrected with a brush and an eraser, and saves photo and
mask into ``--corrections`` (``images/`` + ``masks/``), which ``train.py`` reads as it is.

The page lives in ``web/``: its layout (``web/page.py``), one request (``web/segment.py``),
the review mode (``web/review.py``); this file reads the flags and serves it.

The page is also an API: ``gradio_client`` calls it with ``api_name="/segment"``.

Nothing goes to the internet: Gradio's analytics and version check are off, and no share link
is made unless ``--share``. Uploads and results live in one temporary folder, pruned an hour
after use and removed when the app stops. PyTorch and Gradio are imported after the flags are
read, so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.errors import FlagError, run_script
from common.options import add_hardware_options
from inference.settings import add_checkpoint_option

if TYPE_CHECKING:
    from inference.predictor import Predictor

STARTED = time.perf_counter()
DEFAULT_PORT = 7860
DEFAULT_HOST = "127.0.0.1"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_CORRECTIONS = "corrections"
MAX_UPLOAD = "200mb"
# Set before Gradio is imported: no analytics, no version check, no Hugging Face Hub calls, and
# no history of runs (photos of patients) kept in the browser.
OFFLINE = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_MCP_SERVER": "False",
           "GRADIO_RUN_HISTORY": "False"}


class PortError(FlagError):
    """The port the page should listen on is taken or cannot be used."""


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
    p.add_argument("--corrections", type=Path, default=Path(DEFAULT_CORRECTIONS),
                   help="folder the review tab saves corrected masks into, as images/ + "
                   "masks/ (default: %(default)s, created on the first save)")
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
        CheckpointError, FlagError: see :class:`inference.predictor.Predictor`.
    """
    check_port(args.host, args.port)
    with tempfile.TemporaryDirectory(prefix="isic-app-") as workspace:
        use_workspace(Path(workspace))
        from web.page import ReviewSettings, build_page

        predictor = load_predictor(args)
        review = ReviewSettings(args.corrections.expanduser().resolve(),
                                allow_folders=args.host in LOCAL_HOSTS and not args.share)
        page = build_page(predictor, review)
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

    from inference.predictor import Predictor
    from models.bundled import describe_model

    predictor = Predictor(args.checkpoint, device=args.device, precision=args.precision)
    print(describe_model(predictor.checkpoint_path, predictor.info), flush=True)
    predictor.predict(np.zeros((predictor.img_size, predictor.img_size, 3), np.uint8))
    return predictor


if __name__ == "__main__":
    sys.exit(main())
