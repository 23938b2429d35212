"""The whole analysis: capture → factorize → write result files and report, safely.

Output directory layout (the contract for notebooks and for ``factorlens report``)::

    DIR/result.json   summary: rank, blocks (name, shape, fit), flow, options, meta
    DIR/factors.npz   the factor matrices (``factorlens.load(DIR)`` gives them back)
    DIR/inputs.npz    the input block as factorized, labels, class names and the model's
                      predicted classes where known (for the report)
    DIR/index.html    the self-contained report; DIR/figures/ its images (PNG), charts (SVG)

Everything is first written to a staging folder beside ``DIR`` and moved into place only when
complete, so a failure never leaves output that looks complete; ``overwrite`` replaces only
files factorlens wrote (see :mod:`factorlens.output`).
"""

from __future__ import annotations

import numbers
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.errors import FactorlensError, FactorlensRuntimeError, note
from factorlens.factorize import CMTF, CMTFResult
from factorlens.factorize.result import FACTORS_NPZ, RESULT_JSON
from factorlens.options import (
    DEFAULT_RANK,
    DEFAULT_SEED,
    CaptureOptions,
    EngineOptions,
    engine_options,
    split_settings,
)
from factorlens.output import (
    check_not_nested,
    check_output_dir,
    clean_stale,
    process_tag,
    publish,
    save_npz,
)
from factorlens.pages import small_pages
from factorlens.rows import Levels, NpyRows, in_memory, rows_equal, write_npy

if TYPE_CHECKING:
    from factorlens.store import ActivationStore

#: the engine's memory budget by default: inputs on disk above it are read by chunks
_BUDGET = EngineOptions.memory_budget
INPUTS_NPZ = "inputs.npz"
#: the input block of a result whose inputs were read from disk (too large for memory)
IMAGES_NPY = "images.npy"
REPORT_HTML = "index.html"
FIGURES_DIR = "figures"
OUTPUT_NAMES = (RESULT_JSON, FACTORS_NPZ, INPUTS_NPZ, IMAGES_NPY, REPORT_HTML, FIGURES_DIR)
#: what a report alone writes
REPORT_NAMES = (REPORT_HTML, FIGURES_DIR)


def save_inputs(directory: Path, images: Any, labels, class_names, predictions=None) -> None:
    """Write the input block (as factorized) and what goes with it to ``inputs.npz``.

    Labels, class names and predicted classes are each optional; the images are not. Images
    read from disk (a store's block above the memory budget, see :func:`input_images`) go to
    ``images.npy`` instead, written one chunk of rows at a time.
    """
    arrays: dict[str, Any] = {}
    if isinstance(images, Levels):
        arrays["images_uint8"] = images.levels
    elif in_memory(images):
        images = np.asarray(images, dtype=np.float32)
        levels = as_levels(images)
        if levels is not None:  # 8-bit pixels as given: a quarter of the disk, exactly
            arrays["images_uint8"] = levels
        else:
            arrays["images"] = images
    else:
        write_npy(directory / IMAGES_NPY, images)
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if class_names is not None:
        arrays["class_names"] = np.asarray(list(class_names), dtype=str)
    if predictions is not None:
        arrays["predictions"] = np.asarray(predictions, dtype=np.int64)
    save_npz(directory / INPUTS_NPZ, arrays)


