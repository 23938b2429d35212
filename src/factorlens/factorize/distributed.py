"""The Dask backend: every product of the ALS as a map-reduce over row chunks on a cluster.

``CMTF(..., backend="dask")`` (CLI: ``--dask`` for a ``LocalCluster``, ``--scheduler
ADDRESS`` for an existing cluster) wraps each block as a dask array chunked by rows — a zarr
store's blocks are read by the workers themselves — and computes ``Ỹ K`` (a map over row
chunks) and ``Ỹᵀ A`` (a map over row chunks, then a tree sum) on the cluster the current
``dask.distributed`` client points at. Blocks up to the memory budget are persisted in the
workers' memory once; larger ones are read from the store on every pass, chunk by chunk, so
no process holds a whole block. The statistics pass (column means, norms) and everything
that is not an ALS product run as in the single-process engine, on chunks the client pulls.

Needs the optional extra: ``pip install factorlens[dask]``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from factorlens.errors import FactorlensError


def _dask() -> tuple[Any, Any]:
    try:
        import dask.array as da
        from dask import distributed
    except ImportError:
        raise FactorlensError(
            "the dask backend needs dask and distributed: pip install 'factorlens[dask]'"
        ) from None
    return da, distributed


def as_dask_array(data: Any, n_rows: int, width: int, chunk_rows: int) -> Any:
    """Return ``data`` (numpy, zarr or a store's block) as a ``(N, P)`` float32 dask array.

    Parameters
    ----------
    data : array-like
        ``(N, ...)``, supporting ``data[i:j]``; a store's block is read by the workers.
    n_rows, width : int
        N and P (the product of the feature axes).
    chunk_rows : int
        Rows per chunk: one task per chunk of rows.

    Returns
    -------
    dask.array.Array
        The block flattened to ``(N, P)``, float32, chunked by rows only.
    """
    da, _ = _dask()
    if isinstance(data, da.Array):
        arr = data
    else:
        chunks = (min(chunk_rows, n_rows), *tuple(int(s) for s in data.shape[1:]))
        arr = da.from_array(data, chunks=chunks, asarray=True, lock=False)
    arr = arr.reshape(n_rows, width).astype(np.float32)
    return arr.rechunk((min(chunk_rows, n_rows), width))


class DaskProducts:
    """The two ALS products of one block on the cluster.

    Parameters
    ----------
    data : dask.array.Array
        The ``(N, P)`` block (unscaled, uncentred).
    persist : bool
        Keep the block in the workers' memory (else it is read on every pass).
    """

    def __init__(self, data: Any, persist: bool) -> None:
        self._da, _ = _dask()
        self.client = current_client()
        self.data = self.client.persist(data) if persist else data
        self.mean: np.ndarray | None = None

    def centred(self) -> Any:
        """Return the block with its column means subtracted, as a lazy dask array."""
        if self.mean is None:
            return self.data
        return self.data - self.mean.astype(np.float32)

    def left(self, K: np.ndarray) -> np.ndarray:
        """Return ``Y K`` for ``K (P, k)``: one task per row chunk, ``(N, k)`` float64."""
        y = self.centred()
        Kc = np.ascontiguousarray(K, dtype=np.float32)
        out = self._da.map_blocks(
            _times, y, Kc, chunks=(y.chunks[0], (K.shape[1],)), dtype=np.float64
        )
        return np.asarray(self.client.compute(out).result())

    def right(self, A: np.ndarray) -> np.ndarray:
        """Return ``Yᵀ A`` for ``A (N, k)``: per chunk ``Y_cᵀ A_c``, tree-summed, ``(P, k)``."""
        y = self.centred()
        A_d, held = self._scattered(A, y.chunks[0])
        out = self._da.dot(y.T, A_d)  # a sum over the row chunks
        result = np.asarray(self.client.compute(out).result(), dtype=np.float64)
        del held  # the scattered chunks may go once the product is in
        return result

    def stats(self) -> tuple[np.ndarray, float, int]:
        """Return the column sums, the sum of squares (float64) and the non-finite count.

        One pass on the cluster; only the ``(P,)`` sums travel to the client.
        """
        y = self.data.astype(np.float64)
        sums, sumsq, bad = self.client.compute(
            [y.sum(axis=0), (y * y).sum(), (~self._da.isfinite(self.data)).sum()]
        )
        return np.asarray(sums.result()), float(sumsq.result()), int(bad.result())

    def take(self, rows: np.ndarray | None, cols: np.ndarray | None) -> np.ndarray:
        """Return ``Y[rows][:, cols]`` (centred as fitted), read by the workers, float64."""
        y = self.centred()
        if rows is not None:
            y = y[np.asarray(rows)]
        if cols is not None:
            y = y[:, np.asarray(cols)]
        return np.asarray(self.client.compute(y).result(), dtype=np.float64)

    def _scattered(self, A: np.ndarray, row_chunks: tuple[int, ...]) -> tuple[Any, list]:
        """Return ``A`` as a dask array whose row chunks were sent to the workers directly.

        Not embedded in the task graph: at N = 10⁶ that graph would carry 160 MB per product.
        Also returns the chunks' futures, which must be held until the product is computed
        (the array refers to them by key only).
        """
        A32 = np.ascontiguousarray(A, dtype=np.float32)
        bounds = np.cumsum((0, *row_chunks))
        chunks = [A32[a:b] for a, b in itertools.pairwise(bounds)]
        parts = self.client.scatter(chunks, hash=False)  # new keys: none shared with a release
        arr = self._da.concatenate(
            [
                self._da.from_delayed(part, (int(b - a), A.shape[1]), np.float32)
                for part, (a, b) in zip(parts, itertools.pairwise(bounds), strict=True)
            ]
        )
        return arr, parts

    def chunks(self, step: int) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, Y[rows])`` (centred as fitted) pulled to the client, ``step`` rows each."""
        n = int(self.data.shape[0])
        y = self.centred()
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            yield rows, np.asarray(self.client.compute(y[rows]).result(), dtype=np.float32)


def _times(chunk: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Return ``chunk @ K`` in float64 (one row chunk's part of ``Y K``)."""
    return (chunk @ K).astype(np.float64)


def current_client() -> Any:
    """Return the active ``dask.distributed`` client (one-line error when there is none)."""
    _, distributed = _dask()
    try:
        return distributed.get_client()
    except ValueError:
        raise FactorlensError(
            'backend="dask" needs a running dask.distributed client: start one with '
            "`dask_cluster()` (a LocalCluster) or `dask_cluster(scheduler=ADDRESS)`"
        ) from None


#: seconds to reach a scheduler before giving up with a one-line error
CONNECT_TIMEOUT = 10


def _fail(scheduler: str, what: str) -> FactorlensError:
    return FactorlensError(
        f"cannot connect to the Dask scheduler at {scheduler}: {what}; check that it runs and "
        "that the address and port are its scheduler's (usually 8786)"
    )


def _probe(scheduler: str) -> None:
    """Reach a tcp/tls scheduler's port: refused, unknown or unreachable hosts fail fast."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(scheduler)
    if parts.scheme not in ("tcp", "tls") or parts.hostname is None or parts.port is None:
        return
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT):
            pass
    except socket.gaierror:
        raise _fail(scheduler, f"host {parts.hostname!r} is unknown") from None
    except ConnectionRefusedError:
        raise _fail(scheduler, f"nothing listens on port {parts.port} there") from None
    except OSError as exc:  # timeouts and unreachable networks
        why = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise _fail(scheduler, f"{why} within {CONNECT_TIMEOUT} s") from None


def _connect(distributed: Any, scheduler: str) -> Any:
    """Return a client of the scheduler at ``scheduler``.

    Or a one-line error that says what happened, within about CONNECT_TIMEOUT seconds:
    the port is probed first, then the client is made in a thread that is given up on when
    the listener never answers as a scheduler.
    """
    import threading

    _probe(scheduler)
    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            box["client"] = distributed.Client(scheduler, timeout=f"{CONNECT_TIMEOUT}s")
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=connect, name="factorlens-dask-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT)
    if "client" in box:
        return box["client"]
    exc = box.get("error")
    if exc is None:  # still waiting: something listens there, but it is no scheduler
        raise _fail(
            scheduler,
            f"it accepted the connection but did not answer as a Dask "
            f"scheduler within {CONNECT_TIMEOUT} s",
        )
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError) or "allocate" in text:
        text = "it answered, but not as a Dask scheduler (a web server?)"
    raise _fail(scheduler, text[:200])


@contextlib.contextmanager
def dask_cluster(
    scheduler: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1
) -> Iterator[Any]:
    """Connect to a Dask cluster for ``backend="dask"``, closing what it started on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``); None starts a
        ``LocalCluster`` on this machine.
    n_workers : int, optional
        Workers of the local cluster (default: one per core).
    threads_per_worker : int
        Threads in each local worker.

    Yields
    ------
    distributed.Client
        The connected client (also the default for dask computations inside the block).
    """
    _, distributed = _dask()
    if scheduler is not None:
        with _connect(distributed, scheduler) as client:
            yield client
        return
    with _sigint_ignored():  # the worker processes inherit it (see _sigint_ignored)
        cluster = distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
        )
    with cluster, distributed.Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while the local cluster's processes start, so they keep ignoring it.

    Ctrl-C at a terminal reaches the whole process group. Without this each worker would die
    of it with a traceback while it runs a task, and the client would see its futures fail
    instead of the interruption; with it the client alone is interrupted, stops the work and
    closes the cluster. (Outside the main thread signals cannot be changed: nothing is done.)
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
