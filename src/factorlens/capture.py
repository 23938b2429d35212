"""Capture a model's inputs and layer outputs into an activation store.

:func:`capture` runs the model in eval mode without gradients over batches, with forward
hooks on the chosen layers (always removed afterwards), and writes the input and every chosen
layer's output batch by batch into a store (see :mod:`factorlens.store`).

A module that runs more than once per forward pass (one ``ReLU`` used twice in a ResNet block)
gives one block per call, in the order the calls happen: ``layer1.0.relu`` for the first,
``layer1.0.relu#2`` for the second. Every batch must make the same number of calls.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from factorlens.errors import FactorlensError, FactorlensRuntimeError, close_matches, one_line
from factorlens.modelio import resolve_device
from factorlens.options import CaptureOptions
from factorlens.store import ActivationStore, MemoryStore, ZarrStore
from factorlens.writer import BatchWriter

#: the defaults of the capture (one place: the options dataclass)
_C = CaptureOptions()

#: leaf module types whose output is a new representation (captured by default).
REPRESENTATION_TYPES: tuple[type[nn.Module], ...] = (
    # convolutions and linear maps
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Bilinear,
    # activations
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Tanh,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GLU,
    nn.Softplus,
    nn.Softsign,
    nn.Softshrink,
    nn.Hardshrink,
    nn.Tanhshrink,
    nn.Threshold,
    nn.Softmax,
    nn.Softmin,
    nn.LogSoftmax,
    nn.Softmax2d,
    # pooling
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
)

NONFINITE_POLICIES = ("raise", "zero")
_GLOB_CHARS = set("*?[")


def _module_names(model: nn.Module) -> list[str]:
    """Names of all submodules in ``named_modules()`` order, without the root ``""``."""
    return [name for name, _ in model.named_modules() if name]


def default_layers(model: nn.Module) -> list[str]:
    """Return the leaf modules whose output is a new representation.

    Convolutions, linear layers, activations and pooling count; dropout, normalization,
    flatten, identity and containers do not.

    Parameters
    ----------
    model : torch.nn.Module
        The network.

    Returns
    -------
    list of str
        Module names, in ``named_modules()`` order.

    Examples
    --------
    >>> from collections import OrderedDict
    >>> from torch import nn
    >>> from factorlens.capture import default_layers
    >>> net = nn.Sequential(OrderedDict(
    ...     features=nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()),
    ...     classifier=nn.Sequential(nn.Flatten(), nn.Linear(144, 10)),
    ... ))
    >>> default_layers(net)
    ['features.0', 'features.1', 'classifier.1']
    """
    return [
        name
        for name, module in model.named_modules()
        if name
        and next(iter(module.children()), None) is None
        and isinstance(module, REPRESENTATION_TYPES)
    ]


def _split_names(layers: str | Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        return [part.strip() for part in layers.split(",") if part.strip()]
    out = []
    for item in layers:
        if not isinstance(item, str):
            raise FactorlensError(
                f"layer names must be strings, got {item!r} ({type(item).__name__})"
            )
        out.append(item.strip())
    return out


def select_layers(model: nn.Module, layers: Sequence[str] | str | None = None) -> list[str]:
    """Resolve ``layers`` to module names, in network (``named_modules``) order, de-duplicated.

    Names select modules; :func:`capture` stores every call of a selected module (``name#2``
    the second).

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    layers : sequence of str or str, optional
        Exact names as in ``named_modules()`` or fnmatch globs (``"features.*"``), as a list
        or a comma-separated string; ``None`` gives :func:`default_layers`.

    Returns
    -------
    list of str
        Module names in network order.

    Raises
    ------
    FactorlensError
        For a name or glob that matches no module (with close matches suggested), no names
        at all, or the root module.

    Examples
    --------
    >>> from collections import OrderedDict
    >>> from torch import nn
    >>> from factorlens.capture import select_layers
    >>> net = nn.Sequential(OrderedDict(
    ...     features=nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()),
    ...     classifier=nn.Sequential(nn.Flatten(), nn.Linear(144, 10)),
    ... ))
    >>> select_layers(net, "features.*")
    ['features.0', 'features.1']
    >>> select_layers(net, "classifier.1, features.0")
    ['features.0', 'classifier.1']
    """
    names = _module_names(model)
    if layers is None:
        chosen = default_layers(model)
        if not chosen:
            raise FactorlensError(
                f"{type(model).__name__} has no convolution, linear, activation or pooling "
                "submodules to capture by default; name the layers to capture (`layers`)"
            )
        return chosen
    wanted = _split_names(layers)
    if not wanted:
        raise FactorlensError(
            "no layer names given; pass names as in model.named_modules() or globs like "
            "'features.*', or leave layers out for the default layers"
        )
    picked: set[str] = set()
    for item in wanted:
        if item == "":
            raise FactorlensError(
                "the root module ('') cannot be captured as a layer; name one of its submodules"
            )
        if _GLOB_CHARS & set(item):
            hits = [n for n in names if fnmatch.fnmatchcase(n, item)]
            if not hits:
                raise FactorlensError(
                    f"layer pattern {item!r} matches no module{close_matches(item, names)}; "
                    f"list module names with model.named_modules(){_call_hint(item)}"
                )
            picked.update(hits)
        elif item in names:
            picked.add(item)
        else:
            raise FactorlensError(
                f"unknown layer {item!r}{close_matches(item, names)}; "
                "use names as in model.named_modules() or a glob like 'features.*'"
                f"{_call_hint(item)}"
            )
    return [n for n in names if n in picked]


def _call_hint(item: str) -> str:
    """For a name with ``#``: say that naming the module captures each of its calls."""
    if "#" not in item:
        return ""
    return (
        f"; every call of a module is captured (name#2 for the second call), so name the "
        f"module itself ({item.split('#', 1)[0]!r})"
    )


