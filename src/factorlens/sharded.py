"""Capture sharded over the workers of a Dask cluster, each writing its own rows of one store.

:func:`capture_sharded` is :func:`factorlens.capture` for inputs that one process should not
run alone: the client runs one batch to learn the blocks, creates the zarr store with every
block's final size and a chunk layout on which every shard boundary falls, and hands the
shards (consecutive runs of whole batches) to the workers of the current
``dask.distributed`` client. Each worker runs the model over its rows with the same hooks,
checks and writer thread as :func:`~factorlens.capture`, and writes its rows straight into
the store (:meth:`ZarrStore.open_shard`); no activation goes through the client. Only when
every shard has finished does the client write labels and metadata and mark the store
complete, so a failed or interrupted sharded capture never leaves a store that opens.

Needs the optional extra: ``pip install factorlens[dask]``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from factorlens.capture import (
    OUTPUT_BLOCK_KEY,
    _run_capture,
    capture,
    dtype_record,
    finish_store,
    select_layers,
    whole_layer_options,
)
from factorlens.errors import FactorlensError, FactorlensRuntimeError
from factorlens.options import CaptureOptions
from factorlens.pages import small_pages
from factorlens.store import ZarrStore, default_chunk_rows


class _FirstRows:
    """The first ``n`` rows of an array-like (``shape[0]`` is ``n``; slicing passes through)."""

    def __init__(self, data: Any, n: int) -> None:
        self.data = data
        self.shape = (int(n), *tuple(data.shape[1:]))

    def __getitem__(self, index: slice) -> Any:
        return self.data[index]


def _row_source(data: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Return ``(rows, labels or None, data meta)`` of an array-like or an ImageData."""
    from factorlens.data import ImageData

    labels, extra = None, dict[str, Any]()
    if isinstance(data, ImageData):
        labels = getattr(data, "labels", None)
        if getattr(data, "description", None) is not None:
            extra["data"] = data.description
        if data.class_names is not None:
            extra["class_names"] = list(data.class_names)
        data = data.images
    shape = getattr(data, "shape", None)
    if shape is None or not hasattr(data, "__getitem__") or len(shape) < 2:
        raise FactorlensError(
            "data for a sharded capture must be an array-like with a shape (N, ...) and "
            f"row slicing (numpy, zarr, a memmap), got {type(data).__name__}"
        )
    if int(shape[0]) == 0:
        raise FactorlensError("data holds no samples (N = 0); give at least one input")
    return data, labels, extra


