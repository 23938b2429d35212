"""A background thread that checks and writes captured batches, overlapping the forward pass.

:func:`factorlens.capture` hands every batch's rows (the input and each block, fresh float32
arrays it owns) to a :class:`BatchWriter`; the writer thread checks them for NaN/Inf, appends
them to the store and records the batch boundary (the resume point), in order, while the
model already runs the next batch. At most ``depth`` batches wait, so memory stays bounded.

An error in the thread (non-finite values under ``nonfinite="raise"``, a full disk) is raised
in the capturing thread at its next :meth:`~BatchWriter.put` or at :meth:`~BatchWriter.close`;
batches after it are dropped, never written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.store import ActivationStore, ZarrStore

#: batches that may wait for the writer (each one batch of every block)
DEPTH = 2

_STOP = object()


def check_finite(name: str, arr: np.ndarray, policy: str, start: int, counts: dict) -> np.ndarray:
    """Return ``arr`` with its NaN/Inf handled by ``policy`` (``"raise"`` or ``"zero"``).

    ``"zero"`` sets them to 0 in place and adds their number to ``counts[name]``. A finite
    sum means every value is finite, so the common case costs one pass and no temporary
    array; only a sum that is not finite (NaN/Inf, or an overflow) is looked at value by value.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(arr.sum()):
            return arr
    bad = ~np.isfinite(arr)
    n_bad = int(bad.sum())
    if n_bad == 0:  # the sum overflowed
        return arr
    if policy == "raise":
        what = "the input data" if name == "input" else f"layer {name!r}"
        raise FactorlensError(
            f"{what} produced {n_bad} non-finite values (NaN/Inf) in the batch starting at "
            f'sample {start}; pass `nonfinite="zero"` to replace them with 0'
        )
    arr[bad] = 0.0
    counts[name] = counts.get(name, 0) + n_bad
    return arr


class BatchWriter:
    """Write captured batches to ``store`` on a background thread, in the order given.

    Parameters
    ----------
    store : ActivationStore
        The store being filled; its blocks exist before the first :meth:`put`.
    nonfinite : str
        ``"raise"`` or ``"zero"`` (see :func:`check_finite`).
    counts : dict
        Non-finite values replaced so far per block; updated by the thread.
    depth : int
        Batches that may wait before :meth:`put` blocks.
    """

    def __init__(
        self, store: ActivationStore, nonfinite: str, counts: dict, depth: int = DEPTH
    ) -> None:
        self.store = store
        self.nonfinite = nonfinite
        self.counts = counts
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="factorlens-writer", daemon=True)
        self._thread.start()

    def put(self, start: int, stop: int, blocks: Sequence[tuple[str, np.ndarray]]) -> None:
        """Queue rows ``[start, stop)`` of every block (arrays the writer may change and keep)."""
        self._raise_error()
        self._queue.put((start, stop, blocks))

    def close(self) -> None:
        """Wait until every queued batch is written, then raise the thread's error if any."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        """Raise the thread's error in the caller, once."""
        if self._error is not None and not self._reported:
            self._reported = True
            raise self._error

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:  # drop what comes after an error, keep draining
                continue
            start, stop, blocks = item
            try:
                for name, rows in blocks:
                    rows = check_finite(name, rows, self.nonfinite, start, self.counts)
                    self.store.append(name, rows, copy=False)
                if isinstance(self.store, ZarrStore):
                    self.store.mark_batch(stop, self.counts)
            except BaseException as exc:  # handed to the capturing thread
                self._error = exc


__all__ = ["DEPTH", "BatchWriter", "check_finite"]
