"""Run the README's Quick start as a new user does: from a clean copy of the repository, every
command as written and in order, each under a time limit.

Each command runs in a shell of its own, with the clone's ``.venv`` activated once a command
has created it, as a user's terminal has it after the Quick start's ``source`` line. A command
that serves (``python app.py``) is started, must answer HTTP 200 at the address its
comment names, and must stop on SIGTERM with exit status 0. Every other command must exit 0, and
the paths its comment names (``results/...``, ``models/checkpoints/...``) must exist after it.
``lesion.jpg``, the user's own photo, is an ISIC photo where the project's sample data lies
beside the repository, and a synthetic dermoscopy image elsewhere.

    python .ci/quickstart.py
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTOS = REPO.parent / "shared" / "data" / "isic-fullres-sample" / "images"
COMMAND_SECONDS = 600
PAGE_SECONDS = 180
STOP_SECONDS = 30


class QuickstartFailed(Exception):
    """A Quick start command failed; the message says which and how."""


def quickstart_commands(readme: Path) -> list[tuple[str, str]]:
    """The ``(command, comment)`` lines of the first bash block under ``## Quick start``."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    if block is None:
        raise QuickstartFailed("README.md: no ```bash block under '## Quick start'")
    lines = []
    for line in block.group(1).splitlines():
        command, _, comment = line.partition("#")
        if command.strip():
            lines.append((command.strip(), comment.strip()))
    return lines


def clean_copy(destination: Path) -> Path:
    """The files git tracks or would track (nothing ignored: no venv, cache, checkpoint)."""
    listing = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                             check=True, capture_output=True).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def place_photo(target: Path) -> None:
    """Put a dermoscopy photo at ``target``, as the user of the Quick start has one."""
    photos = sorted(SAMPLE_PHOTOS.glob("*.jpg")) if SAMPLE_PHOTOS.is_dir() else []
    if photos:
        shutil.copy2(photos[0], target)
        return
    import cv2
    import numpy as np

    sys.path.insert(0, str(REPO))
    from data.synthetic import render_sample

    image, _ = render_sample(np.random.default_rng(0), 540, 720)
    cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def named_paths(comment: str) -> list[str]:
    """Repository paths a comment promises, such as ``results/lesion_segmentation.png``."""
    return [word.strip("(),") for word in comment.split()
            if "/" in word and "://" not in word]


def user_environment(folder: Path) -> dict[str, str]:
    """The environment of the user's terminal: the clone's ``.venv`` activated once a command
    created it (each command runs in a shell of its own, so ``source .venv/bin/activate``
    does not last), else this interpreter's ``python`` and ``pip`` first on PATH."""
    env = dict(os.environ)
    venv = folder / ".venv"
    bin_dir = venv / "bin" if (venv / "bin" / "python").exists() else Path(sys.executable).parent
    if bin_dir.parent == venv:
        env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_command(command: str, comment: str, folder: Path) -> None:
    """Run one command to its end and check what its comment promises."""
    started = time.perf_counter()
    try:
        done = subprocess.run(["bash", "-c", command], cwd=folder, env=user_environment(folder),
                              capture_output=True, text=True, timeout=COMMAND_SECONDS)
    except subprocess.TimeoutExpired:
        raise QuickstartFailed(f"`{command}` did not finish in {COMMAND_SECONDS} s") from None
    if done.returncode != 0:
        raise QuickstartFailed(f"`{command}` exited {done.returncode}:\n{done.stdout[-3000:]}"
                               f"\n{done.stderr[-3000:]}")
    missing = [path for path in named_paths(comment) if not (folder / path).exists()]
    if missing:
        raise QuickstartFailed(f"`{command}` did not write {', '.join(missing)}")
    print(f"ok  {command}  ({time.perf_counter() - started:.1f} s)", flush=True)


def serve_command(command: str, url: str, folder: Path) -> None:
    """Start a server, wait until ``url`` answers 200, stop it with SIGTERM, check it ended 0."""
    started = time.perf_counter()
    log = folder / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(shlex.split(command), cwd=folder, env=user_environment(folder),
                                  stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_page(server, url, log)
        answered = time.perf_counter() - started
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        raise QuickstartFailed(f"`{command}` did not stop within {STOP_SECONDS} s of "
                               "SIGTERM") from None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if code != 0:
        raise QuickstartFailed(f"`{command}` exited {code} on SIGTERM:\n{log.read_text()[-3000:]}")
    print(f"ok  {command}  (answered {url} after {answered:.1f} s, stopped on SIGTERM)",
          flush=True)


def wait_for_page(server: subprocess.Popen, url: str, log: Path) -> None:
    """Poll ``url`` until it answers 200; fail if the server exits or time runs out."""
    deadline = time.monotonic() + PAGE_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise QuickstartFailed(f"the server exited {server.returncode} before answering "
                                   f"{url}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise QuickstartFailed(f"{url} did not answer within {PAGE_SECONDS} s:\n"
                           f"{log.read_text()[-3000:]}")


def main() -> int:
    """Run every Quick start command; 0 when all did what the README says."""
    commands = quickstart_commands(REPO / "README.md")
    with tempfile.TemporaryDirectory(prefix="quickstart-") as temporary:
        folder = clean_copy(Path(temporary) / "clone")
        place_photo(folder / "lesion.jpg")
        try:
            for command, comment in commands:
                url = re.search(r"https?://\S+", comment)
                if url:
                    serve_command(command, url.group(0), folder)
                else:
                    run_command(command, comment, folder)
        except QuickstartFailed as exc:
            print(f"error: Quick start: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
