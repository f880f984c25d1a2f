"""The processes of a distributed run (launched by ``torchrun``) and what they decide together.

Every decision that changes what a process does next is taken from values all processes
agree on: the training time (the slowest process's clock) and whether any process was asked to
stop (SIGTERM, SIGINT). They are exchanged before every step, so that all processes stop after
the same step, on a separate gloo group of two CPU numbers: the exchange never waits for the
GPU, and costs one small message round (tens of microseconds between processes of one
machine). In one process the same code runs without the exchange, so a run behaves the same on
one process as on many.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from common.device import select_device
from common.errors import UserError

# Rank 0 may spend long on setup work the others wait for (building the preparation cache).
SETUP_TIMEOUT = timedelta(hours=12)


class PeerLostError(UserError):
    """Another process of the run died or stopped answering, so no collective can complete."""


@dataclass
class Cluster:
    """This process's place in the run: rank, number of processes, device, and the gloo group
    of the agreement (``None`` in a single process)."""

    rank: int
    world: int
    device: torch.device
    control: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """Only the main process prints, logs and writes files."""
        return self.rank == 0

    def wait_for_main(self) -> None:
        """All processes wait here until the main one arrives (e.g. after writing data)."""
        if self.control is not None:
            dist.monitored_barrier(group=self.control, timeout=SETUP_TIMEOUT,
                                   wait_all_ranks=True)

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def start_cluster(device: str, timeout_minutes: float) -> Cluster:
    """Join the run ``torchrun`` started (from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or
    a single process when those are unset. NCCL on GPUs, gloo on CPUs; collectives that do not
    complete within ``timeout_minutes`` fail instead of hanging.

    Raises:
        FlagError: the device is not available.
    """
    chosen = select_device(device)
    if "RANK" not in os.environ:
        return Cluster(0, 1, chosen)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(chosen)
    timeout = timedelta(minutes=timeout_minutes)
    dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo",
                            timeout=timeout)
    return Cluster(rank, world, chosen, dist.new_group(backend="gloo", timeout=timeout))


def is_communication_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's failure (gloo raises plain RuntimeErrors)."""
    return isinstance(exc, dist.DistError) or any(
        marker in str(exc) for marker in ("gloo", "NCCL", "Connection reset by peer",
                                          "Connection closed by peer", "Broken pipe"))


def peer_lost(exc: BaseException, where: str) -> PeerLostError:
    """The one-line error for a collective that failed because another process is gone."""
    text = " ".join(str(exc).split())
    # gloo: "[.../pair.cc:545] Read error [127.0.0.1]:27044: Connection reset by peer. This..."
    reason = re.sub(r"^\[[^\]]*\.cc:\d+\]\s*", "", text).split(". ")[0][:160]
    return PeerLostError(f"another training process stopped answering during {where} "
                         f"({reason or type(exc).__name__}); the run is stopped; continue from "
                         "the last saved last.pt with --resume")


def weights_digest(modules: list[nn.Module]) -> str:
    """SHA-256 of every tensor of ``modules`` (their state dicts, in order): equal on two
    processes exactly when they hold bit-identical weights and buffers."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()


def replicas_report(cluster: Cluster, modules: list[nn.Module]) -> str:
    """Whether all processes hold the same weights, compared by :func:`weights_digest`; ``""``
    in a single process."""
    if cluster.control is None:
        return ""
    digest = weights_digest(modules)
    digests: list[str | None] = [None] * cluster.world
    dist.all_gather_object(digests, digest, group=cluster.control)
    if len(set(digests)) == 1:
        return f"; all {cluster.world} processes hold identical weights (sha256 {digest[:16]})"
    shown = ", ".join(f"rank {rank}: {d[:16]}" for rank, d in enumerate(digests))
    return f"; warning: the processes' weights differ ({shown})"


class Agreement:
    """The training time and the stop request, agreed by all processes: the largest time and
    any request win."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def exchange(self, seconds: float, stop: bool) -> tuple[float, bool]:
        """This process's training ``seconds`` and stop request in, the agreed ones out.

        Raises:
            PeerLostError: another process is gone.
        """
        if self.cluster.control is None:
            return seconds, stop
        values = torch.tensor([seconds, float(stop)], dtype=torch.float64)
        try:
            dist.all_reduce(values, op=dist.ReduceOp.MAX, group=self.cluster.control)
        except RuntimeError as exc:
            raise peer_lost(exc, "training") from exc
        return float(values[0]), bool(values[1])


class StopDuringWait(BaseException):
    """A stop signal arrived while the process waited for data (:meth:`StopRequest.waiting`).

    A ``BaseException``, as ``KeyboardInterrupt`` is, so that no ``except Exception`` inside
    the DataLoader or the decoding pool holds it up on its way out of the wait."""


class StopRequest:
    """SIGTERM and SIGINT set :attr:`signal` instead of ending the process, so that the run
    stops between steps and saves; a second Ctrl-C interrupts at once. Inside
    :meth:`waiting` a signal also ends the wait at once. Installed for the duration of a
    ``with`` block (signal handlers can be set in the main thread only).

    Processes forked meanwhile inherit the handler and react as they would have without it;
    data workers are spawned, and ignore both signals (:mod:`data.workers`).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._owner = os.getpid()
        self._waiting = False

    def __enter__(self) -> StopRequest:
        self._owner = os.getpid()
        if threading.current_thread() is threading.main_thread():  # else: signals as before
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._owner:
            self._in_child(signum, frame)
            return
        self.signal = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._waiting:
            self._waiting = False
            raise StopDuringWait(signum)

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """A block that only waits for data (a batch, the preparation cache): a stop signal
        raises :class:`StopDuringWait` out of it at once, since a stalled read may never
        return, and nothing is half done while waiting. (A signal that came before is left to
        the next agreement, as usual.)"""
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def _in_child(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def exit_status(self) -> int:
        """128 + the signal's number, as a shell reports a process ended by it."""
        return 128 + (self.signal or 0)

    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""
