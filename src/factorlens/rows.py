"""Row access to input arrays that may not fit in memory: the report's side of out of core.

The report needs a few things of the test inputs ``(N, ...)``: single rows (thumbnails), the
rows of a component's top inputs, the mean over all rows, and a copy saved beside the result.
An array held in memory (numpy) is used as it is; an array on disk (a store's block, or a
result's ``images.npy`` reopened with :class:`NpyRows`) is read one chunk of rows at a time,
so memory holds at most one chunk (about 16 MiB) besides what is asked for.

numpy's own memory map would do the reading, but the pages it touches count as the process's
resident memory until the kernel drops them; reading slices into fresh buffers keeps the
process's memory at a chunk, which is what the out-of-core figures measure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from factorlens.errors import FactorlensRuntimeError

#: bytes of one chunk of rows read from an array on disk
CHUNK_BYTES = 16 * 1024**2


def holds_reals(dtype: Any) -> bool:
    """Tell whether a numpy or torch ``dtype`` holds real numbers (bool, integer or float)."""
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:  # a torch dtype: everything but complex is real
        return not getattr(dtype, "is_complex", False)


def in_memory(array: Any) -> bool:
    """Return whether ``array`` is held in memory (a numpy array) rather than read from disk."""
    return isinstance(array, np.ndarray)


def chunk_rows(array: Any) -> int:
    """Rows per read: the array's own chunk rows, else as many as fit in :data:`CHUNK_BYTES`."""
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int):
        return max(1, int(chunks[0]))
    row_bytes = int(np.prod(array.shape[1:])) * np.dtype(array.dtype).itemsize
    return max(1, CHUNK_BYTES // max(1, row_bytes))


def row_chunks(array: Any) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start, array[start:start + k])`` over all rows, one chunk at a time."""
    step = chunk_rows(array)
    for start in range(0, int(array.shape[0]), step):
        yield start, np.asarray(array[start : start + step])


def take_rows(array: Any, rows: Any) -> np.ndarray:
    """Return ``array[rows]`` for integer ``rows`` in any order (repeats allowed).

    An array on disk is read once per chunk that holds one of the rows.
    """
    idx = np.asarray(rows, dtype=np.int64).ravel()
    if in_memory(array):
        return np.asarray(array[idx])
    out = np.empty((idx.size, *array.shape[1:]), dtype=array.dtype)
    step = chunk_rows(array)
    for chunk in np.unique(idx // step):
        lo = int(chunk) * step
        block = np.asarray(array[lo : lo + step])
        hit = np.flatnonzero(idx // step == chunk)
        out[hit] = block[idx[hit] - lo]
    return out


def mean_rows(array: Any) -> np.ndarray:
    """Return the mean over the rows of ``array``, in float64 (shape ``array.shape[1:]``)."""
    if in_memory(array):
        return array.mean(axis=0, dtype=np.float64)
    total = np.zeros(array.shape[1:], dtype=np.float64)
    for _, chunk in row_chunks(array):
        total += chunk.sum(axis=0, dtype=np.float64)
    return total / max(1, int(array.shape[0]))


def rows_equal(a: Any, b: Any) -> bool:
    """Return whether two ``(N, ...)`` arrays have the same shape and entries, chunk by chunk."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    if in_memory(a) and in_memory(b):
        return bool(np.array_equal(a, b))
    return all(
        np.array_equal(chunk, np.asarray(b[start : start + len(chunk)]))
        for start, chunk in row_chunks(a)
    )


def write_npy(path: Path, array: Any) -> None:
    """Write ``array`` as float32 to the ``.npy`` file ``path``, one chunk of rows at a time."""
    shape = tuple(int(s) for s in array.shape)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "shape": shape}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, {**header, "fortran_order": False})
        for _, chunk in row_chunks(array):
            fh.write(np.ascontiguousarray(chunk, dtype=np.float32).tobytes())


