"""The activation store: named blocks of activations with their natural shapes.

A store holds one block per captured tensor, every block with one row per sample:

* ``"input"`` (kind ``"input"``): the inputs as loaded, ``N×H×W`` / ``N×C×H×W`` / ``N×D``;
* one block per captured layer (kind ``"layer"``) with the layer's output shape ``N×…``;
* optionally the model's own output (kind ``"output"``), e.g. class scores ``N×K``.

Blocks are read as float32 (a store on disk may hold them as float16: :meth:`ZarrStore.create`'s
``dtype``). A store also keeps optional integer labels ``(N,)`` and a JSON-able ``meta`` dict
(model and data description, class names, layer list, capture settings).

Two back ends share the :class:`ActivationStore` API:

* :class:`MemoryStore` keeps numpy arrays in RAM;
* :class:`ZarrStore` writes a zarr v3 directory, chunked along the sample axis and written
  chunk by chunk, so writing never holds more than one batch plus one chunk per block.
  Only :meth:`ZarrStore.close` marks it complete; :func:`open_store` reopens a complete store
  read-only (no model needed) and refuses an incomplete one.

On-disk layout (format version 1; 2 for a store of float16 chunks, which an older factorlens
would read as float16 and refuses instead)::

    PATH/zarr.json         group; attributes: factorlens_store (format), complete, n_samples,
                           blocks ([{name, shape, kind, module, array, chunk_rows}]), meta,
                           has_labels
    PATH/b000/ …           one float32 (or float16) array per block, chunks
                           (chunk_rows, *sample_shape),
                           each chunk raw (default) or zstd-compressed, with a crc32c
                           checksum
    PATH/labels/           int64 (N,), only when labels were given
    PATH/capture-progress.json   while capturing only: the rows written so far (for resuming)

Damage is an error, never zeros: :func:`open_store` refuses a store with a chunk file missing,
and reading a chunk whose checksum fails raises :class:`FactorlensError` naming the block.
An interrupted capture can be continued with :meth:`ZarrStore.resume`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from factorlens.errors import FactorlensError, FactorlensRuntimeError, close_matches
from factorlens.options import CaptureOptions
from factorlens.output import (
    atomic_write_text,
    json_safe,
    owner_alive,
    process_owner,
    write_new_file,
)

#: the format version written for each number type of the chunks
DTYPE_VERSIONS = {"float32": 1, "float16": 2}
#: the newest on-disk format version this module reads
FORMAT_VERSION = max(DTYPE_VERSIONS.values())
#: the largest magnitude float16 holds
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: the attribute that identifies a factorlens store.
STORE_KEY = "factorlens_store"
#: how chunks may be stored (see :meth:`ZarrStore.create`)
COMPRESSIONS = ("none", "zstd")
#: target size of one on-disk chunk (bytes).
CHUNK_BYTES = 16 * 1024**2
#: block kinds.
KINDS = ("input", "layer", "output")
#: the file an unfinished store keeps its resume point in
PROGRESS_JSON = "capture-progress.json"
#: inside a store being written: the writing process, ``"<pid> <start time>"``
WRITER_FILE = ".factorlens-writer"


@dataclass
class _Spec:
    """Book-keeping for one block."""

    name: str
    sample_shape: tuple[int, ...]
    kind: str
    module: str
    n_rows: int = 0
    expected: int | None = None
    chunk_rows: int | None = None
    key: str = ""


def default_chunk_rows(
    sample_shape: Sequence[int], chunk_bytes: int = CHUNK_BYTES, multiple: int = 1
) -> int:
    """Rows per chunk so one float32 chunk is about ``chunk_bytes``.

    A whole number of ``multiple`` rows (at least one): with ``multiple`` the capture's batch
    size, a batch of a wide block is one chunk, written as it comes, never copied to be joined.
    """
    row_bytes = 4 * math.prod(int(s) for s in sample_shape)
    if row_bytes <= 0:
        return 1024
    rows = max(1, chunk_bytes // row_bytes)
    return max(1, round(rows / multiple)) * multiple


class ActivationStore(ABC):
    """Named float32 blocks ``(N, ...)`` plus labels and metadata (see module docstring).

    Writing: :meth:`create_block`, :meth:`append`, :meth:`set_labels`, :meth:`set_meta`,
    :meth:`close`. Reading: :attr:`names`, :meth:`block`, :meth:`info`, :attr:`labels`,
    :attr:`meta`, :attr:`n_samples`, :meth:`iter_rows`, :meth:`to_memory`.
    """

    def __init__(self) -> None:
        self._specs: dict[str, _Spec] = {}
        self._labels: np.ndarray | None = None
        self._meta: dict[str, Any] = {}
        self._closed = False
        self._readonly = False

    # ------------------------------------------------------------ reading
    @property
    def names(self) -> list[str]:
        """Block names, input blocks first, then layers in creation (network) order.

        The model's output, when captured, comes last.
        """
        return [n for kind in KINDS for n, s in self._specs.items() if s.kind == kind]

    @property
    def closed(self) -> bool:
        """True once the store is finalized (then it is read-only)."""
        return self._closed

    @property
    def labels(self) -> np.ndarray | None:
        """Integer labels ``(N,)`` int64, or None."""
        return self._labels

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata dict (JSON-able)."""
        return self._meta

    @property
    def n_samples(self) -> int:
        """Number of samples N (rows of the first block while writing; 0 without blocks)."""
        names = self.names
        return self._specs[names[0]].n_rows if names else 0

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def _spec(self, name: str) -> _Spec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(self.names) or "none"
            raise FactorlensError(
                f"no block named {name!r} in the store{close_matches(name, self.names)}; "
                f"blocks are: {known}"
            ) from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Full shape ``(N, ...)`` of block ``name``."""
        spec = self._spec(name)
        return (spec.n_rows, *spec.sample_shape)

    def info(self, name: str) -> dict[str, Any]:
        """``{"name", "shape", "kind", "module", "chunk_rows"}`` of block ``name``."""
        spec = self._spec(name)
        return {
            "name": spec.name,
            "shape": (spec.n_rows, *spec.sample_shape),
            "kind": spec.kind,
            "module": spec.module,
            "chunk_rows": spec.chunk_rows,
        }

    @abstractmethod
    def block(self, name: str) -> Any:
        """Array-like ``(N, ...)`` with ``.shape``, ``.dtype``; ``[i:j]`` gives float32 ndarray."""

    def iter_rows(
        self, name: str, chunk_rows: int | None = None
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, rows)`` with ``rows`` float32 ``(≤chunk_rows, ...)``, in order.

        ``chunk_rows`` defaults to the block's on-disk chunk (or the whole block in memory).
        """
        spec = self._spec(name)
        step = int(chunk_rows or spec.chunk_rows or max(spec.n_rows, 1))
        if step < 1:
            raise FactorlensError(f"chunk_rows must be a positive integer, got {chunk_rows}")
        arr = self.block(name)
        for start in range(0, spec.n_rows, step):
            yield start, np.asarray(arr[start : start + step], dtype=np.float32)

    def to_memory(self) -> MemoryStore:
        """Return a closed :class:`MemoryStore` with the same blocks, labels and meta."""
        if not self._closed:
            raise FactorlensError("the store is still being written; call close() first")
        mem = MemoryStore()
        for name in self.names:
            spec = self._specs[name]
            mem.create_block(name, spec.sample_shape, spec.kind, spec.module, n_samples=spec.n_rows)
            for _, rows in self.iter_rows(name):
                mem.append(name, rows)
        mem.set_labels(self._labels)
        mem.set_meta(self._meta)
        mem.close()
        return mem

    # ------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if self._readonly or self._closed:
            raise FactorlensError(
                "the store is closed and read-only; create a new store to write activations"
            )

    def create_block(
        self,
        name: str,
        sample_shape: Sequence[int],
        kind: str = "layer",
        module: str = "",
        n_samples: int | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        """Declare block ``name`` with per-sample shape ``sample_shape`` (rows come later).

        ``kind`` is ``"input"``, ``"layer"`` or ``"output"``; ``module`` the layer's type (``"Conv2d"``);
        ``n_samples`` (optional) the final number of rows, checked at :meth:`close`;
        ``chunk_rows`` (optional) this block's rows per on-disk chunk.
        """
        self._check_writable()
        if not isinstance(name, str) or not name:
            raise FactorlensError(f"block name must be a non-empty string, got {name!r}")
        if name in self._specs:
            raise FactorlensError(f"block {name!r} already exists in the store; use another name")
        if kind not in KINDS:
            raise FactorlensError(f"block kind must be one of {', '.join(KINDS)}, got {kind!r}")
        shape = tuple(int(s) for s in sample_shape)
        if any(s < 0 for s in shape):
            raise FactorlensError(f"block {name!r} has a negative dimension in shape {shape}")
        if n_samples is not None and int(n_samples) < 0:
            raise FactorlensError(f"n_samples must be >= 0, got {n_samples}")
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise FactorlensError(f"chunk_rows must be a positive integer, got {chunk_rows}")
        spec = _Spec(
            name=name,
            sample_shape=shape,
            kind=kind,
            module=str(module),
            expected=None if n_samples is None else int(n_samples),
            key=f"b{len(self._specs):03d}",
            chunk_rows=None if chunk_rows is None else int(chunk_rows),
        )
        self._specs[name] = spec
        self._create(spec)

    def append(self, name: str, batch: Any, copy: bool = True) -> None:
        """Append rows ``batch`` of shape ``(n, *sample_shape)`` to block ``name`` (as float32).

        With ``copy=False`` a float32 ndarray is kept as it is, not copied: the caller hands it
        over and must not change it afterwards.
        """
        self._check_writable()
        spec = self._spec(name)
        # a copy by default: the caller may reuse its buffer after append() returns
        arr = (
            np.array(batch, dtype=np.float32, copy=True) if copy else np.asarray(batch, np.float32)
        )
        if arr.ndim == 0 or tuple(arr.shape[1:]) != spec.sample_shape:
            raise FactorlensError(
                f"batch for block {name!r} has shape {tuple(arr.shape)} but the block holds "
                f"rows of shape {spec.sample_shape}; every batch must have shape "
                f"(n, {', '.join(map(str, spec.sample_shape))})"
            )
        n = int(arr.shape[0])
        if spec.expected is not None and spec.n_rows + n > spec.expected:
            raise FactorlensError(
                f"block {name!r} was declared with n_samples={spec.expected} but now gets "
                f"{spec.n_rows + n} rows; declare the right n_samples or pass None"
            )
        if n == 0:
            return
        self._append(spec, arr)
        spec.n_rows += n

    def set_labels(self, labels: Any) -> None:
        """Set the integer labels ``(N,)`` (stored as int64), or None to drop them."""
        self._check_writable()
        if labels is None:
            self._labels = None
            return
        arr = np.asarray(labels)
        if arr.ndim != 1:
            raise FactorlensError(
                f"labels must be a 1-D array with one integer per sample, got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            if arr.size and (
                not np.issubdtype(arr.dtype, np.number)
                or not np.all(np.isfinite(arr))
                or not np.all(arr == np.round(arr))
            ):
                raise FactorlensError(
                    f"labels must be integers, got dtype {arr.dtype}; map class names to "
                    "integer ids first"
                )
        self._labels = arr.astype(np.int64)

    def set_meta(self, meta: Mapping[str, Any] | None = None, /, **kwargs: Any) -> None:
        """Merge ``meta`` and keyword values into :attr:`meta` (values must be JSON-able)."""
        self._check_writable()
        update = dict(meta or {})
        update.update(kwargs)
        self._meta.update(json_safe(update))

    def close(self) -> None:
        """Finalize: check every block has the same number of rows, flush, mark complete.

        Idempotent; afterwards the store is read-only.
        """
        if self._closed:
            return
        if self._readonly:
            self._closed = True
            return
        counts = {name: self._specs[name].n_rows for name in self.names}
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{k}={v}" for k, v in counts.items())
            raise FactorlensError(
                f"blocks with different sample counts ({listing}); every block needs exactly "
                "one row per sample"
            )
        for spec in self._specs.values():
            if spec.expected is not None and spec.n_rows != spec.expected:
                raise FactorlensError(
                    f"block {spec.name!r} has {spec.n_rows} rows but was declared with "
                    f"n_samples={spec.expected}; append every sample before close()"
                )
        n = next(iter(counts.values()), None)
        if self._labels is not None and n is not None and len(self._labels) != n:
            raise FactorlensError(
                f"{len(self._labels)} labels for {n} samples; give exactly one label per sample"
            )
        self._finalize()
        self._closed = True

    # ----------------------------------------------------- back-end hooks
    @abstractmethod
    def _create(self, spec: _Spec) -> None:
        """Back end: allocate block ``spec``."""

    @abstractmethod
    def _append(self, spec: _Spec, arr: np.ndarray) -> None:
        """Back end: append float32 rows ``arr`` to block ``spec``."""

    @abstractmethod
    def _finalize(self) -> None:
        """Back end: flush everything and mark the store complete."""

    def __repr__(self) -> str:
        blocks = ", ".join(f"{n}{self.shape(n)}" for n in self.names)
        state = "closed" if self._closed else "open"
        return f"{type(self).__name__}({state}; {blocks})"


class MemoryStore(ActivationStore):
    """An activation store in RAM (numpy arrays).

    Without ``n_samples`` batches are kept in a list and concatenated lazily on first read;
    with ``n_samples`` given to :meth:`create_block` the block is preallocated.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parts: dict[str, list[np.ndarray]] = {}
        self._arrays: dict[str, np.ndarray] = {}

    def _create(self, spec: _Spec) -> None:
        if spec.expected is not None:
            self._arrays[spec.name] = np.empty((spec.expected, *spec.sample_shape), np.float32)
        else:
            self._parts[spec.name] = []

    def _append(self, spec: _Spec, arr: np.ndarray) -> None:
        if spec.expected is not None:
            self._arrays[spec.name][spec.n_rows : spec.n_rows + len(arr)] = arr
        else:
            self._parts[spec.name].append(arr)  # append() copied it or was handed it

    def block(self, name: str) -> Any:
        """Return the block as a float32 ndarray ``(N, ...)`` (read-only once closed).

        8-bit images held as :class:`~factorlens.rows.Levels` are returned as levels (read by
        rows where they are used): slicing them would make the whole float32 array, 1.2 GB
        for 2,000 colour images at 224 px, on every call.
        """
        spec = self._spec(name)
        held: Any = self._arrays.get(name)
        if getattr(held, "lazy", False):
            return held if len(held) == spec.n_rows else held[np.arange(spec.n_rows)]
        if spec.expected is not None:
            arr = self._arrays[name][: spec.n_rows]
        else:
            parts = self._parts[name]
            if len(parts) != 1:
                empty = np.empty((0, *spec.sample_shape), np.float32)
                parts[:] = [np.concatenate(parts, axis=0) if parts else empty]
            arr = parts[0]
        if self._closed:
            arr = arr.view()
            arr.flags.writeable = False
        return arr

    def _finalize(self) -> None:
        for name in self._parts:
            self.block(name)  # concatenate once

    def to_memory(self) -> MemoryStore:
        """Return the store itself (it is already in memory)."""
        if not self._closed:
            raise FactorlensError("the store is still being written; call close() first")
        return self


#: entries of a capture's meta that only say where the model, weights and data were read
#: from: their contents are hashed in the fingerprint, so a copy or another path resumes
_WHERE_FROM = ("model", "data")


def _decisive(value: Any, key: str) -> Any:
    """Return a fingerprint entry as far as it decides the rows (meta without paths)."""
    if key == "meta" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in _WHERE_FROM}
    return value


#: a capture fingerprint's hashed entries, as a resume's refusal names them
_FINGERPRINT_WORDS = {
    "code_sha256": "code_sha256: the model file's code or the preprocess hook",
    "weights_sha256": "weights_sha256: the weights' values",
    "inputs_sha256": "inputs_sha256: the inputs",
}


class ZarrStore(ActivationStore):
    """An activation store in a zarr v3 directory, chunked along the sample axis.

    Create with :meth:`ZarrStore.create` (writing) or :func:`open_store` (reading). Rows are
    buffered per block until a full chunk of ``chunk_rows`` samples is ready, then that chunk
    is written; :meth:`close` writes the remainders, the labels, the metadata and finally the
    completion marker (``complete: true``).
    """

    #: seconds between writes of every block's buffered rows while capturing (resume points)
    sync_seconds: float = 30.0

    def __init__(self, path: Path, group: Any, *, chunk_rows: int | None, readonly: bool) -> None:
        super().__init__()
        self.path = path
        self._group = group
        self._chunk_rows = chunk_rows
        self._readonly = readonly
        self._arrays: dict[str, Any] = {}
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._written: dict[str, int] = {}
        self._created_dir = False
        self._marks: list[tuple[int, dict[str, int]]] = []
        self._fsynced: dict[str, int] = {}  # chunks of each block known to be on disk
        self._resume_row = 0
        self._capture: dict[str, Any] = {}  # the capture's settings, which a progress file names
        self._synced = time.monotonic()
        self._compression = "none"
        self._dtype = "float32"
        self._chunk_multiple = 1
        self._shard = False  # one worker's row range (open_shard)

    # ------------------------------------------------------------- create
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        overwrite: bool = False,
        chunk_rows: int | None = None,
        fingerprint: Mapping[str, Any] | None = None,
        compression: str = CaptureOptions.compression,
        chunk_multiple: int = 1,
        dtype: str = CaptureOptions.store_dtype,
    ) -> ZarrStore:
        """Start a new store at directory ``path``.

        An existing non-empty ``path`` is refused unless ``overwrite=True`` (and even then only
        when it is a factorlens store, never an unrelated directory or file). ``chunk_rows``
        fixes the rows per chunk for every block; by default each block gets about 16 MiB.
        ``fingerprint`` (JSON-able capture settings) is kept so that :meth:`resume` can check
        it continues the same capture. ``compression`` is ``"none"`` (default: chunks as raw
        float32, the fastest to write and read) or ``"zstd"`` (about half the disk for ReLU
        outputs, writes about 10x and reads about 2.5x slower on a 2-core box); every chunk
        carries a crc32c checksum either way. ``chunk_multiple`` makes the default rows per
        chunk a multiple of it (the batch size of a capture). ``dtype`` is how chunks hold
        the values: ``"float32"`` (default) or ``"float16"`` (half the bytes; each value
        rounded to 11 significant bits, a relative error of at most 2⁻¹¹; a value beyond
        ±65,504 is refused with an error); blocks are read back as float32 either way.
        """
        import zarr

        if dtype not in DTYPE_VERSIONS:
            raise FactorlensError(
                f"dtype must be one of {', '.join(DTYPE_VERSIONS)}, got {dtype!r}"
            )
        if compression not in COMPRESSIONS:
            raise FactorlensError(
                f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}"
            )
        p = Path(path)
        if chunk_rows is not None and int(chunk_rows) < 1:
            raise FactorlensError(f"chunk_rows must be a positive integer, got {chunk_rows}")
        existed = p.exists()
        if existed:
            if not p.is_dir():
                raise FactorlensError(
                    f"{p} exists and is a file, not a store directory; choose another path"
                )
            if any(p.iterdir()):
                check_not_being_written(p)
                if not overwrite:
                    raise FactorlensError(
                        f"{p} already exists and is not empty; pass `overwrite=True` to "
                        "replace it or choose another path"
                    )
                if _read_root_attrs(p).get(STORE_KEY) is None:
                    raise FactorlensError(
                        f"{p} is not a factorlens store, so it is not overwritten even with "
                        "`overwrite=True`; choose another path"
                    )
                shutil.rmtree(p)
                existed = False
        try:
            group = zarr.open_group(str(p), mode="w", zarr_format=3)
            group.attrs.update(
                {
                    STORE_KEY: DTYPE_VERSIONS[dtype],
                    "complete": False,
                    "blocks": [],
                    "meta": {},
                    "capture": json_safe(dict(fingerprint or {})),
                    "every_chunk_written": True,
                }
            )
        except OSError as exc:
            raise FactorlensError(
                f"cannot create a store at {p}: {exc}; choose another path"
            ) from exc
        store = cls(
            p, group, chunk_rows=None if chunk_rows is None else int(chunk_rows), readonly=False
        )
        store._created_dir = not existed
        store._capture = json_safe(dict(fingerprint or {}))
        _mark_writer(p)
        store._compression = compression
        store._dtype = dtype
        store._chunk_multiple = max(1, int(chunk_multiple))
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ZarrStore:
        """Reopen a complete store read-only (same as :func:`open_store`)."""
        import zarr

        p = Path(path)
        if not p.exists():
            raise FactorlensError(f"no activation store at {p}; check the path or run the capture")
        attrs = _read_root_attrs(p)
        if attrs.get(STORE_KEY) is None:
            raise FactorlensError(
                f"{p} is not a factorlens activation store; pass the directory written by capture"
            )
        if int(attrs[STORE_KEY]) > FORMAT_VERSION:
            raise FactorlensError(
                f"{p} was written by a newer factorlens (store format {attrs[STORE_KEY]}); "
                "upgrade factorlens"
            )
        if attrs.get("complete") is not True:
            check_not_being_written(p)
            raise FactorlensError(
                f"incomplete store at {p}: its capture was interrupted; rerun the same capture "
                "with `resume=True` to continue it, or with `overwrite=True` to start again"
            )
        group = zarr.open_group(str(p), mode="r", zarr_format=3)
        store = cls(p, group, chunk_rows=None, readonly=True)
        n = int(attrs.get("n_samples", 0))
        # completeness is read off the chunk files, never off an editable flag (a store from
        # before every chunk got a file, all-zero ones included, is refused: capture it again)
        for rec in attrs.get("blocks", []):
            _check_chunks(p, rec["name"], group, rec["array"])
            _check_seals(p, rec["name"], rec["array"], attrs)
        for rec in attrs.get("blocks", []):
            shape = tuple(int(s) for s in rec["shape"])
            store._specs[rec["name"]] = _Spec(
                name=rec["name"],
                sample_shape=shape[1:],
                kind=rec["kind"],
                module=rec.get("module", ""),
                n_rows=n,
                expected=n,
                chunk_rows=rec.get("chunk_rows"),
                key=rec["array"],
            )
        if attrs.get("has_labels"):
            _check_chunks(p, "labels", group, "labels")
            _check_seals(p, "labels", "labels", attrs)
            store._labels = np.asarray(
                _CheckedArray(group["labels"], "labels", p)[:], dtype=np.int64
            )
        store._meta = dict(attrs.get("meta", {}))
        store._closed = True
        return store

    # ------------------------------------------------------------ back end
    def _records(self) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "shape": [s.n_rows, *s.sample_shape],
                "kind": s.kind,
                "module": s.module,
                "array": s.key,
                "chunk_rows": s.chunk_rows,
                "expected": s.expected,
            }
            for s in (self._specs[n] for n in self.names)
        ]

    def _create(self, spec: _Spec) -> None:
        chunk_rows = (
            spec.chunk_rows
            or self._chunk_rows
            or default_chunk_rows(spec.sample_shape, multiple=self._chunk_multiple)
        )
        if spec.chunk_rows is None and self._chunk_rows is None and spec.expected:
            chunk_rows = min(chunk_rows, spec.expected)  # no chunk larger than the block
        spec.chunk_rows = chunk_rows
        n0 = spec.expected if spec.expected is not None else 0
        chunks = (spec.chunk_rows, *(max(1, s) for s in spec.sample_shape))
        from zarr.codecs import Crc32cCodec, ZstdCodec

        zstd = [ZstdCodec(level=0)] if self._compression == "zstd" else []
        codecs = [*zstd, Crc32cCodec()]
        self._arrays[spec.name] = self._group.create_array(
            spec.key,
            shape=(n0, *spec.sample_shape),
            chunks=chunks,
            dtype=self._dtype,
            fill_value=0.0,
            compressors=codecs,
            config={"write_empty_chunks": True},  # every chunk has a file: a missing one is damage
        )
        self._buffers[spec.name] = []
        self._written[spec.name] = 0
        self._group.attrs["blocks"] = self._records()

    def _append(self, spec: _Spec, arr: np.ndarray) -> None:
        if self._arrays[spec.name].dtype == np.float16:  # halved here, on the writer's thread
            arr = _to_float16(spec.name, arr, spec.n_rows)
        self._buffers[spec.name].append(arr)  # append() copied it or was handed it
        buffered = spec.n_rows + len(arr) - self._written[spec.name]
        if buffered >= (spec.chunk_rows or 1):
            self._flush(spec, final=False)

    def _flush(self, spec: _Spec, *, final: bool) -> None:
        """Write the buffered rows of ``spec``: whole chunks only, or everything if ``final``."""
        parts = self._buffers[spec.name]
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        step = spec.chunk_rows or 1
        start = self._written[spec.name]
        # up to the last chunk boundary (after a partial write, the next one realigns)
        k = len(data) if final else max(0, ((start + len(data)) // step) * step - start)
        if k == 0:
            self._buffers[spec.name] = [data]
            return
        arr = self._arrays[spec.name]
        if arr.shape[0] < start + k:
            arr.resize((start + k, *spec.sample_shape))
        arr[start : start + k] = data[:k]
        self._written[spec.name] = start + k
        self._buffers[spec.name] = [data[k:]] if k < len(data) else []

    # ------------------------------------------------------------ resuming
    def mark_batch(self, stop: int, counts: Mapping[str, int]) -> None:
        """Record that every block holds rows ``[0, stop)`` (a batch boundary).

        With the capture's non-finite ``counts`` so far; the latest boundary whose rows are
        all on disk becomes the resume point (``capture-progress.json``, replaced atomically).

        Every :attr:`sync_seconds` the buffered rows of every block are written out too (a
        partial chunk is rewritten when it fills), so a block whose chunk holds many rows
        does not hold the resume point back.
        """
        if self._shard:  # the client completes a sharded store; no worker resumes one
            return
        self._marks.append((int(stop), dict(counts)))
        now = time.monotonic()
        if now - self._synced >= self.sync_seconds:
            self.flush()
            self._synced = now
        durable = min(self._written.values(), default=0)
        ready = [m for m in self._marks if m[0] <= durable]
        if not ready or ready[-1][0] <= self._resume_row:
            return
        row, at = ready[-1]
        self._marks = [m for m in self._marks if m[0] > row]
        self._resume_row = row
        self._sync_chunks(row)  # on disk before the progress file names them
        atomic_write_text(self.path / PROGRESS_JSON, _progress_text(row, at, self._capture))

    def _sync_chunks(self, row: int) -> None:
        """Flush to disk the chunk files that hold rows ``[0, row)`` not flushed yet."""
        for spec in self._specs.values():
            step = int(spec.chunk_rows or 0)
            if step <= 0:
                continue
            done = self._fsynced.get(spec.name, 0)
            for i in range(done, -(-row // step)):
                for chunk in _chunk_dir(self.path, spec.key, i).rglob("*"):
                    if chunk.is_file():
                        _fsync(chunk)
            self._fsynced[spec.name] = row // step  # a partial last chunk is synced again

    @classmethod
    def resume(
        cls, path: str | os.PathLike[str], fingerprint: Mapping[str, Any]
    ) -> tuple[ZarrStore, int, dict[str, int]]:
        """Reopen the interrupted capture at ``path`` for writing.

        Parameters
        ----------
        path : str or os.PathLike
            The store directory of the interrupted capture.
        fingerprint : mapping
            The capture's settings; must equal the one the capture started with.

        Returns
        -------
        store : ZarrStore
            The store, open for appending.
        rows : int
            Every block holds its first ``rows`` samples (a batch boundary).
        counts : dict of str to int
            The non-finite values replaced in them, per block.
        """
        p = Path(path)
        state = store_state(p)
        if state is None:
            raise FactorlensError(
                f"no interrupted capture at {p} to resume; run the capture without `resume=True`"
            )
        check_not_being_written(p)
        if state == "complete":
            cls.open(p)  # a damaged one says so here (the advice below would lead to it)
            raise FactorlensError(
                f"the capture at {p} is already complete, nothing to resume; analyse it with "
                "`analyze_store` (or pass `overwrite=True`, not `resume=True`, to capture again)"
            )
        attrs = _read_root_attrs(p)
        before = attrs.get("capture") or {}
        want = json_safe(dict(fingerprint))
        keys = sorted(
            k
            for k in set(before) | set(want)
            if _decisive(before.get(k), k) != _decisive(want.get(k), k)
        )
        if keys:
            named = [_FINGERPRINT_WORDS.get(k, k) for k in keys]
            raise FactorlensError(
                f"the interrupted capture at {p} was started with other settings (differs in "
                f"{', '.join(named)}); resume with the same model, weights, data and options, "
                "or pass `overwrite=True` to start again"
            )
        rows, counts = _read_progress(p, before)
        _check_progress(p, attrs, want, rows)
        for debris in p.rglob("*.partial"):  # zarr's temporary file of a chunk being written
            debris.unlink()
        store = cls._writable(p, attrs, rows)
        store._resume_row = rows
        store._capture = before
        _mark_writer(p)
        return store, rows, counts

    @classmethod
    def _writable(cls, p: Path, attrs: Mapping[str, Any], rows: int) -> ZarrStore:
        """Reopen the unfinished store at ``p`` for writing every block from row ``rows``.

        The rows of the chunk that ``rows`` falls into are read back into the buffers, so
        that chunk is rewritten whole when it fills.
        """
        import zarr

        group = zarr.open_group(str(p), mode="r+", zarr_format=3)
        store = cls(p, group, chunk_rows=None, readonly=False)
        for rec in attrs.get("blocks", []):
            shape = tuple(int(s) for s in rec["shape"])
            spec = _Spec(
                name=rec["name"],
                sample_shape=shape[1:],
                kind=rec["kind"],
                module=rec.get("module", ""),
                n_rows=rows,
                expected=rec.get("expected"),
                chunk_rows=rec.get("chunk_rows"),
                key=rec["array"],
            )
            store._specs[spec.name] = spec
            arr = group[spec.key]
            first = (rows // (spec.chunk_rows or 1)) * (spec.chunk_rows or 1)
            store._arrays[spec.name] = arr
            store._written[spec.name] = first
            rows_back = _CheckedArray(arr, spec.name, p)[first:rows] if first < rows else None
            # read back as float32; float16 values are exact there, and cast back on writing
            store._buffers[spec.name] = [] if rows_back is None else [np.asarray(rows_back)]
        return store

    # ------------------------------------------------------------ shards
    @classmethod
    def open_shard(cls, path: str | os.PathLike[str], start: int) -> ZarrStore:
        """Reopen the unfinished store at ``path`` to write rows from ``start`` on (one shard).

        Used by :func:`factorlens.sharded.capture_sharded`: every worker writes its own row
        range, ``start`` on a chunk boundary of every block, then calls :meth:`flush`.
        A shard records no resume point, and only :meth:`finish_shards` (on the client, after
        every shard) completes the store.
        """
        p = Path(path)
        if store_state(p) != "incomplete":
            raise FactorlensError(f"no unfinished store at {p} to write a shard into")
        store = cls._writable(p, _read_root_attrs(p), int(start))
        for spec in store._specs.values():
            if start % (spec.chunk_rows or 1):
                raise FactorlensError(
                    f"shard start {start} is not on a chunk boundary of block {spec.name!r} "
                    f"({spec.chunk_rows} rows a chunk)"
                )
        store._shard = True
        return store

    def flush(self) -> None:
        """Write every block's buffered rows (a partial chunk is rewritten when it fills).

        A worker calls it at the end of its shard; while capturing, :meth:`mark_batch` does
        every :attr:`sync_seconds`.
        """
        for spec in self._specs.values():
            self._flush(spec, final=True)

    def finish_shards(self, n_rows: int) -> None:
        """Record that the shards wrote rows ``[0, n_rows)`` of every block (then :meth:`close`)."""
        self._check_writable()
        for spec in self._specs.values():
            spec.n_rows = int(n_rows)
            self._written[spec.name] = int(n_rows)
            self._buffers[spec.name] = []

    def _finalize(self) -> None:
        n = self.n_samples
        for name in self.names:
            spec = self._specs[name]
            self._flush(spec, final=True)
            arr = self._arrays[name]
            if arr.shape[0] != spec.n_rows:
                arr.resize((spec.n_rows, *spec.sample_shape))
        if self._labels is not None:
            lab = self._group.create_array(
                "labels",
                shape=self._labels.shape,
                dtype="int64",
                fill_value=0,
                config={"write_empty_chunks": True},
                overwrite=True,  # a resumed capture may have been interrupted right here
            )
            if len(self._labels):
                lab[:] = self._labels
        keys = [spec.key for spec in self._specs.values()]
        keys += ["labels"] if self._labels is not None else []
        self._group.attrs.update(
            {
                "blocks": self._records(),
                "meta": self._meta,
                "n_samples": n,
                "has_labels": self._labels is not None,
                # each chunk's checksum, bound to its place: a chunk from elsewhere is refused
                "chunk_seals": {key: _chunk_seals(self.path, key) for key in keys},
            }
        )
        # the completion marker goes last: a store without it is never read as complete
        self._group.attrs["complete"] = True
        (self.path / PROGRESS_JSON).unlink(missing_ok=True)
        (self.path / WRITER_FILE).unlink(missing_ok=True)
        import zarr

        self._group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        self._arrays = {}
        self._buffers = {}
        self._readonly = True

    def block(self, name: str) -> Any:
        """Return the block as a read-only zarr array ``(N, ...)``; ``[i:j]`` gives float32."""
        spec = self._spec(name)
        if not self._closed:
            raise FactorlensError(
                f"block {name!r} cannot be read while the store is being written; call close() first"
            )
        if name not in self._arrays:
            self._arrays[name] = _CheckedArray(self._group[spec.key], name, self.path)
        return self._arrays[name]

    def discard(self) -> None:
        """Delete what this store wrote on disk (used when a capture fails)."""
        if self._created_dir:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.is_dir():
            for child in self.path.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        self._buffers = {}
        self._arrays = {}
        self._readonly = True


def _read_root_attrs(path: Path) -> dict[str, Any]:
    """Return the attributes of the zarr group at ``path`` ({} when it is not a zarr v3 group)."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return {}
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return {}
    attrs = doc.get("attributes", {})
    return attrs if isinstance(attrs, dict) else {}


def check_not_being_written(path: Path) -> None:
    """Refuse a store that another running process is writing (its :data:`WRITER_FILE`).

    A marker left by a process that is gone (killed, interrupted), or by this process (an
    interrupted capture resumed in the same session), does not count.
    """
    try:
        owner = (Path(path) / WRITER_FILE).read_text().strip()
    except (OSError, ValueError):
        return
    if owner and owner != process_owner() and owner_alive(owner):
        raise FactorlensError(
            f"store {path} is being written right now by process {owner.split()[0]}; wait for "
            "that capture to finish (or stop it) before reading, resuming or replacing the store"
        )


def _mark_writer(path: Path) -> None:
    """Record this process as the writer of the store at ``path`` (replacing a stale mark)."""
    write_new_file(Path(path) / WRITER_FILE, process_owner())  # never through a planted link


def store_state(path: Path) -> str | None:
    """``"complete"`` or ``"incomplete"`` for a factorlens store at ``path``, else None."""
    attrs = _read_root_attrs(Path(path))
    if attrs.get(STORE_KEY) is None:
        return None
    return "complete" if attrs.get("complete") is True else "incomplete"


def _chunk_dir(path: Path, key: str, i: int) -> Path:
    """Where zarr v3 keeps the files of row chunk ``i`` of array ``key`` (``key/c/i/…``)."""
    return path / str(key) / "c" / str(i)


def _progress_check(rows: Any, counts: Any, capture: Any) -> str:
    """Return the digest a progress file carries of its rows, counts and capture settings."""
    text = json.dumps([rows, counts, capture], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _progress_text(rows: int, counts: Mapping[str, int], capture: Mapping[str, Any]) -> str:
    """Return the text of ``capture-progress.json``: the resume point and its digest.

    The digest binds the rows and counts to the capture's settings, so a hand-edited or
    copied-in progress file is refused.
    """
    counts = {str(k): int(v) for k, v in counts.items()}
    check = _progress_check(int(rows), counts, capture)
    return json.dumps({"rows": int(rows), "nonfinite": counts, "check": check})


def _read_progress(path: Path, capture: Mapping[str, Any]) -> tuple[int, dict[str, int]]:
    """Return ``(rows, non-finite counts)`` of the progress file at ``path`` (none: ``0, {}``).

    Refuses one that does not parse, holds other types, or whose digest does not match its
    content and this capture's settings (edited by hand, or copied from another store).
    """
    file = path / PROGRESS_JSON
    try:
        doc = json.loads(file.read_text())
    except FileNotFoundError:
        return 0, {}
    except (OSError, ValueError):
        doc = None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    counts = doc.get("nonfinite") if isinstance(doc, dict) else None
    well_formed = (
        type(rows) is int
        and rows >= 0
        and isinstance(counts, dict)
        and all(type(v) is int and v >= 0 for v in counts.values())
    )
    if not well_formed or doc.get("check") != _progress_check(rows, counts, dict(capture)):
        raise FactorlensRuntimeError(
            f"{file} is damaged, was edited or belongs to another capture, so the resume point "
            "cannot be trusted; pass `overwrite=True` to start the capture again"
        )
    assert isinstance(rows, int) and isinstance(counts, dict)
    return rows, counts


def _check_progress(
    path: Path, attrs: Mapping[str, Any], capture: Mapping[str, Any], rows: int
) -> None:
    """Refuse a resume point that the store on disk does not back.

    ``rows`` (from the progress file) must be a whole number of batches within the inputs,
    and every chunk of rows before it must have its files: a hand-edited or forged progress
    file would otherwise resume into rows never written (read as zeros) or re-run a batch
    from its middle.
    """
    n, batch = capture.get("n_samples"), capture.get("batch_size")
    bad = not isinstance(rows, int) or rows < 0
    if not bad and isinstance(n, int) and isinstance(batch, int) and batch > 0:
        bad = rows > n or (rows % batch != 0 and rows != n)
    for rec in attrs.get("blocks", []) if not bad else []:
        step = int(rec.get("chunk_rows") or 0)
        if step > 0 and any(  # every chunk up to the one that holds row ``rows - 1``
            not _chunk_dir(path, rec["array"], i).exists() for i in range(-(-rows // step))
        ):
            bad = True
            break
    if bad:
        raise FactorlensRuntimeError(
            f"{path / PROGRESS_JSON} says {rows} rows were captured, which the store on disk does "
            "not hold; pass `overwrite=True` to start the capture again"
        )


def _check_chunks(path: Path, name: str, group: Any, key: str) -> None:
    """Refuse a block whose chunk files are not all there (zarr would read zeros)."""
    try:
        arr = group[key]
        have, want = arr.nchunks_initialized, arr.nchunks
    except (KeyError, OSError, ValueError) as exc:
        raise FactorlensRuntimeError(
            f"store {path} is damaged: block {name!r} cannot be read ({exc}); capture it "
            "again (`overwrite=True`)"
        ) from None
    if have < want:
        raise FactorlensRuntimeError(
            f"store {path} is damaged: block {name!r} is missing {want - have} of its {want} "
            "chunk files; capture it again (`overwrite=True`)"
        )


def _chunk_seals(path: Path, key: str) -> dict[str, str]:
    """Return every chunk file's seal of array ``key``, by its path under ``key/c``.

    A chunk file ends with zarr's crc32c of its content; those 4 bytes (hex) are its seal.
    Recorded in the store's attributes when it is completed, they bind each chunk's content to
    its place: a chunk file copied from another store (or from another row range) carries a
    checksum of other content, so it no longer matches, at the cost of 4 bytes read a chunk.
    """
    root = path / key / "c"
    seals: dict[str, str] = {}
    for f in sorted(root.rglob("*")) if root.is_dir() else []:
        if f.is_file() and not f.name.endswith(".partial"):
            with open(f, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(max(size - 4, 0))
                seals[f.relative_to(root).as_posix()] = fh.read(4).hex()
    return seals


def _check_seals(path: Path, name: str, key: str, attrs: Mapping[str, Any]) -> None:
    """Refuse a block whose chunk files are not the ones the store was completed with.

    Stores completed before seals were recorded have none, and are read as before.
    """
    recorded = attrs.get("chunk_seals")
    if recorded is None:
        return
    want = recorded.get(key) if isinstance(recorded, dict) else None
    if not isinstance(want, dict):
        raise FactorlensRuntimeError(
            f"store {path} is damaged: the chunk seals of block {name!r} are missing or "
            "unreadable; capture it again (`overwrite=True`)"
        )
    for rel, seal in _chunk_seals(path, key).items():
        if want.get(rel) != seal:
            raise FactorlensRuntimeError(
                f"store {path} is damaged: block {name!r} holds a chunk file ({key}/c/{rel}) "
                "that this store did not write (copied from another store, or replaced); "
                "capture it again (`overwrite=True`)"
            )


def _to_float16(name: str, rows: np.ndarray, start: int) -> np.ndarray:
    """Return float32 ``rows`` of block ``name`` as float16 (a value beyond ±65,504: an error).

    ``start`` (the block's first row of ``rows``) places the error. torch casts (8× numpy's
    ``astype`` on this box: 0.013 s against 0.105 s for 51 MB) and finds the range in one
    pass; only rows reaching beyond float16's largest value are looked at value by value.
    """
    if rows.size and rows.flags.c_contiguous and rows.flags.writeable:
        import torch

        tensor = torch.from_numpy(rows)
        low, high = (float(v) for v in torch.aminmax(tensor))
        half = tensor.to(torch.float16).numpy()
        if max(-low, high) <= FLOAT16_MAX:  # False with a NaN: looked at below
            return half
    else:
        with np.errstate(over="ignore"):
            half = rows.astype(np.float16)
    with np.errstate(invalid="ignore"):
        overflow = np.isfinite(rows) & ~np.isfinite(half)
    if overflow.any():
        peak = float(np.abs(rows[overflow]).max())
        raise FactorlensError(
            f"block {name!r} holds values up to ±{peak:.4g} (rows from {start} on), beyond "
            f"float16's ±{FLOAT16_MAX:,.0f}; capture it with `store_dtype='float32'`"
        )
    return half  # NaN/Inf that were there before the cast (the capture checks those)


def _fsync(path: Path) -> None:
    """Flush one file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _CheckedArray:
    """A zarr array whose reads turn a failed chunk checksum into a one-line error.

    Float16 chunks are read as float32 (``dtype`` says float32): every reader of a store
    sees one number type.
    """

    def __init__(self, array: Any, name: str, path: Path) -> None:
        self._array = array
        self._name = name
        self._path = path
        self.shape = tuple(array.shape)
        self._widen = array.dtype == np.float16
        self.dtype = np.dtype(np.float32) if self._widen else array.dtype
        self.ndim = len(self.shape)
        self.chunks = tuple(array.chunks)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            out = self._array[index]
            return out.astype(np.float32) if self._widen else out
        except ValueError as exc:
            if "checksum" not in str(exc).lower():
                raise
            raise FactorlensRuntimeError(
                f"store {self._path} is damaged: a chunk of block {self._name!r} fails its "
                "checksum; capture it again (`overwrite=True`)"
            ) from None

    def __setitem__(self, index: Any, value: Any) -> None:
        raise FactorlensError(
            f"block {self._name!r} of store {self._path} is read-only; write a new store"
        )

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def open_store(path: str | os.PathLike[str]) -> ZarrStore:
    """Reopen the complete store at ``path`` read-only.

    Parameters
    ----------
    path : str or os.PathLike
        A store directory written by :func:`factorlens.capture.capture` (or
        ``factorlens analyze --store``).

    Returns
    -------
    ZarrStore
        The store, read-only; no model is needed.

    Raises
    ------
    FactorlensError
        For an incomplete store (an interrupted capture), a missing chunk file, or a path
        that is not a factorlens store.
    """
    return ZarrStore.open(path)


class StoreView(ActivationStore):
    """A read-only view of a complete store that leaves some of its blocks out.

    The model's output before a factorization, say. Nothing is copied: reads go to the
    underlying store.

    Parameters
    ----------
    base : ActivationStore
        A complete (closed) store.
    drop : sequence of str
        The names of the blocks to leave out.
    """

    def __init__(self, base: ActivationStore, drop: Sequence[str]) -> None:
        super().__init__()
        if not base.closed:
            raise FactorlensError("the store is still being written; call close() first")
        dropped = set(drop)
        for name in dropped:
            base.info(name)  # an unknown name is an error, with suggestions
        self._base = base
        self._specs = {n: base._specs[n] for n in base.names if n not in dropped}
        self._labels = base.labels
        meta = dict(base.meta)
        for key in ("shapes", "nonfinite"):
            if isinstance(meta.get(key), Mapping):
                meta[key] = {k: v for k, v in meta[key].items() if k not in dropped}
        self._meta = meta
        self._closed = True
        self._readonly = True

    def block(self, name: str) -> Any:
        """Return the underlying store's block ``name`` (which this view must show)."""
        self._spec(name)
        return self._base.block(name)

    # a view is closed and read-only, so ActivationStore's writers refuse before these run
    def _create(self, spec: _Spec) -> None:
        raise FactorlensError("a store view is read-only")

    def _append(self, spec: _Spec, arr: np.ndarray) -> None:
        raise FactorlensError("a store view is read-only")

    def _finalize(self) -> None:
        raise FactorlensError("a store view is read-only")
