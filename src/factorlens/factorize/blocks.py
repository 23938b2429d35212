"""Data access for the engine: every block seen through two products summed over row chunks.

The ALS engine never touches a block's entries directly. It only asks, for every block ``Y``
(``N×P`` once flattened, after optional centring and scaling ``Ỹ = s·(Y − 1μᵀ)``):

* ``left(K)``  = ``Ỹ K``   — ``(N, k)`` from ``K (P, k)``, computed row chunk by row chunk;
* ``right(A)`` = ``Ỹᵀ A``  — ``(P, k)`` from ``A (N, k)``, a sum over row chunks.

Both are plain GEMMs on each chunk, so the same engine runs on arrays in memory (one chunk),
on chunked arrays on disk (zarr: one chunk at a time) and on torch tensors on a GPU. With
centring, an in-memory block is centred once into a copy and chunks read from disk are centred
as they are read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.options import EngineOptions

#: blocks smaller than this many bytes (float32) are read into memory once for the fit.
DEFAULT_MEMORY_BUDGET = EngineOptions.memory_budget


#: a centred block whose energy is at most this share of its raw energy is constant across
#: the inputs (what centring leaves of the same row repeated is float rounding, ~1e-16)
CONSTANT_SHARE = 1e-10


class Block:
    """One data block ``Y`` (shape ``(N, ...)``) with lazy centring and scaling.

    Parameters
    ----------
    name : str
        The block's name.
    data : array-like
        Array of shape ``(N, ...)`` that supports ``data[i:j]`` (numpy, zarr, torch).
    center : bool
        Subtract the column means (over samples) before everything else.
    chunk_rows : int, optional
        Rows per chunk for arrays read from disk; ``None`` = the whole block at once.
    device : str
        Where the products run: ``"cpu"`` or a torch device string such as ``"cuda"``
        (the block is then copied to that device once).
    backend : str, optional
        ``"numpy"``, ``"torch"`` or ``"dask"`` (the products on the cluster of the current
        ``dask.distributed`` client; :mod:`factorlens.factorize.distributed`); default numpy
        on ``"cpu"``, torch elsewhere.
    memory_budget : int
        Blocks up to this many bytes (as float32) are read into memory once; larger ones are
        read chunk by chunk on every pass. A numpy array is always held in memory.
    """

    def __init__(
        self,
        name: str,
        data: Any,
        *,
        center: bool = False,
        chunk_rows: int | None = None,
        device: str = EngineOptions.device,
        backend: str | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
    ) -> None:
        shape = tuple(int(s) for s in data.shape)
        if len(shape) == 0:
            raise FactorlensError(f"block {name!r} is a scalar; every block needs a sample axis")
        if len(shape) == 1:  # one number per sample: a one-column matrix
            shape = (shape[0], 1)
        self.name = name
        self.shape = shape
        self.n_rows = shape[0]
        self.width = int(np.prod(shape[1:]))
        self.center = center
        self.device = device
        self._describe()
        self._place(data, backend, chunk_rows, memory_budget)
        self.mean = np.zeros(self.width)
        self._centred = False  # set once the data are centred (after the statistics pass)
        self.sumsq = 0.0  # ‖Y − 1μᵀ‖² before scaling
        self.constant = True  # the same row for every input (set by the statistics pass)
        self._compute_stats()

    def _describe(self) -> None:
        """Set what the engine and the rank scan learn about the block besides its data."""
        self.scale = 1.0
        #: (ascending unscaled singular values, sample shape, (N, P)) once
        #: penalty.block_spectrum ran
        self.spectrum: tuple[np.ndarray, tuple[int, int], tuple[int, int]] | None = None
        #: the loadings' map back to the full features when this block is a compressed copy
        #: (compress.compressed, reduced.as_block): a ``(P, k)`` matrix with orthonormal
        #: columns, or a chain of them (reduced.map_back); None for a block fitted as it is
        self.basis: Any = None
        #: a CP block compressed in its modes (compress.compressed_modes): per mode, the
        #: ``(d_j, k)`` basis that maps the copy's mode factor back, or None for a whole mode
        self.mode_bases: list[np.ndarray | None] | None = None
        #: the full block's shape and, when centred, its per-feature means (a compressed copy)
        self.full_shape: tuple[int, ...] = self.shape
        self.full_mean: np.ndarray | None = None
        #: the first map of ``basis`` belongs to the data, not to a fit: a sketched layer's
        #: basis (reduced.as_block) or the exact row space (rowspace.coordinates). Random
        #: test matrices are then drawn at the full width, and the rank scan's chains share it
        self.data_basis = False
        #: ``basis`` spans the block's whole row space: its fits are the uncompressed fits, and
        #: random test matrices are drawn at the full width so the starts are the same too
        self.exact_basis = False
        #: the full block whose noise floor this compressed copy reads (rowspace.coordinates)
        self.source: Block | None = None

    def _place(
        self, data: Any, backend: str | None, chunk_rows: int | None, memory_budget: int
    ) -> None:
        """Hold ``data`` in memory, on the torch device or a dask cluster, or read it by chunks."""
        nbytes = self.n_rows * self.width * 4
        backend = backend or ("numpy" if self.device == "cpu" else "torch")
        if backend not in ("numpy", "torch", "dask"):
            raise FactorlensError(f"backend must be 'numpy', 'torch' or 'dask', got {backend!r}")
        #: the block's products on a dask cluster (backend "dask"), else None
        self._dask: Any = None
        if backend == "dask":
            from factorlens.factorize.distributed import DaskProducts, as_dask_array

            rows = chunk_rows or max(
                1, min((256 * 1024**2) // (self.width * 4), -(-self.n_rows // 8))
            )
            self._dask = DaskProducts(
                as_dask_array(data, self.n_rows, self.width, rows), persist=nbytes <= memory_budget
            )
            chunk_rows = rows
        # rows.Levels (8-bit images) stay levels, read by chunks: a quarter of the memory
        lazy = bool(getattr(data, "lazy", False))
        in_memory = (
            isinstance(data, np.ndarray) or (nbytes <= memory_budget and not lazy)
        ) and self._dask is None
        self.in_memory = in_memory
        self._torch = backend == "torch"
        if in_memory:
            arr = np.asarray(data[:] if not isinstance(data, np.ndarray) else data)
            arr = arr.reshape(self.n_rows, self.width)
            if arr.dtype not in (np.float32, np.float64):
                arr = arr.astype(np.float32)
            self._data: Any = arr
            self.chunk_rows = self.n_rows
        else:
            self._data = data
            self.chunk_rows = int(chunk_rows or max(1, (256 * 1024**2) // (self.width * 4)))
        if self._torch and in_memory:
            import torch

            self._data = torch.as_tensor(self._data).to(self.device)
        self._dtype = np.float64 if getattr(data, "dtype", None) == np.float64 else np.float32
        if self._torch:
            import torch

            self._dtype_torch = torch.float64 if self._dtype == np.float64 else torch.float32

    # ----------------------------------------------------------------- chunks
    def chunks(self) -> Iterator[tuple[slice, Any]]:
        """Yield ``(rows, Y[rows])`` with ``Y[rows]`` of shape ``(rows, P)``."""
        step = self.chunk_rows
        if self._dask is not None:  # pulled from the cluster, centred there
            yield from self._dask.chunks(step)
            return
        for start in range(0, self.n_rows, step):
            stop = min(start + step, self.n_rows)
            rows = slice(start, stop)
            if self.in_memory:
                yield rows, self._data
                return
            chunk = np.asarray(self._data[start:stop], dtype=np.float32)
            chunk = chunk.reshape(stop - start, self.width)
            if self._centred:
                chunk = (chunk - self.mean).astype(np.float32)
            if self._torch:
                import torch

                yield rows, torch.from_numpy(chunk).to(self.device)
            else:
                yield rows, chunk

    def _compute_stats(self) -> None:
        """Compute the column sums and the sum of squares in float64.

        The sums run over sub-chunks of ≤ 16 MiB so no float64 copy of a whole block is made
        (on a GPU the work stays on the device).
        """
        if self._dask is not None:  # on the cluster: no chunk travels to the client
            total, sumsq, bad = self._dask.stats()
        else:
            total, sumsq, bad = self._chunk_stats()
        if bad:
            raise FactorlensError(
                f"block {self.name!r} holds {bad} NaN or Inf values; recapture with "
                '`nonfinite="zero"` or remove the offending inputs'
            )
        raw = sumsq
        if self.center:
            self.mean = total / self.n_rows
            sumsq -= self.n_rows * float(self.mean @ self.mean)
            self._centre_data()
        self.sumsq = max(sumsq, 0.0)
        # constant across the inputs: all zeros, or (centred) what is left is rounding
        self.constant = self.sumsq <= CONSTANT_SHARE * raw

    def sub_chunks(self) -> Iterator[tuple[int, Any]]:
        """Yield ``(first row, Y[rows])`` in pieces small enough for a float64 copy (16 MiB).

        The pieces are those of :meth:`chunks` (centred as fitted, unscaled), cut further, so
        that a caller working in float64 never copies a whole chunk.
        """
        step = max(1, (16 * 1024**2) // (8 * self.width))
        for rows, chunk in self.chunks():
            for start in range(0, chunk.shape[0], step):
                yield rows.start + start, chunk[start : start + step]

    def _chunk_stats(self) -> tuple[np.ndarray, float, int]:
        """Return the column sums, sum of squares and non-finite count, chunk by chunk."""
        total = np.zeros(self.width)
        sumsq = 0.0
        bad = 0
        # a NaN or an infinity makes the piece's sum of squares NaN or infinite (float32
        # squares cannot overflow float64), so the values are counted only then: one pass
        # fewer over every block (the rank scan prepares each block seven times)
        for _, y in self.sub_chunks():
            if self._torch:
                y64 = y.double()
                total += y64.sum(dim=0).cpu().numpy()
                squares = float((y64 * y64).sum())
                if not math.isfinite(squares):
                    bad += int((~torch_isfinite(y64)).sum())
            else:
                y64 = y.astype(np.float64)
                total += y64.sum(axis=0)
                squares = float(np.einsum("ij,ij->", y64, y64))
                if not math.isfinite(squares):
                    bad += int(y64.size - np.isfinite(y64).sum())
            sumsq += squares
        return total, sumsq, bad

    def _centre_data(self) -> None:
        """Subtract the column means from the data itself.

        An in-memory block gets a centred copy, made once; chunks read from disk are centred
        as they are read. Folding the mean into the products instead loses most float32
        digits when the mean is large.
        """
        if self.in_memory:
            if self._torch:
                self._data = self._data - self._cast(self.mean)
            else:
                centred = np.empty(self._data.shape, dtype=self._dtype)
                step = max(1, (16 * 1024**2) // (8 * self.width))
                for start in range(0, self.n_rows, step):
                    rows = slice(start, start + step)
                    centred[rows] = self._data[rows].astype(np.float64) - self.mean
                self._data = centred
        if self._dask is not None:
            self._dask.mean = self.mean
        self._centred = True

    @property
    def dtype(self) -> Any:
        """The dtype the products run in (float32 or float64)."""
        return self._dtype

    @property
    def norm_sq(self) -> float:
        """‖Ỹ‖² (after centring and scaling)."""
        return self.scale**2 * self.sumsq

    def dense(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None) -> np.ndarray:
        """Return ``Ỹ[rows][:, cols]`` (scaled, centred as fitted) as a float64 array.

        The block is read chunk by chunk.

        Parameters
        ----------
        rows : numpy.ndarray, optional
            Sorted sample indices; ``None``: all rows.
        cols : numpy.ndarray, optional
            Column indices; ``None``: all columns.

        Returns
        -------
        numpy.ndarray
            The selected entries (selected rows × selected columns), float64.
        """
        if self._dask is not None:  # the workers read the rows and columns asked for
            return self._dask.take(rows, cols) * self.scale
        parts = []
        for span, y in self.chunks():
            y = y if isinstance(y, np.ndarray) else y.cpu().numpy()
            take = np.arange(span.start, span.stop)
            if rows is not None:
                take = take[np.isin(take, rows)]
            if take.size == 0:
                continue
            piece = y[take - span.start]
            if cols is not None:
                piece = piece[:, cols]
            parts.append(np.asarray(piece, dtype=np.float64))
        return np.concatenate(parts, axis=0) * self.scale

    # --------------------------------------------------------------- products
    def left(self, K: np.ndarray) -> np.ndarray:
        """``Ỹ K`` for ``K (P, k)``; returns ``(N, k)`` float64."""
        if self._dask is not None:
            return self._dask.left(K) * self.scale
        if self.in_memory and not self._torch:  # one product, no chunk bookkeeping
            return _scaled64(self._data @ self._cast(K), self.scale)
        out = np.empty((self.n_rows, K.shape[1]))
        Kc = self._cast(K)
        for rows, y in self.chunks():
            out[rows] = _to_numpy(y @ Kc)
        out *= self.scale
        return out

    def right(self, A: np.ndarray) -> np.ndarray:
        """``Ỹᵀ A`` for ``A (N, k)``; returns ``(P, k)`` float64."""
        if self._dask is not None:
            return self._dask.right(A) * self.scale
        if self.in_memory and not self._torch:
            return _scaled64(self._data.T @ self._cast(A), self.scale)
        out = np.zeros((self.width, A.shape[1]))
        for rows, y in self.chunks():
            out += _to_numpy(y.T @ self._cast(A[rows]))
        out *= self.scale
        return out

    def _cast(self, M: np.ndarray) -> Any:
        if self._torch:
            import torch

            return torch.as_tensor(M, dtype=self._dtype_torch, device=self.device)
        return np.ascontiguousarray(M, dtype=self._dtype)


class RowSubset:
    """Some rows of an array, read on demand: ``RowSubset(data, rows)[i:j]`` is ``data[rows[i:j]]``.

    For an array on disk (zarr) whose rows a :class:`Block` must see without reading the
    whole array: a slice is read as the span ``data[rows[i]:rows[j - 1] + 1]`` (one read) and
    the wanted rows taken from it, so memory stays at about one chunk of ``data``. Its
    ``chunks`` are ``data``'s chunk rows scaled by the share of rows kept, so a chunk of the
    subset spans about one chunk of ``data``.

    Parameters
    ----------
    data : array-like
        Shape ``(N, ...)``; supports ``data[i:j]``.
    rows : numpy.ndarray
        Sorted, distinct row indices into ``data``.
    """

    def __init__(self, data: Any, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (rows.size > 1 and np.any(np.diff(rows) <= 0)):
            raise FactorlensError("RowSubset needs sorted, distinct row indices")
        if rows.size and (rows[0] < 0 or rows[-1] >= data.shape[0]):
            raise FactorlensError(f"row indices must lie in [0, {data.shape[0]})")
        self._data = data
        self._rows = rows
        self.shape = (int(rows.size), *(int(s) for s in data.shape[1:]))
        self.dtype = data.dtype
        self.ndim = len(self.shape)
        base = getattr(data, "chunks", None)
        base_rows = int(base[0]) if isinstance(base, tuple) and base else max(1, data.shape[0])
        share = rows.size / max(1, data.shape[0])
        self.chunks = (max(1, int(base_rows * share)), *self.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("a RowSubset is read by contiguous slices, e.g. subset[i:j]")
        wanted = self._rows[index]
        if wanted.size == 0:
            return np.empty((0, *self.shape[1:]), dtype=self.dtype)
        lo = int(wanted[0])
        span = np.asarray(self._data[lo : int(wanted[-1]) + 1])
        return span[wanted - lo]


def torch_isfinite(x: Any) -> Any:
    """Return ``torch.isfinite(x)``, importing torch only when it is called."""
    import torch

    return torch.isfinite(x)


def _scaled64(x: np.ndarray, scale: float) -> np.ndarray:
    """Return ``x · scale`` as float64, in place where ``x`` is float64 already."""
    if x.dtype == np.float64:
        x *= scale
        return x
    return np.multiply(x, scale, dtype=np.float64)


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    return x.detach().to("cpu").double().numpy()


def check_blocks(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> int:
    """Validate that all blocks share the sample count; return it."""
    if not names:
        raise FactorlensError("no blocks to factorize; give the input and at least one layer")
    counts = {n: s[0] for n, s in zip(names, shapes, strict=True)}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise FactorlensError(
            f"blocks have different sample counts ({listing}); every block must hold the same "
            "inputs in the same order"
        )
    n = next(iter(counts.values()))
    if n == 0:
        raise FactorlensError("the blocks hold no samples (N = 0); give at least one input")
    return n


def block_weights(blocks: Sequence[Block], weighting: str | dict[str, float]) -> list[float]:
    """Scale factors ``s_b`` (``w_b = s_b²``) for the weighting scheme.

    ``"unit"`` (default): every block scaled to unit Frobenius norm, so each block contributes
    equally whatever its size. ``"none"``: raw data (the largest layer dominates). A dict gives
    a relative weight ``w_b`` per block name on top of ``"unit"`` (missing names get 1).
    """
    scales = []
    for b in blocks:
        norm = math.sqrt(b.sumsq)
        unit = 1.0 / norm if norm > 0 else 1.0
        if weighting == "unit":
            s = unit
        elif weighting == "none":
            s = 1.0
        elif isinstance(weighting, dict):
            s = unit * math.sqrt(float(weighting.get(b.name, 1.0)))
        else:
            raise FactorlensError(
                f"unknown weighting {weighting!r}; use 'unit', 'none' or a dict of "
                "per-block weights"
            )
        scales.append(s)
    return scales