class NpyRows:
    """A ``.npy`` file of shape ``(N, ...)`` read by row slices: ``NpyRows(path)[i:j]``.

    Parameters
    ----------
    path : str or os.PathLike
        A C-ordered ``.npy`` file (as :func:`write_npy` writes).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read is None:
                    raise ValueError(f".npy format version {version} is not read here")
                shape, fortran, dtype = read(fh)
                self._offset = fh.tell()
        except (OSError, ValueError) as exc:
            raise FactorlensRuntimeError(
                f"{self.path} is damaged ({exc}); rerun `factorlens analyze` to recreate it"
            ) from None
        expected = self._offset + int(np.prod(shape)) * dtype.itemsize
        if fortran or len(shape) < 1 or self.path.stat().st_size != expected:
            raise FactorlensRuntimeError(
                f"{self.path} is damaged (truncated or not C-ordered); rerun `factorlens "
                "analyze` to recreate it"
            )
        self.shape = tuple(int(s) for s in shape)
        self.dtype = dtype
        self.ndim = len(self.shape)
        self._row = int(np.prod(self.shape[1:])) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("an NpyRows is read by contiguous slices, e.g. rows[i:j]")
        start, stop, _ = index.indices(self.shape[0])
        count = max(0, stop - start)
        with open(self.path, "rb") as fh:
            fh.seek(self._offset + start * self._row)
            flat = np.fromfile(
                fh, dtype=self.dtype, count=count * (self._row // self.dtype.itemsize)
            )
        return flat.reshape((count, *self.shape[1:]))


class Levels:
    """8-bit images held as their uint8 levels and read as float32 in [0, 1] (÷ 255).

    A quarter of the memory of the float32 images it stands for: 2,000 colour images at
    224 px are 0.3 GB instead of 1.2 GB. Read by rows like the other arrays here: an integer,
    a slice or a tuple index gives float32 values; a 1-D array of rows gives the levels of
    those rows (another :class:`Levels`, nothing converted); ``numpy.asarray`` gives the
    whole float32 array.

    Parameters
    ----------
    levels : numpy.ndarray
        uint8 ``(N, ...)``.
    """

    #: read by row chunks by the engine and the report, never converted as a whole
    lazy = True

    def __init__(self, levels: np.ndarray) -> None:
        if levels.dtype != np.uint8:
            raise TypeError(f"Levels holds uint8 levels, got {levels.dtype}")
        self.levels = np.ascontiguousarray(levels)
        self.shape = tuple(int(s) for s in levels.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = len(self.shape)

    @staticmethod
    def to_float(levels: np.ndarray) -> np.ndarray:
        """Return uint8 ``levels`` as float32 in [0, 1] (the same values ``uint8 / 255`` gives)."""
        out = levels.astype(np.float32)
        out /= np.float32(255.0)
        return out

    @property
    def size(self) -> int:
        """The number of values, as numpy's ``size``."""
        return int(self.levels.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> Any:
        part = self.levels[index]
        rows = np.asarray(index) if isinstance(index, list | np.ndarray) else None
        if rows is not None and rows.ndim == 1 and (rows.dtype == bool or rows.dtype.kind in "iu"):
            return Levels(part)
        return self.to_float(np.asarray(part))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.to_float(self.levels)
        return out if dtype is None else out.astype(dtype, copy=False)

    def min(self) -> float:
        """Return the smallest value, in [0, 1]."""
        return float(self.levels.min()) / 255.0 if self.levels.size else 0.0

    def max(self) -> float:
        """Return the largest value, in [0, 1]."""
        return float(self.levels.max()) / 255.0 if self.levels.size else 0.0

    def squeeze_channel(self) -> Levels:
        """Return ``(N, H, W)`` levels of ``(N, 1, H, W)`` ones (the grayscale input block)."""
        return Levels(self.levels[:, 0]) if self.ndim == 4 and self.shape[1] == 1 else self
