"""Weights & Biases logging that never costs a run.

Before going online, the service is asked for any HTTP answer within a few seconds; when none
comes (a compute node without a route out, a firewall), the run logs offline to ``./wandb`` at
once instead of waiting out W&B's own retries, and says how to upload it later. An error of
W&B later on (a failed call, a full disk under ``wandb/``) is reported once, and training goes
on without it.
"""

from __future__ import annotations

import contextlib
import netrc
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import torch

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_SECONDS = 3.0
# Bounds wandb.init's own wait when the service answers the probe but not the run's set-up
# (W&B's WANDB_INIT_TIMEOUT, when set, wins).
INIT_TIMEOUT_SECONDS = 15.0
SYNC_HINT = "upload later with `wandb sync wandb/offline-run-*` (after `wandb login`)"


def has_credentials() -> bool:
    """Whether ``wandb login`` (``~/.netrc``) or ``WANDB_API_KEY`` provides an API key."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlsplit(base_url()).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL).rstrip("/")


def unreachable_reason(url: str, timeout: float = PROBE_SECONDS) -> str | None:
    """``None`` if ``url`` gives any HTTP answer (an error status counts) within ``timeout``
    seconds, else why not. Proxies from the environment are used, as W&B uses them."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(reason).__name__


def choose_mode() -> tuple[str, str | None]:
    """The W&B mode to start in, and the line to print about it (``None``: nothing to say).

    ``WANDB_MODE`` wins; without credentials, or when the service does not answer, offline.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode is not None:
        return mode, None
    if not has_credentials():
        return "offline", f"W&B: no credentials found, logging offline to ./wandb; {SYNC_HINT}"
    reason = unreachable_reason(base_url())
    if reason is not None:
        return "offline", (f"W&B: {base_url()} cannot be reached ({reason}); logging offline "
                           f"to ./wandb; {SYNC_HINT}")
    return "online", None


class WandbRun:
    """A W&B run whose calls cannot fail: the first error is reported (one line on stderr) and
    the run is dropped; training goes on.

    Use :meth:`start` to create one; ``run`` is ``None`` once W&B is given up.
    """

    def __init__(self, run: Any) -> None:
        self.run = run

    @classmethod
    def start(cls, project: str, config: dict[str, Any], run_id: str | None) -> WandbRun:
        """Start (or, with ``run_id``, continue) a run, offline when the service is out of
        reach; a W&B that cannot start at all gives a :class:`WandbRun` that logs nothing."""
        import wandb

        mode, note = choose_mode()
        if note:
            print(note, flush=True)

        def init(mode: str) -> Any:
            # The folder is named on every call: W&B keeps the first one of a process.
            return wandb.init(project=project, config=config, id=run_id, mode=mode,
                              resume="allow" if run_id else None,
                              dir=os.environ.get("WANDB_DIR", os.getcwd()),
                              settings=wandb.Settings(init_timeout=float(os.environ.get(
                                  "WANDB_INIT_TIMEOUT", INIT_TIMEOUT_SECONDS))))

        try:
            return cls(init(mode))
        except Exception as exc:  # wandb raises CommError, UsageError, OSError, ...
            if mode == "offline":
                return cls.failed(exc)
            print(f"W&B: the run could not start online ({one_line(exc)}); logging offline "
                  f"to ./wandb; {SYNC_HINT}", flush=True)
        try:
            return cls(init("offline"))
        except Exception as exc:
            return cls.failed(exc)

    @classmethod
    def failed(cls, exc: BaseException) -> WandbRun:
        print(f"W&B: cannot log ({one_line(exc)}); training goes on without W&B; the metrics "
              "record beside the checkpoints has every epoch", file=sys.stderr, flush=True)
        return cls(None)

    @property
    def id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def _call(self, action: Callable[[Any], object]) -> None:
        if self.run is None:
            return
        try:
            action(self.run)
        except Exception as exc:
            run, self.run = self.run, None
            self.failed(exc)
            # End the run W&B still holds, so that nothing waits on it later.
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)

    def log(self, values: dict[str, Any], step: int) -> None:
        self._call(lambda run: run.log(values, step=step))

    def summarize(self, key: str, value: float) -> None:
        self._call(lambda run: run.summary.__setitem__(key, value))

    def finish(self) -> None:
        self._call(lambda run: run.finish())

    def images(self, batch: dict[str, Any], logits: torch.Tensor, mean: Sequence[float],
               std: Sequence[float], threshold: float = 0.5, count: int = 4) -> list:
        """A few validation images with their true and predicted (thresholded) masks; ``[]``
        once W&B is given up."""
        if self.run is None:
            return []
        import wandb

        mean_t, std_t = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
        labels = {0: "background", 1: "lesion"}
        examples = []
        for i in range(min(count, len(batch["id"]))):
            image = ((batch["image"][i].float().cpu() * std_t + mean_t).clamp(0, 1) * 255).byte()
            pred = (torch.sigmoid(logits[i, 0].float()) > threshold).byte().cpu().numpy()
            truth = batch["mask"][i, 0].byte().cpu().numpy()
            examples.append(wandb.Image(image.permute(1, 2, 0).numpy(), caption=batch["id"][i],
                                        masks={"ground_truth": {"mask_data": truth,
                                                                "class_labels": labels},
                                               "prediction": {"mask_data": pred,
                                                              "class_labels": labels}}))
        return examples


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
