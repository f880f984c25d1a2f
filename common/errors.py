"""The one class of a user's mistakes, and the wrapper that turns it into one line.

Every mistake a user can make (a wrong path, a bad flag value, a corrupt file, a checkpoint of
another project, a download that failed) raises a subclass of :class:`UserError` whose message
names the file or flag and the fix. :func:`run_script` prints it as one ``error:`` line and
returns exit status 1. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A mistake of the user's (not a bug): the message says what is wrong and how to fix it."""


class FlagError(UserError, ValueError):
    """A command-line flag (or the matching API argument) has a value that cannot work."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def run_script(body: Callable[[], int], interrupted: str = "interrupted",
               oom_hint: str = "lower --batch-size") -> int:
    """Run a script's body and return its exit status.

    A :class:`UserError` becomes one ``error:`` line on stderr and status 1; out of GPU memory
    likewise, with ``oom_hint``; Ctrl-C prints ``interrupted`` and returns 130.
    """
    try:
        return body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_out_of_gpu_memory(exc):
            raise
        print(f"error: out of GPU memory; {oom_hint}", file=sys.stderr)
    return 1


def is_out_of_gpu_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch's CUDA out-of-memory error; PyTorch is not imported for it
    (a script that never imported it, such as ``scripts/prepare.py``, cannot raise one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)
