"""The whole analysis: capture → factorize → write result files and report, safely.

Output directory layout (the contract for notebooks and for ``factorlens report``)::

    DIR/result.json   summary: rank, blocks (name, shape, fit), flow, options, meta
    DIR/factors.npz   the factor matrices (``factorlens.load(DIR)`` gives them back)
    DIR/inputs.npz    the input block as factorized, labels and class names (for the report)
    DIR/index.html    the self-contained report, DIR/figures/*.png its figures

Everything is first written to a staging folder beside ``DIR`` and moved into place only when
complete, so a failure never leaves output that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, CMTFResult
from factorlens.factorize.result import FACTORS_NPZ, RESULT_JSON

INPUTS_NPZ = "inputs.npz"
REPORT_HTML = "index.html"
FIGURES_DIR = "figures"
OUTPUT_NAMES = (RESULT_JSON, FACTORS_NPZ, INPUTS_NPZ, REPORT_HTML, FIGURES_DIR)


def check_output_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an output directory we may not write to, before any costly work.

    A directory that exists and is not empty is refused unless ``overwrite``; then only
    factorlens's own files in it are replaced.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FactorlensError(
            f"output path {out} exists and is not a directory; choose another --out"
        )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "a factorlens result" if (out / RESULT_JSON).exists() else "other files"
        raise FactorlensError(
            f"output directory {out} already holds {what}; pass --overwrite to replace it "
            "or choose another --out"
        )
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise FactorlensError(f"cannot create output directory {out}: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FactorlensError(f"output directory {out} is not writable; choose another --out")
    return out


def save_inputs(directory: Path, images: np.ndarray, labels, class_names) -> None:
    """Write the input block (as factorized), labels and class names to ``inputs.npz``."""
    arrays: dict[str, Any] = {"images": np.asarray(images, dtype=np.float32)}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if class_names is not None:
        arrays["class_names"] = np.asarray(list(class_names), dtype=str)
    np.savez_compressed(directory / INPUTS_NPZ, **arrays)


def load_inputs(directory: str | Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Read ``inputs.npz`` from a result directory: ``(images, labels, class_names)``."""
    path = Path(directory) / INPUTS_NPZ
    if not path.is_file():
        raise FactorlensError(f"{path} is missing; rerun `factorlens analyze` to recreate it")
    with np.load(path) as npz:
        images = npz["images"]
        labels = npz["labels"] if "labels" in npz.files else None
        names = [str(c) for c in npz["class_names"]] if "class_names" in npz.files else None
    return images, labels, names


def load(directory: str | Path) -> CMTFResult:
    """Load the factorization saved in a result directory (``result.json`` + ``factors.npz``)."""
    return CMTFResult.load(directory)


def write_outputs(
    out: str | Path,
    result: CMTFResult,
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    *,
    overwrite: bool = False,
    report: bool = True,
    title: str = "factorlens report",
) -> Path:
    """Write result files and the report into ``out`` atomically (staged, then moved)."""
    out = check_output_dir(out, overwrite)

    def produce(stage: Path) -> None:
        save_inputs(stage, images, labels, class_names)
        if report:
            _report(stage, result, images, labels, class_names, title)
        result.save(stage)

    return publish(out, produce, OUTPUT_NAMES)


def write_report_files(
    out: str | Path,
    result: CMTFResult,
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    *,
    title: str = "factorlens report",
) -> Path:
    """Write only ``index.html`` and ``figures/`` into ``out`` (staged, then moved)."""
    return publish(
        Path(out),
        lambda stage: _report(stage, result, images, labels, class_names, title),
        (REPORT_HTML, FIGURES_DIR),
    )


def _report(stage: Path, result, images, labels, class_names, title: str) -> None:
    from factorlens.report import write_report

    write_report(stage, result, images, labels, class_names, title=title)