def chunk_layout(
    shapes: Mapping[str, Sequence[int]], n: int, batch_size: int, n_workers: int
) -> tuple[dict[str, int], int]:
    """Return ``(chunk rows per block, shard rows)`` for a sharded capture of ``n`` inputs.

    Every block's chunk is ``batch_size`` times a power of two (about 16 MiB, see
    :func:`~factorlens.store.default_chunk_rows`) and divides the shard, which is the largest
    chunk but at most an eighth of each worker's rows, so that shards of all blocks start on
    chunk boundaries and every worker gets several.
    """

    def pow2_batches(rows: int) -> int:
        return 1 << max(0, (max(1, rows // batch_size)).bit_length() - 1)

    wanted = {
        k: pow2_batches(default_chunk_rows(s, multiple=batch_size)) for k, s in shapes.items()
    }
    cap = pow2_batches(max(batch_size, n // (8 * max(1, n_workers))))
    shard = min(max(wanted.values()), cap)
    return {k: batch_size * min(m, shard) for k, m in wanted.items()}, batch_size * shard


#: the module names modelio gives model files (imported from a path, not by name)
USER_MODULE_PREFIX = "factorlens_user_"
#: the file whose presence tells the workers to stop: the client gave the capture up
ABANDONED = ".abandoned"


def _capture_shard(
    path: str,
    model_bytes: bytes,
    rows: Any,
    layers: list[str],
    start: int,
    stop: int,
    task: tuple[CaptureOptions, dict[str, Any]],
) -> dict[str, int]:
    """Run on a worker: capture rows ``[start, stop)`` into the store; return non-finite counts.

    ``task`` is the capture's settings and the rest of :func:`_run_capture`'s arguments
    (``preprocess``, ``select``, ``output``); the settings' device is the workers' CPU.

    Stops before its next batch once the client has given the capture up (:data:`ABANDONED`).
    """
    import cloudpickle

    abandoned = Path(path) / ABANDONED
    if abandoned.exists():
        return {}
    model = cloudpickle.loads(model_bytes)  # as pickled: hooks and buffers exactly as given
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one task per worker thread: no oversubscribed cores
    try:
        store = ZarrStore.open_shard(path, start)
        counts, _ = _run_capture(  # the client's first batch says where the output is
            model,
            _FirstRows(rows, stop),
            layers,
            store,
            task[0],
            progress=False,
            start_row=start,
            counts={},
            stop_if=abandoned.exists,
            check_determinism=False,  # the client's first batch checked the model
            **task[1],
        )
        store.flush()
        return counts
    except FactorlensRuntimeError:
        if abandoned.exists():  # given up by the client: stop quietly (a raise is logged)
            return {}
        raise
    finally:
        torch.set_num_threads(threads)


@small_pages()
def capture_sharded(
    model: nn.Module,
    data: Any,
    store: str | os.PathLike[str],
    layers: Sequence[str] | str | None = None,
    *,
    options: CaptureOptions | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: Any = None,
    select: Mapping[str, int | str] | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    output: str | None = None,
    **settings: Any,
) -> ZarrStore:
    """Capture like :func:`factorlens.capture`, sharded over the current Dask client's workers.

    Parameters
    ----------
    model : torch.nn.Module
        The network (sent to every worker once; runs on the workers' CPUs, one torch thread
        per task).
    data : array-like or ImageData
        ``(N, C, H, W)`` or ``(N, D)`` inputs with row slicing: a numpy array, a zarr array,
        a memmap, or any object with ``shape`` and ``data[i:j]`` (it is sent to the workers,
        so an object that makes or reads its rows lazily keeps that cheap).
    store : str or os.PathLike
        The new store's directory, on a file system every worker can write to.
    layers, options, settings, preprocess, labels, select, meta, output
        As for :func:`factorlens.capture` (the ``device`` is the workers' CPU).
    progress : bool
        Show a progress bar of finished shards on stderr.
    overwrite : bool
        Let ``store`` replace an existing factorlens store.

    Returns
    -------
    ZarrStore
        The complete, read-only store, as :func:`factorlens.capture` would have written it
        (the same blocks, rows, labels and metadata; chunks are laid out per shard).
    """
    from factorlens.factorize.distributed import current_client
    from factorlens.progress import progress_bar

    opts = replace(whole_layer_options(options, settings), device="cpu")  # the workers'
    batch_size = int(opts.batch_size)
    rows, data_labels, data_meta = _row_source(data)
    n = int(rows.shape[0])
    labels = data_labels if labels is None else labels
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise FactorlensError(
                f"labels have shape {labels.shape} but the data has {n} samples; give one "
                "label per sample"
            )
    client = current_client()
    only_output = output is not None and isinstance(layers, list | tuple) and not layers
    chosen = [] if only_output else select_layers(model, layers)
    # one batch on the client: the blocks, their kinds and shapes (and every check of capture),
    # held in memory, so as float32 whatever the store's number type
    first = capture(
        model,
        np.asarray(rows[0 : min(batch_size, n)], dtype=np.float32),
        None if layers is None and not only_output else chosen,
        options=replace(opts, store_dtype="float32"),
        preprocess=preprocess,
        select=select,
        output=output,
        progress=False,
    )
    # default layers that never ran (an attention's out_proj) were left out there
    chosen = [m for m in chosen if any(b.split("#")[0] == m for b in first.meta["layers"])]
    n_workers = len(client.scheduler_info().get("workers", {})) or 1
    chunks, shard = chunk_layout(
        {b: first.shape(b)[1:] for b in first.names}, n, batch_size, n_workers
    )
    recorded = {
        "n_samples": n,
        "batch_size": batch_size,
        "layers": chosen,
        "select": dict(select or {}),
        "nonfinite": opts.nonfinite,
        "output": output,
        "device": "cpu",
        "meta": dict(meta or {}),
        "sharded": shard,
        "compression": opts.compression,  # as the one-process capture records it
        **dtype_record(opts),
    }
    target = ZarrStore.create(
        store,
        overwrite=overwrite,
        fingerprint=recorded,
        compression=opts.compression,
        dtype=opts.store_dtype,
    )
    try:
        for b in first.names:
            info = first.info(b)
            target.create_block(
                b,
                first.shape(b)[1:],
                info["kind"],
                info["module"],
                n_samples=n,
                chunk_rows=chunks[b],
            )
        counts = _run_shards(
            client,
            str(target.path),
            model,
            rows,
            chosen,
            n,
            shard,
            (opts, {"preprocess": preprocess, "select": dict(select or {}), "output": output}),
            progress_bar(-(-n // shard), "capture shards", unit="shard", disable=not progress),
        )
        target.finish_shards(n)
        seen = {k: v for k, v in first.meta.items() if k == OUTPUT_BLOCK_KEY}  # the output
        finish_store(
            target, model, labels, {**data_meta, **dict(meta or {}), **seen}, recorded, counts
        )
    except BaseException:
        target.discard()  # after every shard has stopped (_run_shards waits for them)
        raise
    return target


def _model_bytes(model: nn.Module) -> bytes:
    """Pickle ``model`` for the workers.

    A class from a model file (``FILE.py:Class``, which the workers cannot import by name)
    travels by value, with the rest of that file.
    """
    import cloudpickle

    names = {type(m).__module__ for m in model.modules()}  # several model files in a ModelSet
    modules = [sys.modules[n] for n in sorted(names) if n in sys.modules]
    by_value = [m for m in modules if m.__name__.startswith(USER_MODULE_PREFIX)]
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(model)
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _run_shards(
    client: Any,
    path: str,
    model: nn.Module,
    rows: Any,
    layers: list[str],
    n: int,
    shard: int,
    task: tuple[CaptureOptions, dict[str, Any]],
    bar: Any,
) -> dict[str, int]:
    """Submit every shard, wait for all of them; return the summed non-finite counts.

    On an error (or an interruption) the workers are told to stop (:data:`ABANDONED`) and
    waited for, so none writes into the store after it has been removed.
    """
    from dask.distributed import as_completed, wait

    model_f, rows_f = client.scatter([_model_bytes(model), rows], broadcast=True, hash=False)
    futures = [
        client.submit(
            _capture_shard, path, model_f, rows_f, layers, s, min(s + shard, n), task, pure=False
        )
        for s in range(0, n, shard)
    ]
    counts: dict[str, int] = {}
    try:
        for done in as_completed(futures):
            for name, k in done.result().items():
                counts[name] = counts.get(name, 0) + int(k)
            bar.update(1)
    except BaseException:
        (Path(path) / ABANDONED).touch()
        wait(futures)  # each stops before its next batch
        raise
    finally:
        bar.close()
    return counts


__all__ = ["capture_sharded", "chunk_layout"]