def as_levels(images: np.ndarray) -> np.ndarray | None:
    """Return ``images`` as uint8 levels when every value is ``k / 255`` exactly, else None.

    Loaded 8-bit images are ``uint8 / 255`` in float32; dividing the levels by 255 again
    gives the same float32 values bit for bit (checked).
    """
    if images.size == 0 or images.dtype != np.float32:
        return None
    levels = np.empty(images.shape, dtype=np.uint8)
    step = max(1, (64 * 1024**2) // max(images[0].nbytes, 1))
    for a in range(0, len(images), step):
        scaled = images[a : a + step] * np.float32(255.0)
        rounded = np.rint(scaled)
        if not (np.all(rounded >= 0) and np.all(rounded <= 255)):
            return None
        part = rounded.astype(np.uint8)
        back = part.astype(np.float32)
        back /= np.float32(255.0)
        if not np.array_equal(back, images[a : a + step]):
            return None
        levels[a : a + step] = part
    return levels


def load_predictions(directory: str | Path) -> np.ndarray | None:
    """Return the predicted classes saved in ``inputs.npz`` (N,), or None when none were."""
    path = Path(directory) / INPUTS_NPZ
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "predictions" not in npz.files:
                return None
            pred = np.asarray(npz["predictions"], dtype=np.int64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # load_inputs, which the report calls first, says what is wrong
    return pred if pred.ndim == 1 else None


def predicted_classes(store: ActivationStore, n_classes: int | None) -> np.ndarray | None:
    """Return the model's predicted class per input, or None.

    The prediction is the argmax of the store's last block when that block has one output per
    class (``n_classes`` of them) and is what the model returns; else None: when the capture
    saw that the model's output is another block's or none (``meta[OUTPUT_BLOCK_KEY]``:
    a hidden last layer of ``n_classes`` units, an output changed after its layer), and when
    the block was sketched (an argmax of truncated coordinates could name another class).
    """
    from factorlens.factorize.reduced import ReducedBlock

    if not n_classes or len(store.names) < 2:
        return None
    from factorlens.capture import OUTPUT_BLOCK_KEY

    meta = getattr(store, "meta", None) or {}
    if OUTPUT_BLOCK_KEY in meta and meta[OUTPUT_BLOCK_KEY] != store.names[-1]:
        return None
    block = store.block(store.names[-1])
    if isinstance(block, ReducedBlock):
        return None
    if len(block.shape) != 2 or int(block.shape[1]) != int(n_classes):
        return None
    n, step = int(block.shape[0]), 4096
    return np.concatenate(
        [np.argmax(np.asarray(block[i : i + step]), axis=1) for i in range(0, n, step)]
    ).astype(np.int64)


def load_inputs(directory: str | Path) -> tuple[Any, np.ndarray | None, list[str] | None]:
    """Read ``inputs.npz`` (and ``images.npy``, where written) from a result directory.

    Parameters
    ----------
    directory : str or pathlib.Path
        A result directory written by :func:`analyze` (or ``factorlens analyze``).

    Returns
    -------
    images : numpy.ndarray or NpyRows
        The input block as factorized, float32 ``(N, ...)``; an :class:`~factorlens.rows.
        NpyRows` (read by row slices) where the result saved it to ``images.npy``.
    labels : numpy.ndarray or None
        ``(N,)`` labels, when the data had them.
    class_names : list of str or None
        The class names, when known.

    Raises
    ------
    FactorlensError
        When the file is missing, damaged or does not match a result.
    """
    path = Path(directory) / INPUTS_NPZ
    if not path.is_file():
        raise FactorlensError(f"{path} is missing; rerun `factorlens analyze` to recreate it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images: Any
            if "images_uint8" in npz.files:  # 8-bit images, kept as their levels
                images = Levels(np.asarray(npz["images_uint8"]))
            elif "images" not in npz.files and (path.parent / IMAGES_NPY).is_file():
                images = NpyRows(path.parent / IMAGES_NPY)
            else:
                images = np.asarray(npz["images"], dtype=np.float32)
            labels = npz["labels"] if "labels" in npz.files else None
            names = [str(c) for c in npz["class_names"]] if "class_names" in npz.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise FactorlensRuntimeError(
            f"{path} is damaged ({type(exc).__name__}: {exc}); rerun `factorlens analyze` to "
            "recreate it"
        ) from None
    if images.ndim < 2 or (labels is not None and labels.shape != (len(images),)):
        raise FactorlensRuntimeError(
            f"{path} does not match a result (images {images.shape}, labels "
            f"{None if labels is None else labels.shape}); rerun `factorlens analyze`"
        )
    return images, labels, names


def load(directory: str | Path) -> CMTFResult:
    """Load the factorization saved in a result directory.

    Parameters
    ----------
    directory : str or pathlib.Path
        A folder holding ``result.json`` and ``factors.npz``.

    Returns
    -------
    CMTFResult
        The saved factorization.
    """
    return CMTFResult.load(directory)


def write_outputs(
    out: str | Path,
    result: CMTFResult,
    images: Any,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    *,
    overwrite: bool = False,
    report: bool = True,
    title: str = "factorlens report",
    predictions: np.ndarray | None = None,
) -> Path:
    """Write result files and the report into ``out`` atomically (staged, then moved)."""
    out = check_output_dir(out, overwrite, OUTPUT_NAMES)

    def produce(stage: Path) -> None:
        save_inputs(stage, images, labels, class_names, predictions)
        if report:
            _report(stage, result, images, labels, class_names, title, predictions)
        result.save(stage)

    return publish(out, produce, OUTPUT_NAMES, overwrite=overwrite)


def write_report_files(
    out: str | Path,
    result: CMTFResult,
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    *,
    title: str = "factorlens report",
    overwrite: bool = False,
    predictions: np.ndarray | None = None,
    replace_result: bool = False,
) -> Path:
    """Write only ``index.html`` and ``figures/`` into ``out``.

    The files are staged, then moved; with ``overwrite`` the report factorlens wrote there
    before is replaced, and with ``replace_result`` every other file of the result there too
    (``out`` holds another result, which the new report would not match).
    """
    return publish(
        Path(out),
        lambda stage: _report(stage, result, images, labels, class_names, title, predictions),
        REPORT_NAMES,
        overwrite=overwrite,
        replaces=None if replace_result else REPORT_NAMES,
    )


def _report(stage: Path, result, images, labels, class_names, title: str, predictions) -> None:
    from factorlens.report import write_report

    write_report(stage, result, images, labels, class_names, title=title, predictions=predictions)


def load_checkpoints(sources: Sequence[str | Path]) -> list:
    """Load result directories as checkpoints and check that they can be compared.

    Each becomes a ``report.trajectory.Checkpoint``. Comparable means equal block names and
    numbers of samples, and the same saved test inputs (``inputs.npz``, where present), since
    matching columns of A only means something then.
    """
    from factorlens.report.trajectory import Checkpoint, check_compatible, checkpoint_label

    cps = []
    for s in sources:
        res = CMTFResult.load(s)
        cps.append(Checkpoint(checkpoint_label(res, s), res, Path(s)))
    check_compatible(cps)
    ref = None
    for c in cps:
        if c.source is None or not (c.source / INPUTS_NPZ).is_file():
            continue
        images = load_inputs(c.source)[0]
        if ref is None:
            ref = (c, images)
        elif not rows_equal(images, ref[1]):
            raise FactorlensError(
                f"cannot compare {c.label!r} with {ref[0].label!r}: they were analysed on "
                "different test inputs; analyse every checkpoint on the same inputs"
            )
    return cps


def checkpoints_report(
    directory: Path,
    sources: Sequence[str | Path],
    *,
    main: int | None = None,
    title: str = "factorlens report",
    link_base: Path | None = None,
) -> Path:
    """Write the checkpoints report of ``sources`` straight into ``directory``.

    The report is the main checkpoint (``main``, 0-based; default the best-scoring, else the
    last) in full plus the checkpoints view. Each checkpoint's own ``index.html`` is linked
    relative to ``link_base`` (where ``directory`` will finally be; default ``directory``).
    """
    from factorlens.report import write_report
    from factorlens.report.trajectory import build_trajectory, main_index

    cps = load_checkpoints(sources)
    traj = build_trajectory(cps)
    k = main_index(cps, main)
    base = Path(link_base if link_base is not None else directory).absolute()
    links = [  # a checkpoint's own report; none where this page replaces it (in place)
        os.path.relpath(Path(s).absolute() / REPORT_HTML, base)
        if (Path(s) / REPORT_HTML).is_file() and Path(s).resolve() != base.resolve()
        else None
        for s in sources
    ]
    images, labels, class_names = load_inputs(sources[k])
    return write_report(
        directory,
        cps[k].result,
        images,
        labels,
        class_names,
        predictions=load_predictions(sources[k]),
        title=title,
        trajectory=traj,
        main=k,
        checkpoint_links=links,
    )


def write_checkpoints_report(
    out: str | Path,
    sources: Sequence[str | Path],
    *,
    main: int | None = None,
    title: str = "factorlens report",
    overwrite: bool = False,
    replace_result: bool = False,
) -> Path:
    """Write :func:`checkpoints_report` into ``out``.

    Staged then moved like :func:`write_report_files` (``overwrite`` replaces the report
    factorlens wrote there, ``replace_result`` the rest of the result there too).
    """
    out = Path(out).absolute()
    return publish(
        out,
        lambda stage: checkpoints_report(stage, sources, main=main, title=title, link_base=out),
        REPORT_NAMES,
        overwrite=overwrite,
        replaces=None if replace_result else REPORT_NAMES,
    )


def input_images(store: ActivationStore, memory_budget: int = _BUDGET) -> Any:
    """Return the input block of a store (N, …): read into memory, or as it is on disk.

    A block on disk larger than ``memory_budget`` bytes (as float32) is returned unread; the
    report and :func:`save_inputs` then read it one chunk of rows at a time.
    """
    block = store.block(store.names[0])
    if getattr(block, "lazy", False):  # 8-bit levels (rows.Levels): saved and read as they are
        return block
    if not in_memory(block) and int(np.prod(block.shape)) * 4 > memory_budget:
        return block
    return np.asarray(block[:], dtype=np.float32)


def factorize_store(
    store: ActivationStore,
    rank: int,
    *,
    progress: bool = False,
    options: EngineOptions | None = None,
    **engine: Any,
) -> CMTFResult:
    """Fit the joint model to every block of ``store`` and attach its metadata.

    ``options`` (an :class:`~factorlens.options.EngineOptions`) and ``engine`` (the same
    settings as keywords, which win) are :class:`~factorlens.factorize.CMTF`'s parameters
    (``tensor_blocks`` lists every block fitted with a CP model; by default the input, when it
    has two or more feature axes); ``progress`` shows the fit's progress bars (CMTF's
    ``verbose``).
    """
    opts = engine_options(options, **engine)
    model = CMTF.from_options(rank, replace(opts, verbose=progress)).fit(store)
    result = model.result_
    meta = dict(getattr(store, "meta", {}) or {})
    meta.setdefault("n_samples", store.n_samples)
    result.meta = meta
    return result


def capture_for_analysis(
    model: Any,
    data: Any,
    *,
    out: str | Path,
    options: CaptureOptions | None = None,
    layers: list[str] | str | None = None,
    preprocess: Callable | None = None,
    store: str | Path | None = None,
    select: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    sharded: bool = False,
    sketch_rank: int = DEFAULT_RANK,
    center: bool = False,
    seed: int = DEFAULT_SEED,
) -> ActivationStore:
    """Check ``out`` (and ``store``) first, then capture ``model`` on ``data`` into a store.

    ``options`` are the capture's settings (:class:`~factorlens.options.CaptureOptions`).
    Without ``store`` the capture is held in memory, the layers too wide for its
    ``memory_budget`` sketched (:func:`factorlens.sketched.capture_sketched`, with its
    ``sketch``, ``sketch_rank`` the largest rank that will be fitted, ``center`` and
    ``seed``). ``resume`` continues the interrupted capture in ``store`` (see
    :func:`capture`); a new capture into a new ``store`` that is interrupted can be resumed
    that way. ``sharded`` runs a capture into ``store`` on the workers of the current Dask
    client (:func:`factorlens.sharded.capture_sharded`; not resumable).
    """
    from factorlens.capture import StoreDiskFull, capture, check_store_dtype
    from factorlens.sketched import capture_sketched
    from factorlens.store import open_store

    options = options or CaptureOptions()
    if sharded and (store is None or resume or str(options.device) != "cpu"):
        raise FactorlensError(
            "a capture on a Dask cluster writes a new on-disk store on the workers' CPUs: give "
            "`store`, and drop `resume` and a `device` other than cpu"
        )

    out = check_output_dir(out, overwrite)
    target = None
    if store is not None and options.sketch != CaptureOptions.sketch:
        raise FactorlensError(
            "`sketch` applies to a capture held in memory; a capture into `store` keeps every "
            "layer whole: drop one of them"
        )
    if store is not None:
        target = _followed_link(Path(store))
        _check_store_path(target, overwrite, out, resume)
    elif resume:
        raise FactorlensError("`resume=True` continues a capture into a store; give `store=PATH`")
    check_store_dtype(options, on_disk=store is not None)
    # an existing store being replaced is kept until the new capture has succeeded
    stage: Path | None = None  # where it is captured first, when it replaces one
    if target is not None and target.exists() and not resume:
        clean_stale(target)
        stage = target.with_name(f".{target.name}.staging-{process_tag()}-capture")
    where = target if stage is None else stage
    passes: dict[str, Any] = {
        "options": options,
        "preprocess": preprocess,
        "select": select,
        "progress": progress,
        "meta": meta,
    }
    acts: ActivationStore
    try:
        if where is None:  # in memory: the layers too wide to hold are sketched
            acts = capture_sketched(
                model, data, layers, rank=sketch_rank, center=center, seed=seed, **passes
            )
            return acts
        if sharded:
            from factorlens.sharded import capture_sharded

            acts = capture_sharded(model, data, where, layers, **passes)
        else:
            acts = capture(model, data, layers, store=where, resume=resume, **passes)
    except (KeyboardInterrupt, SystemExit):
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        elif target is not None and target.exists():
            note(
                f"the capture into {target} was interrupted; rerun it with `resume=True` to "
                "continue it"
            )
        raise
    except BaseException as exc:
        if stage is not None and stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, StoreDiskFull):  # nothing to resume: the old one stays
                raise FactorlensRuntimeError(
                    f"the disk filled up while a new store replaced {target}, which is kept as "
                    "it was; free some space and rerun"
                ) from exc
        raise
    if stage is not None:
        assert target is not None  # a stage is made only to replace a target
        shutil.rmtree(target)
        stage.replace(target)
        acts = open_store(target)
    return acts


@small_pages()
def analyze(
    model: Any,
    data: Any,
    *,
    out: str | Path,
    rank: int = DEFAULT_RANK,
    layers: list[str] | str | None = None,
    preprocess: Callable | None = None,
    store: str | Path | None = None,
    select: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    report: bool = True,
    resume: bool = False,
    sharded: bool = False,
    capture_options: CaptureOptions | None = None,
    options: EngineOptions | None = None,
    **settings: Any,
) -> CMTFResult:
    """Capture ``model`` on ``data``, factorize, write everything to ``out``.

    Writes ``result.json``, ``factors.npz``, ``inputs.npz`` and (with ``report``) the HTML
    report into ``out``.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    data : ImageData
        The test inputs (see :func:`factorlens.data.load_data`).
    out : str or pathlib.Path
        The output directory.
    rank : int
        The number of components R.
    layers : list of str or str, optional
        Module names or globs (see :func:`factorlens.capture.select_layers`); default: every
        conv, linear, activation and pooling leaf.
    preprocess : callable, optional
        Applied to each batch before the model (not to the stored input block).
    store : str or pathlib.Path, optional
        Capture into a :class:`~factorlens.store.ZarrStore` at this path instead of memory.
    select : dict, optional
        ``{layer: index or key}`` for layers that return a tuple, list or dict.
    overwrite : bool
        Replace a result factorlens wrote into ``out`` (and a store at ``store``) before.
    progress : bool
        Show progress bars on stderr.
    meta : dict, optional
        Extra JSON-able metadata for the store and the result.
    report : bool
        Also write ``index.html`` and ``figures/``.
    resume : bool
        Continue the interrupted capture in ``store`` (the same call otherwise).
    sharded : bool
        Run a capture into ``store`` on the workers of the current Dask client.
    capture_options : CaptureOptions, optional
        The capture's settings as one object (:class:`~factorlens.options.CaptureOptions`):
        ``batch_size``, ``device``, ``nonfinite``, the ``compression`` of ``store``, and
        without ``store`` ``sketch`` (``"auto"`` sketches the layers too wide for
        ``memory_budget``, in two forward passes, :mod:`factorlens.sketched`; ``0`` holds
        every layer whole; ``k`` keeps ``k`` directions of every wider layer) and
        ``memory_budget`` (bytes of activations held in memory).
    options : EngineOptions, optional
        The factorization's settings as one object (:class:`~factorlens.options.EngineOptions`,
        the parameters of :class:`factorlens.factorize.CMTF`).
    **settings
        Fields of either as keywords, which win over the objects (``batch_size=64``,
        ``nonneg=True``, ``n_iter_max=200``); a field of both (``device``, ``memory_budget``)
        sets both: ``device="cuda"`` runs the forward passes and the fit there.

    Returns
    -------
    CMTFResult
        The fitted factorization.
    """
    capture, engine = split_settings(settings, capture_options, options)
    return _capture_and_fit(
        model,
        data,
        out=out,
        rank=rank,
        overwrite=overwrite,
        progress=progress,
        report=report,
        capture=capture,
        engine=engine,
        layers=layers,
        preprocess=preprocess,
        store=store,
        select=select,
        meta=meta,
        resume=resume,
        sharded=sharded,
    )


def _capture_and_fit(
    model: Any,
    data: Any,
    *,
    out: str | Path,
    rank: int,
    overwrite: bool,
    progress: bool,
    report: bool,
    capture: CaptureOptions,
    engine: EngineOptions,
    **where: Any,
) -> CMTFResult:
    """Capture ``model`` for a fit at ``rank``, then fit it into ``out`` (:func:`analyze_store`).

    ``capture`` and ``engine`` are the two stages' settings; ``where`` the rest of
    :func:`capture_for_analysis`'s arguments (layers, store, metadata). A sketch keeps
    directions for ``rank`` components, centred and seeded as the fit will be.
    """
    acts = capture_for_analysis(
        model,
        data,
        out=out,
        options=capture,
        overwrite=overwrite,
        progress=progress,
        sketch_rank=rank,
        center=engine.center,
        seed=_seed_of(engine),  # a sketch's draws seeded as the fit's
        **where,
    )
    return analyze_store(
        acts,
        out=out,
        rank=rank,
        overwrite=overwrite,
        progress=progress,
        report=report,
        options=engine,
    )


@small_pages()
def analyze_store(
    acts: ActivationStore,
    *,
    out: str | Path,
    rank: int = DEFAULT_RANK,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
    extra_meta: dict[str, Any] | None = None,
    options: EngineOptions | None = None,
    **engine: Any,
) -> CMTFResult:
    """Factorize an activation store (in memory or reopened from disk) and write ``out``.

    A store of several models' layers (from :func:`compare`; its ``meta["models"]`` names
    them, each block ``label.layer``) also gets ``result.meta["comparison"]``: which models
    carry each component and linear CKA between their matched layers.

    Parameters
    ----------
    acts : ActivationStore
        A complete store, from :func:`factorlens.capture.capture` or
        :func:`factorlens.store.open_store`.
    out : str or pathlib.Path
        The output directory.
    rank : int
        The number of components R.
    overwrite : bool
        Replace a result factorlens wrote into ``out`` before.
    progress : bool
        Show a progress bar on stderr.
    report : bool
        Also write ``index.html`` and ``figures/``.
    extra_meta : dict, optional
        Merged into the result's metadata (e.g. the rank scan's evidence).
    options : EngineOptions, optional
        The factorization's settings as one object.
    **engine
        The same as keywords (they win): the parameters of :class:`factorlens.factorize.CMTF`,
        ``device`` (where the factorization's data products run) among them.

    Returns
    -------
    CMTFResult
        The fitted factorization.
    """
    from factorlens.comparison import labels_in

    out = check_output_dir(out, overwrite)
    opts = engine_options(options, **engine)
    start = time.perf_counter()
    result = _fit_store(acts, rank, progress, opts)
    result.meta.update(extra_meta or {})
    labels = labels_in(acts.meta)
    predictions = None  # several models answer: no one model's predictions are the inputs'
    if labels:
        _compared(result, acts, labels, opts, time.perf_counter() - start)
    else:
        names = (acts.meta or {}).get("class_names")
        predictions = predicted_classes(acts, len(names) if names else None)
    _write_store_result(acts, out, result, overwrite, report, opts, predictions)
    return result


def _seed_of(options: EngineOptions) -> int:
    """Return the fit's seed as an integer, for the draws beside it (sketch, CKA's subset).

    A numpy Generator or None (no integer to reuse) gives :data:`DEFAULT_SEED`.
    """
    seed = options.random_state
    return int(seed) if isinstance(seed, numbers.Integral) else DEFAULT_SEED


def _compared(
    result: CMTFResult, acts: ActivationStore, labels: list[str], opts: EngineOptions, fit: float
) -> None:
    """Add ``meta["comparison"]`` to the fit of a store of several models' layers.

    Which models carry each component, and linear CKA between their matched layers; ``fit``
    is the fit's seconds, recorded beside CKA's.
    """
    from factorlens.comparison import component_sharing, linear_cka

    start = time.perf_counter()
    sharing = component_sharing(result, labels)
    cka = linear_cka(acts, labels, seed=_seed_of(opts))
    seconds = {"fit": round(fit, 2), "cka": round(time.perf_counter() - start, 2)}
    result.meta["comparison"] = {"sharing": sharing.to_dict(), "cka": cka, "seconds": seconds}


def _fit_store(acts: ActivationStore, rank: int, progress: bool, opts: EngineOptions) -> CMTFResult:
    """Fit ``acts`` at ``rank`` (the samples compressed too when wide layers were sketched)."""
    if not opts.compress_rows and (
        truncated_sketch(acts) or (not opts.nonneg and wide_input(acts, rank))
    ):
        # wide layers were sketched, or the input is a large image: the fit's cost is the
        # input block's (150,528 features a 224 px image), so the samples and the image's
        # sides are compressed (CMTF compress_rows), then refined on all of it
        opts = replace(opts, compress_rows=sketched_compress_rows(rank, acts.n_samples))
    return factorize_store(acts, rank, progress=progress, options=opts)


def _write_store_result(
    acts: ActivationStore,
    out: Path,
    result: CMTFResult,
    overwrite: bool,
    report: bool,
    opts: EngineOptions,
    predictions: np.ndarray | None,
) -> None:
    """Write ``result`` with the store's inputs, labels and class names into ``out``."""
    meta = acts.meta or {}
    write_outputs(
        out,
        result,
        input_images(acts, opts.memory_budget),
        acts.labels,
        meta.get("class_names"),
        overwrite=overwrite,
        report=report,
        title=_title(meta),
        predictions=predictions,
    )


@small_pages()
def compare(
    models: Mapping[str, Any],
    data: Any,
    *,
    out: str | Path,
    rank: int = DEFAULT_RANK,
    layers: Mapping[str, Sequence[str] | str | None] | None = None,
    preprocess: Callable | None = None,
    model_preprocess: Mapping[str, Callable | None] | None = None,
    store: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    report: bool = True,
    resume: bool = False,
    sharded: bool = False,
    capture_options: CaptureOptions | None = None,
    options: EngineOptions | None = None,
    **settings: Any,
) -> CMTFResult:
    """Capture several models on the same inputs, factorize all their layers jointly, write ``out``.

    Every chosen layer of every model is a block, named ``label.layer``, next to the one
    input block; one joint factorization then gives each component a strength in every layer
    of every model. ``result.meta["comparison"]`` holds which models carry each component
    (:func:`factorlens.comparison.component_sharing`) and linear CKA between matched layers of
    every pair of models (:func:`factorlens.comparison.linear_cka`); the report shows both.

    Parameters
    ----------
    models : mapping of str to torch.nn.Module
        ``{label: model}``, two or more, in the order to show them (architectures may differ).
    data : ImageData
        The test inputs, the same for every model.
    out : str or pathlib.Path
        The output directory.
    rank : int
        The number of components R.
    layers : mapping of str to names, optional
        ``{label: names or globs}`` per model (see :func:`factorlens.capture.select_layers`);
        a model left out gets its default layers.
    preprocess : callable, optional
        Applied to each batch before every model (e.g. the normalization they share).
    model_preprocess : mapping of str to callable, optional
        ``{label: f}`` applied after ``preprocess``, before that model only.
    store : str or pathlib.Path, optional
        Capture into an on-disk store at this path (else in memory, wide layers sketched).
    resume : bool
        Continue the interrupted capture in ``store`` (the same call otherwise).
    sharded : bool
        Run a capture into ``store`` on the workers of the current Dask client.
    capture_options, options, **settings
        The capture's and the factorization's settings, as in :func:`analyze`; the rest
        (``overwrite`` … ``report``) as there too.

    Returns
    -------
    CMTFResult
        The joint factorization, its ``meta["comparison"]`` filled in.
    """
    from factorlens.modelset import ModelSet, model_layers

    modelset = ModelSet(models, model_preprocess)
    given = (meta or {}).get("models") or {}
    described = {
        label: str(given.get(label) or type(getattr(modelset, label)).__name__)
        for label in modelset.labels
    }
    meta = {**(meta or {}), "models": described}
    meta.setdefault("model", f"{len(described)} models: " + ", ".join(described))
    meta.setdefault("model_name", " vs ".join(described))
    return analyze(  # one store of every model's layers: analyze_store adds the comparison
        modelset,
        data,
        out=out,
        rank=rank,
        layers=model_layers(modelset, layers),
        preprocess=preprocess,
        store=store,
        overwrite=overwrite,
        progress=progress,
        meta=meta,
        report=report,
        resume=resume,
        sharded=sharded,
        capture_options=capture_options,
        options=options,
        **settings,
    )


@small_pages()
def compare_store(acts: ActivationStore, **kwargs: Any) -> CMTFResult:
    """Factorize a store of several models' layers (from :func:`compare`) and write ``out``.

    :func:`analyze_store` with the same keyword arguments (``out``, ``rank``, ...), which
    adds the comparison to such a store's result; this also refuses a store of one model.
    """
    from factorlens.comparison import labels_in

    if not labels_in(acts.meta):
        raise FactorlensError(
            "this store holds one model's layers (its meta names no 'models'); analyse it "
            "with analyze, or capture several models with compare"
        )
    return analyze_store(acts, **kwargs)


def _title(meta: dict[str, Any]) -> str:
    """Return a report's title: the model, and the checkpoint when one was named."""
    model = meta.get("model_name", "model")
    checkpoint = meta.get("checkpoint")
    return f"factorlens — {checkpoint} ({model})" if checkpoint else f"factorlens — {model}"


def truncated_sketch(store: Any) -> bool:
    """Whether ``store`` holds a sketched layer whose basis is not its whole row space."""
    from factorlens.factorize.reduced import ReducedBlock

    blocks = [store.block(n) for n in getattr(store, "names", [])]
    return any(isinstance(b, ReducedBlock) and not b.exact for b in blocks)


#: input features from which a plain fit's time goes to the input image (a 3×224×224 image
#: has 150,528; MNIST 784 and CIFAR 3,072 are fitted plainly, as they always were)
WIDE_INPUT = 1 << 15


def wide_input(store: Any, rank: int) -> bool:
    """Whether the input of ``store`` is a large image whose sides a compressed fit shrinks.

    True for an input of two or more feature axes, at least :data:`WIDE_INPUT` features a
    sample, with a side at least ``2 (rank + 10)`` long
    (:func:`~factorlens.factorize.compress.compressed_modes`): a 224 px image, where the
    plain fit spends its time on the input's values; not a 28 px digit at a low rank.
    """
    from factorlens.factorize.compress import OVERSAMPLE

    names = getattr(store, "names", [])
    dims = tuple(store.block(names[0]).shape[1:]) if names else ()
    return (
        len(dims) >= 2
        and int(np.prod(dims)) >= WIDE_INPUT
        and max(dims) >= 2 * (int(rank) + OVERSAMPLE)
    )


def sketched_compress_rows(rank: int, n_samples: int) -> int:
    """Return the sample directions a fit of a sketched store keeps (0: too few samples).

    ``4R`` (at least ``R + 30``), as the engine benchmark measured (loss 1.0001× the full
    fit's); none when there are not twice as many samples.
    """
    k = max(4 * rank, rank + 30)
    return k if n_samples > 2 * k else 0


def _followed_link(path: Path) -> Path:
    """Return the folder a ``store`` path names: a link is followed (and kept as it is).

    A capture that replaces a store replaces the folder the link points at, so the link then
    names the new store; a link to nothing is refused (a folder cannot be made through it).
    """
    if not path.is_symlink():
        return path
    if not path.exists():
        raise FactorlensError(
            f"`store` {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
            "remove the link or choose another `store`"
        )
    return Path(os.path.realpath(path))


def _check_store_path(
    path: Path, overwrite: bool, out: Path | None = None, resume: bool = False
) -> None:
    """Refuse a ``--store`` that cannot be written.

    Refused: a file, a store nested with ``--out`` (either way), or one that exists without
    ``overwrite`` (then only a factorlens store, complete or not, is replaced); with
    ``resume`` it must hold an interrupted capture.
    """
    from factorlens.store import check_not_being_written, store_state

    if path.exists() and not path.is_dir():
        raise FactorlensError(f"store path {path} is a file; choose another `store`")
    check_not_being_written(path)
    if out is not None:
        check_not_nested(out, path)
    if resume:
        if overwrite:
            raise FactorlensError(
                "`resume=True` continues a capture, `overwrite=True` restarts it: give one"
            )
        return  # ZarrStore.resume checks what is there
    if not (path.exists() and any(path.iterdir())):
        return
    state = store_state(path)
    if state is None:
        raise FactorlensError(
            f"`store` {path} holds something that is not a factorlens store; it is not "
            "replaced even with `overwrite=True`: choose another `store`"
        )
    if overwrite:
        return
    if state == "incomplete":
        raise FactorlensError(
            f"`store` {path} holds an interrupted capture; pass `resume=True` to continue it "
            "or `overwrite=True` to start it again"
        )
    raise FactorlensError(
        f"store path {path} already exists; pass `overwrite=True` to replace it or choose "
        "another `store` (to analyse an existing store, use `analyze_store`)"
    )
