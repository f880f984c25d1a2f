"""The worker processes that decode data: how they start, what they set up, how they end.

Workers are never forked from the training process. A forked child inherits the memory of
every thread pool its parent had started (OpenCV's, started by any OpenCV call; W&B's;
PyTorch's) but none of its threads, and blocks for ever as soon as it reconfigures such a pool:
``cv2.setNumThreads(1)`` in a forked worker of a process that had called ``cv2.cvtColor`` once
never returns. Workers start from a *fork server* instead (a fresh, single-threaded
interpreter that imports PyTorch, OpenCV and albumentations once and forks each worker from
itself), or are spawned (a fresh interpreter each) where there is no fork server (Windows).
Either way a worker's start does not depend on what the training process did before. The fork
server pays those imports once per run instead of once per worker; measured start-up times
and images per second of each start method are in docs/training.md, "Data-loading workers".
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from pathlib import Path

import cv2
from torch.utils.data import DataLoader
from torch.utils.data._utils import signal_handling

from common.errors import UserError

# Where there is a fork server (Linux, macOS), workers start from it; elsewhere they are spawned.
START_METHOD = ("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                else "spawn")
# How long the run waits for data before it calls it stalled: a batch from the DataLoader's
# workers (at least STALL_SECONDS, and SECONDS_PER_IMAGE for each image of the batch), or a chunk
# of at most 8 images from the preparation cache's decoding pool. The slowest real batch
# measured, 16 PNG photos of 6000x4000 decoded from their files (--no-cache) at 256 px by 2
# workers on a 2-core AMD EPYC with AVX512-BF16, took 7.4 s (0.46 s an image; the same photos
# as JPEGs 2.6 s, decoded at reduced scale): a wait of these lengths means a worker or the file
# system stopped answering.
STALL_SECONDS = 300.0
SECONDS_PER_IMAGE = 5.0


def batch_timeout(batch_size: int) -> float:
    """Seconds to wait for one batch of ``batch_size`` images before calling the data
    stalled (``train.py --data-timeout`` overrides it)."""
    return max(STALL_SECONDS, SECONDS_PER_IMAGE * batch_size)


class DataStallError(UserError):
    """No data came from the workers (or the file system) within the bounded wait."""


# What the fork server imports before it forks a worker: what every worker needs (PyTorch,
# OpenCV, albumentations), so that a worker starts in milliseconds instead of importing them
# itself (and the main module, where Python's fork server manages to).
SERVER_PRELOAD = ["__main__", "data.dataset", "data.cache"]
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def worker_context() -> BaseContext:
    """The multiprocessing context every data worker (DataLoader or decoding pool) starts in;
    its fork server runs from the first call on."""
    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        context.set_forkserver_preload(SERVER_PRELOAD)
        # The server is a fresh interpreter that finds this project only on PYTHONPATH (it
        # ignores the sys.path it is handed before Python 3.12).
        path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        with patched_environment(PYTHONPATH=path):
            multiprocessing.forkserver.ensure_running()
    return context


@contextmanager
def patched_environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_worker_server() -> None:
    """Start the fork server now (where workers start from one), so that its imports run
    beside the training process's own set-up instead of delaying the first batch."""
    worker_context()


def init_loader_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one OpenCV thread, and SIGTERM and SIGINT ignored.

    The workers already keep the cores busy (PyTorch limits its own threads in them likewise);
    OpenCV's thread pool on top only adds contention. A cluster's SIGTERM (or a terminal's
    Ctrl-C) reaches every process of a job: the training process then finishes its step and
    saves (PyTorch would report a worker ended by the signal as a failure, in the middle of
    that), and ends its workers itself (:func:`end_workers`; they also end when it dies).
    """
    _init_worker(signal.SIGTERM, signal.SIGINT)


def init_pool_worker() -> None:
    """``initializer`` of a decoding pool's processes: one OpenCV thread, and SIGINT ignored
    (the pool's own process decides what a Ctrl-C does; the pool ends its processes with
    SIGTERM)."""
    _init_worker(signal.SIGINT)


def _init_worker(*ignored: signal.Signals) -> None:
    cv2.setNumThreads(1)
    for signum in ignored:
        signal.signal(signum, signal.SIG_IGN)


def end_workers(loader: DataLoader, at_once: bool = False) -> None:
    """End the worker processes a DataLoader keeps (``persistent_workers``) now.

    They ignore SIGTERM (see :func:`init_loader_worker`), so they must not be left to the
    interpreter's exit, which would terminate them with it and wait for ever. ``at_once``
    (a run that stopped or failed): kill them first, since a worker stuck in a read would
    not answer the request to finish; what they were preparing is not needed.
    """
    iterator = getattr(loader, "_iterator", None)
    loader._iterator = None
    if not hasattr(iterator, "_shutdown_workers"):
        return  # no workers, or none started
    if at_once:
        _kill_workers(iterator)
    else:
        iterator._shutdown_workers()


def _kill_workers(iterator: object) -> None:
    # PyTorch's SIGCHLD handler would report the killed workers as a failure, and its orderly
    # shutdown waits 5 s for each worker that does not answer: both are skipped here.
    if iterator._worker_pids_set:
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    iterator._shutdown = True
    if hasattr(iterator, "_pin_memory_thread_done_event"):
        iterator._pin_memory_thread_done_event.set()
    for process in iterator._workers:
        process.kill()
    for process in iterator._workers:
        process.join()
    for queue in iterator._index_queues:
        queue.cancel_join_thread()
        queue.close()