# --------------------------------------------------------------------------- helpers
def _unpack_data(data: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Return ``(images, labels or None, data meta)`` from an array, tensor or ImageData."""
    extra: dict[str, Any] = {}
    labels = None
    if hasattr(data, "images"):
        labels = getattr(data, "labels", None)
        for attr, key in (("description", "data"), ("class_names", "class_names")):
            value = getattr(data, attr, None)
            if value is not None:
                extra[key] = list(value) if isinstance(value, tuple) else value
        data = data.images
    if isinstance(data, np.ndarray | torch.Tensor):
        images = data
    else:
        raise FactorlensError(
            f"data must be a numpy array, a torch tensor or an ImageData with .images, got "
            f"{type(data).__name__}; convert it with numpy.asarray first"
        )
    if images.ndim < 2:
        raise FactorlensError(
            f"data has shape {tuple(images.shape)}; it needs a sample axis and at least one "
            "feature axis, (N, C, H, W) or (N, D)"
        )
    if images.shape[0] == 0:
        raise FactorlensError("data holds no samples (N = 0); give at least one input")
    return images, labels, extra


def _batch_tensor(images: Any, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of the data as a fresh float32 CPU tensor (a copy)."""
    if isinstance(images, torch.Tensor):
        return images[start:stop].detach().to(device="cpu", dtype=torch.float32, copy=True)
    return torch.from_numpy(np.array(images[start:stop], dtype=np.float32, copy=True))


def _input_rows(batch: torch.Tensor) -> np.ndarray:
    """Return the input block rows: the batch as given, a channel axis of size 1 squeezed."""
    arr = batch.numpy().copy()
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    return arr


def _select_output(name: str, out: Any, select: Mapping[str, Any]) -> Any:
    """Pick the element ``select[name]`` of a tuple/list/dict output."""
    if name not in select:
        return out
    key = select[name]
    try:
        if isinstance(out, Mapping):
            if key not in out and isinstance(key, int | np.integer):
                key = list(out.keys())[int(key)]
            return out[key]
        if isinstance(out, list | tuple):
            if isinstance(key, str) and key.lstrip("-").isdigit():
                key = int(key)
            if not isinstance(key, int | np.integer):
                raise TypeError(f"{type(out).__name__} output needs an integer index")
            return out[int(key)]
    except (KeyError, IndexError, TypeError) as exc:
        keys = list(out.keys()) if isinstance(out, Mapping) else f"0..{len(out) - 1}"
        raise FactorlensError(
            f"`select={{{name!r}: {key!r}}}` does not fit the {type(out).__name__} output of "
            f"layer {name!r} ({one_line(exc, 80)}); choose one of {keys}"
        ) from None
    return out


def _as_rows(name: str, out: Any, select: Mapping[str, Any], batch_n: int) -> np.ndarray:
    """Return a layer's (selected) output as a float32 ndarray copy ``(batch_n, ...)``."""
    out = _select_output(name, out, select)
    if isinstance(out, list | tuple | Mapping):
        kind = type(out).__name__
        example = next(iter(out.keys()), 0) if isinstance(out, Mapping) else 0
        raise FactorlensError(
            f"layer {name!r} returns a {kind}, not a tensor; pick one element with "
            f"`select={{{name!r}: {example!r}}}`"
        )
    if not isinstance(out, torch.Tensor):
        raise FactorlensError(
            f"layer {name!r} returns {type(out).__name__}, not a tensor; choose another layer"
        )
    if out.ndim == 0 or out.shape[0] != batch_n:
        raise FactorlensError(
            f"layer {name!r} output has shape {tuple(out.shape)} whose first axis is not the "
            f"batch of {batch_n} samples; choose another layer"
        )
    # copy now: later in-place operations (ReLU(inplace=True)) must not change what we keep
    return out.detach().to(device="cpu", dtype=torch.float32, copy=True).numpy()


def _make_store(
    store: ActivationStore | str | os.PathLike[str] | None,
    overwrite: bool,
    fingerprint: dict[str, Any],
    compression: str,
    batch_size: int,
) -> tuple[ActivationStore, bool]:
    """Return ``(store, created_here)``; a new zarr store gets chunks of whole batches."""
    if store is None:
        return MemoryStore(), True
    if isinstance(store, str | os.PathLike):
        created = ZarrStore.create(
            store,
            overwrite=overwrite,
            fingerprint=fingerprint,
            compression=compression,
            chunk_multiple=batch_size,
        )
        return created, True
    if isinstance(store, ActivationStore):
        if store.closed or len(store):
            raise FactorlensError(
                "capture needs a new, empty store; create a fresh MemoryStore or ZarrStore"
            )
        return store, False
    raise FactorlensError(
        f"store must be None, a directory path or an ActivationStore, got {type(store).__name__}"
    )


def _sha256(arrays: Sequence[Any]) -> str:
    """SHA-256 over the dtypes, shapes and bytes of numpy arrays / torch tensors."""
    digest = hashlib.sha256()
    for arr in arrays:
        if isinstance(arr, torch.Tensor):  # as raw bytes: numpy has no bfloat16
            digest.update(f"{arr.dtype}{tuple(arr.shape)}".encode())
            arr = arr.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        else:
            arr = np.ascontiguousarray(arr)
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        if arr.size:  # a zero-size buffer cannot be cast
            digest.update(arr.data.cast("B"))  # arr.data: memoryview(arr), typed for 3.11
    return digest.hexdigest()


def _fingerprint(model: nn.Module, images: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return what makes two captures the same: the settings, the inputs, the weights (hashed)."""
    state = model.state_dict()
    return {
        **settings,
        "inputs_sha256": _sha256([images]),
        "weights_sha256": _sha256([state[k] for k in sorted(state)]),
    }


# --------------------------------------------------------------------------- capture
def capture(
    model: nn.Module,
    data: Any,
    layers: Sequence[str] | str | None = None,
    *,
    batch_size: int = _C.batch_size,
    device: str | torch.device = _C.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: Any = None,
    store: ActivationStore | str | os.PathLike[str] | None = None,
    select: Mapping[str, int | str] | None = None,
    nonfinite: str = _C.nonfinite,
    compression: str = _C.compression,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    output: str | None = None,
    resume: bool = False,
) -> ActivationStore:
    """Run ``model`` over ``data`` and store the input and the chosen layers' outputs.

    On an error a store that capture created on disk is removed again; on an interruption
    (``KeyboardInterrupt``, ``SystemExit``) it is kept, for ``resume``.

    Parameters
    ----------
    model : torch.nn.Module
        The network; run in eval mode without gradients (its modes are restored after).
    data : array-like or ImageData
        Inputs ``(N, C, H, W)`` (float32 in [0, 1]) or ``(N, D)`` as numpy/torch, or an
        object with ``.images`` (and ``.labels``, ``.description``, ``.class_names``).
    layers : sequence of str or str, optional
        Module names / globs / comma-separated string (see :func:`select_layers`); an empty
        list records no layer, only the input and (with ``output``) the model's output.
        Every call of a chosen module is its own block (``name``, ``name#2``, ...), in call
        order.
    batch_size : int
        Samples per forward pass.
    device : str or torch.device
        Where the model runs (the model is moved there and back if needed).
    preprocess : callable, optional
        Applied to each ``(B, C, H, W)`` batch before the model (not to the stored input
        block, which keeps the data as given, ``N×H×W`` for one channel).
    labels : array-like, optional
        ``(N,)`` integer labels (default: ``data.labels`` when present).
    store : ActivationStore or str or os.PathLike, optional
        None (a :class:`MemoryStore`), a directory path (a new :class:`ZarrStore`, refused if
        it exists unless ``overwrite``), or an empty store object.
    select : mapping of str to int or str, optional
        ``{layer: index or key}`` for layers that return a tuple/list/dict (applies to every
        call of the layer).
    nonfinite : str
        ``"raise"`` on NaN/Inf activations, or ``"zero"`` to replace them with 0 (counts per
        block in ``meta["nonfinite"]``).
    compression : str
        Chunks of a store on disk: ``"none"`` (raw float32, fastest) or ``"zstd"`` (smaller);
        see :meth:`ZarrStore.create`.
    progress : bool
        Show a progress bar on stderr when there is more than one batch.
    meta : mapping, optional
        Extra JSON-able metadata (model / data description, class names).
    overwrite : bool
        Let a path ``store`` replace an existing factorlens store there.
    output : str, optional
        Also store what the model itself returns (``(N, K)`` class scores, say) as a block of
        this name and kind ``"output"`` — the same forward pass, not a second one.
    resume : bool
        Continue the interrupted capture in the store directory ``store`` from its last batch
        whose rows are all on disk; the model, weights, data and settings must be the ones it
        started with (checked), and the store ends bit-identical to an uninterrupted capture.

    Returns
    -------
    ActivationStore
        The closed (complete, read-only) store.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise FactorlensError(f"nonfinite must be 'raise' or 'zero', got {nonfinite!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise FactorlensError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise FactorlensError(f"batch_size must be a positive integer, got {batch_size}")
    images, data_labels, data_meta = _unpack_data(data)
    n = int(images.shape[0])
    if labels is None:
        labels = data_labels
    if labels is not None:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.shape != (n,):
            raise FactorlensError(
                f"labels have shape {labels.shape} but the data has {n} samples; give one "
                "label per sample"
            )
    if output is not None and isinstance(layers, list | tuple) and not layers:
        chosen: list[str] = []  # only the input and the model's output
    else:
        chosen = select_layers(model, layers)
    if "input" in chosen:
        raise FactorlensError(
            "a layer named 'input' clashes with the input block; capture its parent or "
            "rename the module"
        )
    if output is not None and output in ("input", *chosen):
        raise FactorlensError(
            f"output block name {output!r} clashes with the input or a captured layer; "
            "choose another name"
        )
    select = dict(select or {})
    for key in select:
        if key not in chosen and key != output:
            raise FactorlensError(
                f"select names layer {key!r}, which is not captured{close_matches(key, chosen)}; "
                "add it to the layers or fix the name"
            )
    dev = resolve_device(str(device))  # one device rule for capture and model loading
    modules = dict(model.named_modules())

    settings = {
        "n_samples": n,
        "batch_size": batch_size,
        "layers": chosen,
        "select": select,
        "nonfinite": nonfinite,
        "output": output,
        "device": str(dev),
        "meta": dict(meta or {}),
    }
    on_disk = isinstance(store, str | os.PathLike)
    fingerprint = _fingerprint(model, images, settings) if on_disk else {}
    start_row = 0
    counts: dict[str, int] = {}
    the_store: ActivationStore
    if resume:
        if not isinstance(store, str | os.PathLike):  # on_disk, narrowed for the type checker
            raise FactorlensError("resume needs the store's directory path (store=PATH)")
        the_store, start_row, counts = ZarrStore.resume(store, fingerprint)
        created = False
    else:
        the_store, created = _make_store(store, overwrite, fingerprint, compression, batch_size)
    try:
        counts = _run_capture(
            model,
            images,
            chosen,
            modules,
            the_store,
            batch_size=batch_size,
            device=dev,
            preprocess=preprocess,
            select=select,
            nonfinite=nonfinite,
            progress=progress,
            output=output,
            start_row=start_row,
            counts=counts,
        )
        finish_store(the_store, model, labels, {**data_meta, **dict(meta or {})}, settings, counts)
    except (KeyboardInterrupt, SystemExit):
        raise  # interrupted: what is on disk stays, to be resumed
    except BaseException:
        if created and isinstance(the_store, ZarrStore):
            the_store.discard()
        raise
    return the_store


def finish_store(
    store: ActivationStore,
    model: nn.Module,
    labels: np.ndarray | None,
    meta: Mapping[str, Any],
    settings: Mapping[str, Any],
    counts: Mapping[str, int],
) -> None:
    """Give a filled store its labels and metadata, then close it (complete, read-only).

    ``settings`` are the capture's (``batch_size``, ``n_samples``, ``device``, ``select``,
    ``nonfinite``); the layers, modules and shapes are read off the store's blocks (a resumed
    capture may have run no batch at all), ``counts`` are the non-finite values replaced.
    """
    if labels is not None:
        store.set_labels(labels)
    layer_blocks = [b for b in store.names if store.info(b)["kind"] == "layer"]
    full_meta = {"model": type(model).__name__, **dict(meta)}
    full_meta.update(
        {
            "layers": layer_blocks,
            "modules": {b: store.info(b)["module"] for b in layer_blocks},
            "shapes": {name: list(store.shape(name)) for name in store.names},
            **{k: settings[k] for k in ("batch_size", "n_samples", "device", "select")},
            "nonfinite_policy": settings["nonfinite"],
            "nonfinite": {name: int(counts.get(name, 0)) for name in store.names},
        }
    )
    store.set_meta(full_meta)
    store.close()


def _run_capture(
    model: nn.Module,
    images: Any,
    chosen: list[str],
    modules: dict[str, nn.Module],
    store: ActivationStore,
    *,
    batch_size: int,
    device: torch.device,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
    select: dict[str, Any],
    nonfinite: str,
    progress: bool,
    output: str | None = None,
    start_row: int = 0,
    counts: dict[str, int] | None = None,
    stop_if: Callable[[], bool] | None = None,
) -> dict[str, int]:
    """Run the batch loop of :func:`capture`, from sample ``start_row``.

    ``start_row`` is a batch boundary; the store then already holds the rows before it, and
    ``counts`` their non-finite counts. ``stop_if`` is asked before every batch; when it says
    so the loop stops with a :class:`FactorlensRuntimeError` (a sharded capture given up).

    Returns the non-finite counts replaced per block. The k-th call of module ``m`` is block
    ``m#k`` (k >= 2), blocks in call order. Hooks are always removed and the model's modes and
    device restored.
    """
    from tqdm import tqdm

    n = int(images.shape[0])
    n_batches = -(-n // batch_size)
    outputs: dict[str, np.ndarray] = {}  # block -> rows of this batch, in call order
    blocks: dict[str, str] = {}  # block -> module name
    calls: dict[str, int] = {}  # module name -> calls in this batch
    first_calls: dict[str, int] = {}
    counts = dict(counts or {})
    state = {"batch_n": 0}

    def make_hook(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
            k = calls[name] = calls.get(name, 0) + 1
            block = name if k == 1 else f"{name}#{k}"
            if block in outputs:
                raise FactorlensError(
                    f"two captured calls would both be block {block!r} (a module name with "
                    "'#'); capture only one of those modules"
                )
            outputs[block] = _as_rows(name, out, select, state["batch_n"])
            blocks[block] = name

        return hook

    modes = {m: m.training for m in model.modules()}
    tensors = [*model.parameters(), *model.buffers()]
    devices = {t.device for t in tensors}
    moved_from = next(iter(devices)) if len(devices) == 1 and device not in devices else None
    handles = []
    bar = None
    writer: BatchWriter | None = None  # checks and writes batches while the next one runs
    try:
        if moved_from is not None:
            model.to(device)
        model.eval()
        handles = [modules[name].register_forward_hook(make_hook(name)) for name in chosen]
        bar = tqdm(
            total=n_batches,
            initial=start_row // batch_size,
            desc="capture",
            unit="batch",
            file=sys.stderr,
            leave=False,
            disable=not (progress and n_batches > 1),
        )
        with torch.no_grad():
            for start in range(start_row, n, batch_size):
                if stop_if is not None and stop_if():
                    raise FactorlensRuntimeError("the capture was given up; nothing was kept")
                stop = min(start + batch_size, n)
                batch = _batch_tensor(images, start, stop)
                rows_in = _input_rows(batch)
                x = _apply_preprocess(preprocess, batch).to(device)
                outputs.clear()
                calls.clear()
                state["batch_n"] = stop - start
                try:
                    returned = model(x)
                except FactorlensError:
                    raise
                except Exception as exc:
                    raise FactorlensRuntimeError(
                        f"the model failed on an input batch of shape {tuple(x.shape)} "
                        f"({x.dtype}): {type(exc).__name__}: {one_line(exc, 400)}; check that the "
                        "data shape, channels and preprocessing match what the model expects"
                    ) from exc
                missing = [name for name in chosen if name not in calls]
                if missing:
                    raise FactorlensError(
                        f"layer(s) {', '.join(map(repr, missing))} did not run in the forward "
                        "pass; choose layers that the model's forward() uses"
                    )
                model_rows = {}  # the model's own output block, if any
                if output is not None:
                    model_rows[output] = _as_rows(output, returned, select, stop - start)
                if start == start_row:
                    first_calls = dict(calls)
                if len(store) == 0:
                    if output in outputs:
                        raise FactorlensError(
                            f"output block name {output!r} clashes with a captured call of "
                            f"layer {blocks[output]!r}; choose another name"
                        )
                    store.create_block("input", rows_in.shape[1:], "input", "input", n_samples=n)
                    for block, rows in model_rows.items():
                        kind = type(model).__name__
                        store.create_block(block, rows.shape[1:], "output", kind, n_samples=n)
                    for block, rows in outputs.items():
                        module = type(modules[blocks[block]]).__name__
                        store.create_block(block, rows.shape[1:], "layer", module, n_samples=n)
                elif start == start_row:  # resumed: the blocks must be the ones on disk
                    _check_resumed_blocks(store, [*model_rows, *outputs])
                elif calls != first_calls:
                    name = next(m for m in chosen if calls[m] != first_calls[m])
                    raise FactorlensError(
                        f"layer {name!r} ran {calls[name]} time(s) in the batch starting at "
                        f"sample {start} but {first_calls[name]} time(s) in the first batch; "
                        "every call is its own block, so capture a module that runs the same "
                        "number of times for every batch"
                    )
                if writer is None:
                    writer = BatchWriter(store, nonfinite, counts)
                writer.put(start, stop, [("input", rows_in), *model_rows.items(), *outputs.items()])
                outputs.clear()
                bar.update(1)
        if writer is not None:
            writer.close()  # every batch written (or the writer's error raised here)
    finally:
        if writer is not None:
            writer.close()  # after an error or interruption: what was queued, in order
        for handle in handles:
            handle.remove()
        if bar is not None:
            bar.close()
        for submodule, mode in modes.items():
            submodule.training = mode
        if moved_from is not None:
            model.to(moved_from)
    return counts


def _check_resumed_blocks(store: ActivationStore, names: list[str]) -> None:
    """Check that a resumed capture produces exactly the blocks the interrupted one created."""
    have = [n for n in store.names if n != "input"]
    if sorted(have) != sorted(names):
        raise FactorlensError(
            f"the resumed capture makes blocks {names} but the store holds {have}; resume with "
            "the same model and layers, or pass `overwrite=True` to start again"
        )


def _apply_preprocess(
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None, batch: torch.Tensor
) -> torch.Tensor:
    if preprocess is None:
        return batch
    try:
        out = preprocess(batch)
    except FactorlensError:
        raise
    except Exception as exc:
        raise FactorlensError(
            f"preprocess failed on a batch of shape {tuple(batch.shape)}: "
            f"{type(exc).__name__}: {one_line(exc, 400)}; fix the preprocess function or the data"
        ) from exc
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(np.asarray(out, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise FactorlensError(
                f"preprocess returned {type(out).__name__}, not a tensor; return a torch tensor"
            ) from exc
    if out.ndim == 0 or out.shape[0] != batch.shape[0]:
        rows = f"{out.shape[0]} rows" if out.ndim else "a 0-d tensor"
        raise FactorlensError(
            f"the preprocess hook returned {rows} for a batch of {batch.shape[0]} inputs "
            f"(shape {tuple(out.shape)} from {tuple(batch.shape)}); factorlens_preprocess must "
            "return one row per input: transform the batch, never drop or add samples"
        )
    return out
