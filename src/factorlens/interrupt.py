"""Cooperative cancellation for work that runs in worker threads.

Python delivers Ctrl-C (``KeyboardInterrupt``) to the main thread only. Work that the main
thread hands to a thread pool (the rank scan's chains) would run on to its end, so the main
thread sets :data:`CANCEL` when it is interrupted, and long loops call :func:`check` once per
iteration, which stops them within one iteration.
"""

from __future__ import annotations

import threading

#: set by the main thread when it is interrupted; cleared when the pool has stopped
CANCEL = threading.Event()
#: set for good by SIGTERM: a Terminated raised in the handler can be swallowed (Python only
#: prints an exception raised while a weakref callback or a __del__ runs), so every loop's
#: check and the move of a command's output into place look at this too
TERMINATED = threading.Event()


class Cancelled(KeyboardInterrupt):
    """Raised in a worker thread that saw :data:`CANCEL`."""


def check() -> None:
    """Raise :class:`Terminated` after SIGTERM, :class:`Cancelled` when the work was cancelled."""
    if TERMINATED.is_set():
        raise Terminated("terminated")
    if CANCEL.is_set():
        raise Cancelled("cancelled")


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception.

    So that staging folders are cleaned up on the way out (exit status 143).
    """


def raise_terminated(signum: int, frame: object) -> None:
    """Handle SIGTERM: raise :class:`Terminated` in the main thread, and remember it."""
    TERMINATED.set()
    raise Terminated("terminated")
