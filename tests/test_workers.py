"""The main job as users run it: ``python train.py`` with worker processes, from a fresh
interpreter, never hangs.

A forked worker of a process whose OpenCV thread pool had started blocks for ever, so data
workers are spawned (data/workers.py) and no module computes with OpenCV or PyTorch when it is
imported. A batch that does not come ends the run with one ``error:`` line; a stop signal
during such a wait saves last.pt and exits within seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.layouts import find_pairs

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("common", "data", "models", "inference", "evaluation", "training", "web")
# The third-party modules the project imports; importing these may start threads of their own.
THIRD_PARTY = ("numpy", "cv2", "torch", "albumentations", "scipy.ndimage", "scipy.spatial",
               "PIL.Image", "tqdm", "matplotlib", "wandb", "safetensors.torch", "onnxruntime",
               "gradio")
TINY = ["--base-channels", "4", "--depth", "2", "--epochs", "1", "--batch-size", "4",
        "--precision", "fp32"]


def project_modules() -> list[str]:
    """Every module of the library packages, then the top-level modules and entry points."""
    names = []
    for package in LIBRARIES:
        for path in sorted((ROOT / package).glob("*.py")):
            names.append(package if path.stem == "__init__" else f"{package}.{path.stem}")
    return names + ["utils", "predict", "app", "train", "hubconf"]


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_no_module_starts_a_thread_pool_when_imported() -> None:
    # A module that calls OpenCV (or runs a parallel PyTorch kernel) at import starts a thread
    # pool in every process that imports it, train.py's included.
    code = f"""
import importlib, os
threads = lambda: len(os.listdir("/proc/self/task"))
for name in {THIRD_PARTY!r}:
    importlib.import_module(name)
for name in {project_modules()!r}:
    before = threads()
    importlib.import_module(name)
    if threads() != before:
        print("STARTED", name, before, threads())
"""
    if not Path("/proc/self/task").is_dir():
        pytest.skip("counting threads needs /proc")
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "STARTED" not in result.stdout, result.stdout


def test_loader_workers_start_after_opencv_ran_in_the_parent(synthetic_root: Path) -> None:
    # OpenCV's pool is running in this process when the workers start; forked workers would
    # block in cv2.setNumThreads.
    code = f"""
import cv2, numpy as np, torch
from torch.utils.data import DataLoader
from data.dataset import ISICDataset, eval_transforms
from data.layouts import find_pairs
from data.workers import init_loader_worker, worker_context
cv2.cvtColor(np.zeros((2000, 2000, 3), np.uint8), cv2.COLOR_RGB2LAB)
torch.ones(1000, 1000) @ torch.ones(1000, 1000)
pairs = find_pairs({str(synthetic_root)!r}, "train")
loader = DataLoader(ISICDataset(pairs, eval_transforms(32)), batch_size=4, num_workers=2,
                    worker_init_fn=init_loader_worker, multiprocessing_context=worker_context(),
                    timeout=60)
print("BATCHES", sum(1 for _ in loader))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BATCHES 6" in result.stdout


def train_command(data: Path, tmp_path: Path, *flags: str) -> list[str]:
    return [sys.executable, "train.py", "--data", str(data), "--checkpoint-dir",
            str(tmp_path / "checkpoints"), "--cache-dir", str(tmp_path / "cache"), *TINY, *flags]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", **(extra or {})}


def test_train_py_with_worker_processes_finishes_at_two_sizes(synthetic_root: Path,
                                                              tmp_path: Path) -> None:
    # A fresh interpreter, a fresh cache, two workers: the user's `python train.py`. The two
    # runs go side by side, as most of their time is spent importing and starting workers.
    runs = {size: subprocess.Popen(
        train_command(synthetic_root, tmp_path / str(size), "--img-size", str(size),
                      "--workers", "2"),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment())
        for size in (32, 56)}
    for size, process in runs.items():
        try:
            stdout, stderr = process.communicate(timeout=150)
        finally:
            process.kill()
        assert process.returncode == 0, f"--img-size {size}: {stderr[-3000:]}"
        last = stdout.strip().splitlines()[-1]
        assert last.startswith("done: val_dice") and "calibrated in" in last, stdout[-2000:]


# Run by every interpreter that finds it on PYTHONPATH (spawned workers too): reading the file
# STALLED_FILE names never returns, as a read from a file system that stopped answering.
STALLING_SITE = """
import os, pathlib, time
_read_bytes = pathlib.Path.read_bytes
def read_bytes(self):
    if str(self) == os.environ.get("STALLED_FILE"):
        pathlib.Path(os.environ["STALLED_FILE"] + ".reading").touch()
        while True:
            time.sleep(60)
    return _read_bytes(self)
pathlib.Path.read_bytes = read_bytes
"""


@pytest.fixture
def stalling(synthetic_root: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a process (and its spawned workers) for which reading the first
    training image of a copy of ``synthetic_root`` (``DATA``) never returns; a file beside the
    image tells when the read began."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STALLING_SITE)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    stalled = tmp_path / "ISIC2018"
    shutil.copytree(synthetic_root, stalled)
    image = find_pairs(stalled, "train")[0].image
    return {"PYTHONPATH": path, "STALLED_FILE": str(image), "DATA": str(stalled)}


def test_a_stalled_batch_is_an_error_and_sigterm_ends_the_wait(
        tmp_path: Path, stalling: dict[str, str]) -> None:
    # Two runs side by side on data one image of which cannot be read: one waits 4 s for the
    # batch and ends with one line; the other waits 600 s, and is stopped while it waits.
    def start(name: str, timeout: str) -> subprocess.Popen:
        return subprocess.Popen(
            train_command(Path(stalling["DATA"]), tmp_path / name, "--img-size", "32",
                          "--workers", "2", "--no-cache", "--data-timeout", timeout),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=environment(stalling))

    timed_out, stopped = start("timeout", "4"), start("stopped", "600")
    try:
        reading = Path(stalling["STALLED_FILE"] + ".reading")
        while not reading.exists() and stopped.poll() is None:
            time.sleep(0.2)
        time.sleep(2)  # both are past their workers' start, waiting for the stalled batch
        assert stopped.poll() is None
        stopped.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, stderr = stopped.communicate(timeout=60)
        waited = time.monotonic() - signalled
        _, timeout_stderr = timed_out.communicate(timeout=120)
    finally:
        timed_out.kill()
        stopped.kill()
    assert waited < 15
    assert stopped.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert (tmp_path / "stopped" / "checkpoints" / "last.pt").is_file()

    assert timed_out.returncode == 1, timeout_stderr[-3000:]
    errors = [line for line in timeout_stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no batch came from the 2 data-loading worker" in errors[0]
    assert "--data-timeout" in errors[0] and "Traceback" not in timeout_stderr


def test_a_stalled_image_while_building_the_cache_is_an_error(
        stalling: dict[str, str]) -> None:
    # In a fresh interpreter: the decoding pool's processes come from a fork server that must
    # start with the stalling environment.
    code = f"""
import data.cache as cache
from data.layouts import find_pairs
from data.workers import DataStallError
cache.STALL_SECONDS, cache.POOL_MIN_IMAGES = 2.0, 2
try:
    list(cache.decode_all(find_pairs({stalling["DATA"]!r}, "train"), 32, workers=2))
except DataStallError as exc:
    print("STALLED", exc)
"""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=environment(stalling))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "STALLED" in result.stdout and "for the preparation cache" in result.stdout
    assert time.monotonic() - started < 60
