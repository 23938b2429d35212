"""numpy's transparent huge pages, turned off while factorlens works.

numpy asks the kernel for transparent huge pages (``madvise``) on every array of 4 MB or
more. The rank scan, the fits and the sketched capture allocate and free such temporaries
many times a second, and each fresh huge page is faulted in whole. On the 2-core
development VM that was the largest single cost of `quality` (two MnistCNN checkpoints,
2,000 inputs: 34-37 s, 19-21 s of it system time, against 27 s and 4 s without) and a fifth
of `analyze` on a ResNet-18 (56-60 s against 44-50 s).

While any factorlens entry point runs (:func:`small_pages`, as a context manager or a
decorator), the advice is off; it is restored when the last one returns. Nothing changes
when the user chose with ``NUMPY_MADVISE_HUGEPAGE`` (numpy's own switch, read at its import)
or when numpy has no such switch. What is computed does not depend on it, only how fast.
Why by hand: neither numpy nor threadpoolctl offers a scoped form of the switch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

#: numpy's environment variable: when set, the user's choice stands
ENV = "NUMPY_MADVISE_HUGEPAGE"

_lock = threading.Lock()
_depth = 0
_saved = True


def _switch() -> Callable[[bool], bool] | None:
    """Return numpy's setter of the advice (it returns the previous value), or ``None``."""
    core = getattr(np, "_core", None)  # numpy 2; numpy 1.26 keeps it in numpy.core
    if core is None:
        core = getattr(np, "core", None)
    return getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)


@contextmanager
def small_pages() -> Iterator[None]:
    """Turn numpy's huge-page advice off within the block (nested and threaded uses count)."""
    global _depth, _saved
    switch = _switch()
    if switch is None or ENV in os.environ:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = bool(switch(False))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                switch(_saved)


__all__ = ["ENV", "small_pages"]