def publish(out: Path, produce: Callable[[Path], None], names: tuple[str, ...]) -> Path:
    """Run ``produce(stage)`` in a staging folder beside ``out``; on success replace the
    entries ``names`` of ``out`` with the staged ones (``result.json`` moved last)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        produce(stage)
        out.mkdir(exist_ok=True)
        ordered = sorted(names, key=lambda n: n == RESULT_JSON)
        for name in ordered:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        for name in ordered:
            if (stage / name).exists():
                (stage / name).replace(out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return out


def input_images(store: Any) -> np.ndarray:
    """The input block of a store as an array (N, …)."""
    return np.asarray(store.block(store.names[0])[:], dtype=np.float32)


def tensor_blocks_for(store: Any, tensor_layers: list[str] | None) -> list[str] | None:
    """The engine's ``tensor_blocks`` for ``--tensor-layers``: the input (when it has two or
    more feature axes) plus those layers; ``None`` (the engine's default) when none given."""
    if not tensor_layers:
        return None
    first = store.names[0]
    base = [first] if len(store.block(first).shape) >= 3 else []
    return base + [t for t in tensor_layers if t != first]


def factorize_store(
    store: Any, rank: int, *, tensor_layers: list[str] | None = None, **engine: Any
) -> CMTFResult:
    """Fit the joint model to every block of ``store`` and attach its metadata.

    ``tensor_layers`` names layers to fit with a CP model on their natural shape, on top of the
    input (which gets a CP model whenever it has two or more feature axes).
    """
    engine["tensor_blocks"] = tensor_blocks_for(store, tensor_layers)
    model = CMTF(rank, **engine).fit(store)
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
    layers: list[str] | str | None = None,
    preprocess: Callable | None = None,
    store: str | Path | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    select: dict[str, Any] | None = None,
    nonfinite: str = "raise",
    overwrite: bool = False,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> Any:
    """Check ``out`` (and ``store``) first, then capture ``model`` on ``data`` into a store."""
    from factorlens.capture import capture
    from factorlens.store import open_store

    out = check_output_dir(out, overwrite)
    target = None
    if store is not None:
        target = Path(store)
        _check_store_path(target, overwrite, out)
    # an existing store being replaced is kept until the new capture has succeeded
    staging = target is not None and target.exists()
    where = target.with_name(f".{target.name}.staging") if staging else target
    if staging and where.exists():
        shutil.rmtree(where)
    try:
        acts = capture(
            model,
            data,
            layers,
            batch_size=batch_size,
            device=device,
            preprocess=preprocess,
            store=where,
            select=select,
            nonfinite=nonfinite,
            progress=progress,
            meta=meta,
        )
    except BaseException:
        if staging and where.exists():
            shutil.rmtree(where, ignore_errors=True)
        raise
    if staging:
        shutil.rmtree(target)
        where.replace(target)
        acts = open_store(target)
    return acts


def analyze(
    model: Any,
    data: Any,
    *,
    out: str | Path,
    rank: int = 10,
    layers: list[str] | str | None = None,
    preprocess: Callable | None = None,
    store: str | Path | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    select: dict[str, Any] | None = None,
    nonfinite: str = "raise",
    overwrite: bool = False,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
    report: bool = True,
    **engine: Any,
) -> CMTFResult:
    """Capture ``model`` on ``data`` (an ``ImageData``), factorize, write everything to ``out``.

    ``engine`` options go to :class:`factorlens.factorize.CMTF` (``nonneg``, ``l1``,
    ``weighting``, ``center``, ``tensor_blocks``, ``n_init``, ``max_iter``, ``tol``,
    ``random_state``). Returns the fitted :class:`CMTFResult`.
    """
    acts = capture_for_analysis(
        model,
        data,
        out=out,
        layers=layers,
        preprocess=preprocess,
        store=store,
        batch_size=batch_size,
        device=device,
        select=select,
        nonfinite=nonfinite,
        overwrite=overwrite,
        progress=progress,
        meta=meta,
    )
    return analyze_store(
        acts,
        out=out,
        rank=rank,
        overwrite=overwrite,
        progress=progress,
        report=report,
        device=device,
        **engine,
    )


def analyze_store(
    acts: Any,
    *,
    out: str | Path,
    rank: int = 10,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
    device: str = "cpu",
    extra_meta: dict[str, Any] | None = None,
    **engine: Any,
) -> CMTFResult:
    """Factorize an activation store (in memory or reopened from disk) and write ``out``.

    ``extra_meta`` is merged into the result's metadata (e.g. the rank scan's evidence).
    """
    out = check_output_dir(out, overwrite)
    result = factorize_store(acts, rank, progress=progress, device=device, **engine)
    result.meta.update(extra_meta or {})
    meta = acts.meta or {}
    write_outputs(
        out,
        result,
        input_images(acts),
        acts.labels,
        meta.get("class_names"),
        overwrite=overwrite,
        report=report,
        title=f"factorlens — {meta.get('model_name', 'model')}",
    )
    return result


def _check_store_path(path: Path, overwrite: bool, out: Path | None = None) -> None:
    """Refuse a ``--store`` that is a file, lies inside ``--out``, or exists without
    ``overwrite`` (then only a factorlens store is replaced)."""
    if path.exists() and not path.is_dir():
        raise FactorlensError(f"store path {path} is a file; choose another --store")
    if out is not None:
        o, p = out.resolve(), path.resolve()
        if p == o or o in p.parents:
            raise FactorlensError(
                f"--store {path} lies inside --out {out}; put the store somewhere else"
            )
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise FactorlensError(
                f"store path {path} already exists; pass --overwrite to replace it or choose "
                "another --store (to analyse an existing store, give --store without --model)"
            )
        from factorlens.store import open_store

        try:
            open_store(path)
        except FactorlensError:
            raise FactorlensError(
                f"--store {path} holds something that is not a complete factorlens store; "
                "it is not replaced even with --overwrite: choose another --store"
            ) from None
