"""Capture a model's inputs and layer outputs into an activation store.

:func:`capture` runs the model in eval mode without gradients over batches, with forward
hooks on the chosen layers (always removed afterwards), and writes the input and every chosen
layer's output batch by batch into a store (see :mod:`factorlens.store`).

A module that runs more than once per forward pass (one ``ReLU`` used twice in a ResNet block)
gives one block per call, in the order the calls happen: ``layer1.0.relu`` for the first,
``layer1.0.relu#2`` for the second. Every batch must make the same number of calls.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from factorlens.errors import (
    FactorlensError,
    FactorlensRuntimeError,
    close_matches,
    note,
    one_line,
    warn,
)
from factorlens.modelio import resolve_device
from factorlens.options import CaptureOptions, capture_settings
from factorlens.pages import small_pages
from factorlens.rows import Levels, holds_reals, row_chunks
from factorlens.store import ActivationStore, MemoryStore, ZarrStore
from factorlens.writer import BatchWriter

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
    if not (
        layers is None
        or isinstance(layers, str)
        or (isinstance(layers, Sequence) and all(isinstance(x, str) for x in layers))
    ):
        raise FactorlensError(
            f"`layers` must be layer names (a list of str, or one str with commas), got "
            f"{type(layers).__name__}"
        )
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
    if isinstance(data, np.ndarray | torch.Tensor | Levels):
        images = data
    elif isinstance(data, str):
        raise FactorlensError(
            f"data must be an array, not the text {data!r}; read a data SPEC with "
            "factorlens.load_data(SPEC) first"
        )
    else:
        raise FactorlensError(
            f"data must be a numpy array, a torch tensor or an ImageData with .images, got "
            f"{type(data).__name__}; convert it with numpy.asarray first"
        )
    if not isinstance(images, Levels) and not holds_reals(images.dtype):
        raise FactorlensError(
            f"data holds {images.dtype} values; give real numbers (pixel values as float32, "
            "or uint8 levels)"
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
    raise FactorlensError(
        f"`select={{{name!r}: {key!r}}}` picks one element of a tuple, list or dict output, "
        f"but layer {name!r} returns a {type(out).__name__}; drop {name!r} from `select`"
    )


def _as_tensor(name: str, out: Any, select: Mapping[str, Any], batch_n: int) -> torch.Tensor:
    """Return a layer's (selected) output as a detached float32 tensor ``(batch_n, ...)``.

    Not a copy: the tensor may be changed later by in-place operations of the model.
    """
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
    if out.is_complex():
        raise FactorlensError(
            f"layer {name!r} returns complex values ({out.dtype}), which a factorization of "
            "real blocks would cut to their real part; choose another layer"
        )
    if out.ndim == 0 or out.shape[0] != batch_n:
        raise FactorlensError(
            f"layer {name!r} output has shape {tuple(out.shape)} whose first axis is not the "
            f"batch of {batch_n} samples; choose another layer"
        )
    return out.detach().float()


def _failure_hint(exc: Exception) -> str:
    """Return what to check when the model raised in its forward pass."""
    text = str(exc)
    if isinstance(exc, TypeError) and "forward()" in text and "argument" in text:
        return (
            "factorlens calls model(x) with one batch tensor: give forward()'s other "
            "arguments defaults, or wrap the model in a module whose forward takes x alone"
        )
    return "check that the data shape, channels and preprocessing match what the model expects"


def _fingerprint_of(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Return a few values that tell a ``(n, K)`` output apart: its first 8 columns, row sums.

    Kept for every 2-D block of a first batch instead of the rows (a ResNet's would be GBs).
    """
    return rows[:, :8].clone(), rows.sum(dim=1)


def _to_rows(out: torch.Tensor) -> np.ndarray:
    """Return a float32 numpy copy of a tensor, on the CPU."""
    return out.to(device="cpu", dtype=torch.float32, copy=True).numpy()


def _as_rows(name: str, out: Any, select: Mapping[str, Any], batch_n: int) -> np.ndarray:
    """Return a layer's (selected) output as a float32 ndarray copy ``(batch_n, ...)``."""
    return _to_rows(_as_tensor(name, out, select, batch_n))


def check_store_dtype(options: CaptureOptions, *, on_disk: bool) -> None:
    """Refuse a ``store_dtype`` other than float32 for a capture that writes no store on disk."""
    if options.store_dtype != "float32" and not on_disk:
        raise FactorlensError(
            f"`store_dtype={options.store_dtype!r}` is how a store on disk holds its chunks; "
            "give `store=PATH`, or drop `store_dtype` (blocks in memory are float32)"
        )


def _make_store(
    store: ActivationStore | str | os.PathLike[str] | None,
    overwrite: bool,
    fingerprint: dict[str, Any],
    options: CaptureOptions,
) -> tuple[ActivationStore, bool]:
    """Return ``(store, created_here)``; a new zarr store gets chunks of whole batches."""
    check_store_dtype(options, on_disk=isinstance(store, str | os.PathLike))
    if store is None:
        return MemoryStore(), True
    if isinstance(store, str | os.PathLike):
        created = ZarrStore.create(
            store,
            overwrite=overwrite,
            fingerprint=fingerprint,
            compression=options.compression,
            chunk_multiple=int(options.batch_size),
            dtype=options.store_dtype,
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
        if isinstance(arr, Levels):  # as the float32 array it stands for, a chunk at a time
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
            for _, chunk in row_chunks(arr):
                digest.update(np.ascontiguousarray(chunk).data.cast("B"))
            continue
        if isinstance(arr, torch.Tensor):  # as raw bytes: numpy has no bfloat16
            digest.update(f"{arr.dtype}{tuple(arr.shape)}".encode())
            arr = arr.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        else:
            arr = np.ascontiguousarray(arr)
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
        if arr.size:  # a zero-size buffer cannot be cast
            digest.update(arr.data.cast("B"))  # arr.data: memoryview(arr), typed for 3.11
    return digest.hexdigest()


def _code_sha256(model: nn.Module, preprocess: Any) -> str:
    """Return the SHA-256 of the code that decides the rows.

    That is the model class's source file (its forward and anything else in that file) and
    the preprocess hook's source, where Python has them.
    """
    import inspect

    digest = hashlib.sha256()
    for obj in (type(model), preprocess):
        if obj is None:
            continue
        try:
            source = inspect.getsourcefile(obj) or ""
            text = Path(source).read_bytes() if source else b""
        except (TypeError, OSError):
            text = b""
        if not text:
            with contextlib.suppress(TypeError, OSError):
                text = inspect.getsource(obj).encode()
        digest.update(getattr(obj, "__qualname__", type(obj).__name__).encode() + b"\0" + text)
    return digest.hexdigest()


def _fingerprint(
    model: nn.Module, images: Any, settings: Mapping[str, Any], preprocess: Any = None
) -> dict[str, Any]:
    """Return what makes two captures the same.

    The settings, and hashes of the inputs, the weights' values and the code (model file and
    preprocess hook).
    """
    state = model.state_dict()
    return {
        **settings,
        "inputs_sha256": _sha256([images]),
        "weights_sha256": _sha256([state[k] for k in sorted(state)]),
        "code_sha256": _code_sha256(model, preprocess),
    }


def check_model(model: Any) -> None:
    """Refuse a model that is not a ``torch.nn.Module`` instance (one line, with the fix)."""
    if isinstance(model, nn.Module):
        return
    if isinstance(model, type) and issubclass(model, nn.Module):
        hint = f"the class itself was given: pass an instance, {model.__name__}()"
    elif isinstance(model, str | os.PathLike):
        hint = "build it first: factorlens.modelio.build_model('FILE.py:Class', weights)"
    else:
        hint = "pass the network as a torch.nn.Module"
    raise FactorlensError(f"`model` must be a torch.nn.Module, got {type(model).__name__}; {hint}")


def _check_capture_args(
    model: nn.Module,
    data: Any,
    layers: Sequence[str] | str | None,
    labels: Any,
    select: Mapping[str, int | str] | None,
    output: str | None,
) -> tuple[Any, int, np.ndarray | None, list[str], dict[str, Any], dict[str, Any]]:
    """Check a capture's arguments (one-line errors); return what the passes need.

    That is ``(images, N, labels or None, chosen layers, select, the data's meta)``. The
    settings (:class:`~factorlens.options.CaptureOptions`) check themselves.
    """
    check_model(model)
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
    return images, n, labels, chosen, select, data_meta


# --------------------------------------------------------------------------- capture
@small_pages()
def capture(
    model: nn.Module,
    data: Any,
    layers: Sequence[str] | str | None = None,
    *,
    options: CaptureOptions | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: Any = None,
    store: ActivationStore | str | os.PathLike[str] | None = None,
    select: Mapping[str, int | str] | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    output: str | None = None,
    resume: bool = False,
    check_determinism: bool = True,
    **settings: Any,
) -> ActivationStore:
    """Run ``model`` over ``data``; return the closed store of its input and layers' outputs.

    A store it created on disk is removed on an error, and kept to ``resume`` on Ctrl-C.

    Parameters
    ----------
    model : torch.nn.Module
        The network; run in eval mode without gradients (its modes are restored after).
    data : array-like or ImageData
        Inputs ``(N, C, H, W)`` (float32 in [0, 1]) or ``(N, D)`` as numpy/torch, or an
        object with ``.images`` (and ``.labels``, ``.description``, ``.class_names``).
    layers : sequence of str or str, optional
        Module names, globs or a comma-separated string (:func:`select_layers`); ``[]``: only
        the input (and ``output``). Each call of a module is a block (``name``, ``name#2``).
    options : CaptureOptions, optional
        The settings (:class:`~factorlens.options.CaptureOptions`): ``batch_size``,
        ``device`` (the model is moved there and back), ``nonfinite`` (``"raise"`` on NaN/Inf,
        or ``"zero"``, counted in ``meta["nonfinite"]``), ``compression`` and ``store_dtype``
        (float32 or float16 chunks) of a store on disk; every layer is held whole. Keywords
        (``**settings``: ``batch_size=64``) win over it.
    preprocess : callable, optional
        Applied to each ``(B, C, H, W)`` batch before the model (not to the stored input).
    labels : array-like, optional
        ``(N,)`` integer labels (default: ``data.labels`` when present).
    store : ActivationStore or str or os.PathLike, optional
        None (a :class:`MemoryStore`), a directory path (a new :class:`ZarrStore`; an existing
        one is replaced only with ``overwrite``), or an empty store object.
    select : mapping of str to int or str, optional
        ``{layer: index or key}`` for layers that return a tuple/list/dict.
    progress : bool
        Show a progress bar on stderr when there is more than one batch.
    meta : mapping, optional
        Extra JSON-able metadata (model / data description, class names).
    output : str, optional
        Also store what the model returns (class scores, say) as a block of this name.
    resume : bool
        Continue the interrupted capture in ``store`` (same model, data, settings: checked).
    check_determinism : bool
        Run a few inputs twice first and warn when the answers differ (or when the model's
        forward puts modules back in training mode); False where a caller just did.
    """
    opts = whole_layer_options(options, settings)
    images, n, labels, chosen, select, data_meta = _check_capture_args(
        model, data, layers, labels, select, output
    )
    recorded = _recorded(opts, n, chosen, select, output, meta)
    the_store, created, start_row, counts = _open_for_capture(
        store, resume, overwrite, opts, (model, images, recorded, preprocess)
    )
    with _discarded_on_failure(the_store, created):
        counts, output_meta = _run_capture(
            model,
            images,
            chosen,
            the_store,
            opts,
            drop_unused=layers is None,
            preprocess=preprocess,
            select=select,
            progress=progress,
            output=output,
            start_row=start_row,
            counts=counts,
            check_determinism=check_determinism,
        )
        finish_store(
            the_store,
            model,
            labels,
            {**data_meta, **dict(meta or {}), **output_meta},
            recorded,
            counts,
        )
    return the_store


def _recorded(
    options: CaptureOptions,
    n: int,
    chosen: list[str],
    select: dict[str, Any],
    output: str | None,
    meta: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Return a capture's settings as its store records them (a resume must match them)."""
    return {
        "n_samples": n,
        "batch_size": int(options.batch_size),
        "layers": chosen,
        "select": select,
        "nonfinite": options.nonfinite,
        "output": output,
        "device": str(resolve_device(str(options.device))),  # one rule for capture and loading
        "compression": options.compression,  # a resume keeps the store's codec: refuse another
        "meta": dict(meta or {}),
        **dtype_record(options),
    }


def dtype_record(options: CaptureOptions) -> dict[str, str]:
    """Return the store's number type as a capture records it: ``{}`` for the default.

    Recorded only when not float32, so that an interrupted capture from before the option
    resumes as it was.
    """
    return {} if options.store_dtype == "float32" else {"store_dtype": options.store_dtype}


def whole_layer_options(
    options: CaptureOptions | None, settings: Mapping[str, Any]
) -> CaptureOptions:
    """Return the settings of a capture that holds every layer whole (``capture``, sharded).

    ``settings`` (keywords) win over ``options``; ``sketch`` and ``memory_budget`` as keywords
    are refused, as this capture would not use them.
    """
    unused = sorted({"sketch", "memory_budget"} & set(settings))
    if unused:
        raise FactorlensError(
            f"{', '.join(map(repr, unused))} decide which layers are sketched when a capture is "
            "held in memory for an analysis; capture() keeps every layer whole: drop them, "
            "or use factorlens.analyze"
        )
    return capture_settings(options, **settings)


def _open_for_capture(
    store: ActivationStore | str | os.PathLike[str] | None,
    resume: bool,
    overwrite: bool,
    options: CaptureOptions,
    fingerprinted: tuple[nn.Module, Any, dict[str, Any], Any],
) -> tuple[ActivationStore, bool, int, dict[str, int]]:
    """Return ``(store, created here, first row to capture, non-finite counts so far)``.

    ``fingerprinted`` is ``(model, inputs, recorded settings, preprocess)``: what a store on
    disk is fingerprinted by, so that a resume continues the same capture only.
    """
    on_disk = isinstance(store, str | os.PathLike)
    fingerprint = _fingerprint(*fingerprinted) if on_disk else {}
    if not resume:
        made, created = _make_store(store, overwrite, fingerprint, options)
        return made, created, 0, {}
    if not isinstance(store, str | os.PathLike):
        raise FactorlensError("resume needs the store's directory path (store=PATH)")
    resumed, start_row, counts = ZarrStore.resume(store, fingerprint)
    return resumed, False, start_row, counts


@contextlib.contextmanager
def _discarded_on_failure(store: ActivationStore, created: bool) -> Iterator[None]:
    """Remove a store on disk that this capture created when it fails.

    An interruption (``KeyboardInterrupt``, ``SystemExit``) keeps what is on disk, to be
    resumed; so does a full disk (:class:`StoreDiskFull`), once there is room.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        if not isinstance(store, ZarrStore):
            raise
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            raise StoreDiskFull(  # kept: it resumes once there is room
                f"the disk holding the store {store.path} is full ({exc.strerror}); free "
                "some space and rerun the same capture with `resume=True` to continue it"
            ) from exc
        if created:
            store.discard()
        raise


#: errnos of a full disk or quota: a store that meets them is kept, to be resumed
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


class StoreDiskFull(FactorlensRuntimeError):
    """The disk filled up during a capture into a store, which is kept to be resumed."""


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


class EnoughOfThisBatch(Exception):
    """A signal, not an error: the pass holds every block of this batch it needs.

    Raised by :meth:`ForwardPass.on_block`; the rest of the batch's forward pass is skipped.
    """


class ForwardPass:
    """One run of a model over its inputs in batches, with forward hooks on chosen modules.

    The generic loop of every capture (:func:`capture`, the sketched capture of wide layers in
    :mod:`factorlens.sketched`): the model runs in eval mode without gradients on ``device``;
    the k-th call of module ``m`` in a forward pass is block ``m#k`` (``m`` for the first), and
    every batch must make the same calls. Hooks are always removed and the model's modes and
    device restored.

    Subclasses say what happens to the outputs: :meth:`on_block` is called inside the hook with
    a block's output (a float32 tensor on ``device``, checked to have one row per input; later
    in-place operations may change it, so keep a copy or reduce it at once), :meth:`on_batch`
    after each forward pass. :meth:`on_block` may raise :class:`EnoughOfThisBatch` to stop
    the batch's forward pass there (:meth:`on_batch` then sees no model output).

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    chosen : list of str
        Module names to hook (:func:`select_layers`).
    device : torch.device
        Where the model runs.
    preprocess : callable, optional
        Applied to each batch before the model (not to the input block).
    select : dict
        ``{layer: index or key}`` for layers that return a tuple, list or dict.
    output : str, optional
        Also pass the model's own output to :meth:`on_batch` (as rows; see :func:`capture`).
    drop_unused : bool
        Leave out chosen modules that do not run in the first batch (default layers) instead
        of refusing them.
    """

    desc = "capture"

    def __init__(
        self,
        model: nn.Module,
        chosen: list[str],
        *,
        device: torch.device,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
        select: dict[str, Any],
        output: str | None = None,
        drop_unused: bool = False,
    ) -> None:
        self.model = model
        self.chosen = chosen
        self.drop_unused = drop_unused
        self.dropped: list[str] = []  # default layers that did not run (drop_unused)
        self.modules = dict(model.named_modules())
        self.device = device
        self.preprocess = preprocess
        self.select = select
        self.output = output
        self.blocks: dict[str, str] = {}  # block -> module name (of the last batch)
        self.calls: dict[str, int] = {}  # module name -> calls in the current batch
        self.first_calls: dict[str, int] = {}
        self.batch_n = 0
        self.start = 0
        #: whether the model was checked to answer the same twice (set beforehand by a
        #: caller whose earlier pass over the same model checked it)
        self.checked_determinism = False
        #: the block that holds what the model returns (its predictions), as seen in the
        #: first batch: ``output`` when given, else a layer whose output is the returned
        #: tensor; None when none is (a hidden last layer, an output changed after it)
        self.output_block: str | None = None
        #: fingerprints of the 2-D blocks of the batch running, until a batch has shown the
        #: output block (then None)
        self._seen_outputs: dict[str, tuple[torch.Tensor, ...]] | None = {}

    @property
    def output_known(self) -> bool:
        """Whether a batch has shown which block holds the model's output."""
        return self._seen_outputs is None

    # ------------------------------------------------------------------ what subclasses do
    def on_block(self, block: str, module: str, out: torch.Tensor) -> None:
        """Take block ``block``'s output of the current batch (rows ``self.start`` on)."""

    def on_batch(
        self, start: int, stop: int, batch: torch.Tensor, returned: dict[str, np.ndarray]
    ) -> None:
        """Take the end of a batch: its inputs (CPU, as given) and the model's output rows."""

    # ------------------------------------------------------------------ the loop
    def _hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
            k = self.calls[name] = self.calls.get(name, 0) + 1
            block = name if k == 1 else f"{name}#{k}"
            if self.blocks.get(block, name) != name:
                raise FactorlensError(
                    f"two captured calls would both be block {block!r} (a module name with "
                    "'#'); capture only one of those modules"
                )
            self.blocks[block] = name
            tensor = _as_tensor(name, out, self.select, self.batch_n)
            if self._seen_outputs is not None and tensor.ndim == 2:  # the first batch: a
                self._seen_outputs[block] = _fingerprint_of(tensor)  # few values, not the rows
            self.on_block(block, name, tensor)

        return hook

    def run(
        self,
        images: Any,
        *,
        batch_size: int,
        progress: bool,
        start_row: int = 0,
        stop_if: Callable[[], bool] | None = None,
        desc: str | None = None,
    ) -> None:
        """Run the model over ``images[start_row:]`` (``start_row`` a batch boundary)."""
        from factorlens.progress import progress_bar

        n = int(images.shape[0])
        model, device = self.model, self.device
        modes = {m: m.training for m in model.modules()}
        tensors = [*model.parameters(), *model.buffers()]
        devices = {t.device for t in tensors}
        moved_from = next(iter(devices)) if len(devices) == 1 and device not in devices else None
        handles = []
        n_batches = -(-n // batch_size)
        bar = progress_bar(
            n_batches,
            desc or self.desc,
            unit="batch",
            initial=start_row // batch_size,
            disable=not (progress and n_batches > 1),
        )
        try:
            if moved_from is not None:
                model.to(device)
            model.eval()
            if not self.checked_determinism and start_row < n:
                self.checked_determinism = True
                with torch.no_grad():
                    check_deterministic(model, images, start_row, self.preprocess, device)
            handles = [self.modules[nm].register_forward_hook(self._hook(nm)) for nm in self.chosen]
            with torch.no_grad():
                for start in range(start_row, n, batch_size):
                    if stop_if is not None and stop_if():
                        raise FactorlensRuntimeError("the capture was given up; nothing was kept")
                    stop = min(start + batch_size, n)
                    batch = _batch_tensor(images, start, stop)
                    # a copy: a model or hook that changes its input in place must not change
                    # the input block, read from `batch` afterwards
                    x = _apply_preprocess(self.preprocess, batch.clone()).to(device)
                    self.calls.clear()
                    self.batch_n, self.start = stop - start, start
                    try:
                        returned = model(x)
                        if not self.output_known:
                            self._find_output_block(returned)
                    except EnoughOfThisBatch:
                        returned = None  # the pass had what it needs of this batch
                    except FactorlensError:
                        raise
                    except Exception as exc:
                        raise FactorlensRuntimeError(
                            f"the model failed on an input batch of shape {tuple(x.shape)} "
                            f"({x.dtype}): {type(exc).__name__}: {one_line(exc, 400)}; "
                            + _failure_hint(exc)
                        ) from exc
                    self._check_calls(start, start_row)
                    self.model_output = returned  # what on_batch may look at too
                    rows = {}
                    if self.output is not None and returned is not None:
                        rows[self.output] = _as_rows(
                            self.output, returned, self.select, stop - start
                        )
                    self.on_batch(start, stop, batch, rows)
                    bar.update(1)
        finally:
            for handle in handles:
                handle.remove()
            bar.close()
            for submodule, mode in modes.items():
                submodule.training = mode
            if moved_from is not None:
                model.to(moved_from)

    def _find_output_block(self, returned: Any) -> None:
        """Set :attr:`output_block` from the first batch's returned value and block outputs."""
        seen, self._seen_outputs = self._seen_outputs or {}, None
        if self.output is not None:
            self.output_block = self.output
            return
        if not isinstance(returned, torch.Tensor) or returned.ndim != 2:
            return
        answer = _fingerprint_of(returned.detach().float())
        for block, prints in reversed(seen.items()):
            pairs = zip(prints, answer, strict=True)
            if all(a.shape == b.shape and torch.equal(a, b) for a, b in pairs):
                self.output_block = block
                return

    def _check_calls(self, start: int, start_row: int) -> None:
        """Every chosen module ran, and as often as in the first batch.

        With ``drop_unused`` (default layers, not named ones) a module that did not run in the
        first batch is left out, with a note: an attention's ``out_proj``, whose weights its
        ``nn.MultiheadAttention`` uses without calling it.
        """
        missing = [name for name in self.chosen if name not in self.calls]
        if missing and self.drop_unused and start == start_row:
            self.chosen = [name for name in self.chosen if name in self.calls]
            self.dropped = missing
            if not self.chosen:
                raise FactorlensError(
                    "none of the default layers ran in the forward pass; name the layers to "
                    "capture (`layers`)"
                )
            missing = []
        if missing:
            raise FactorlensError(
                f"layer(s) {', '.join(map(repr, missing))} did not run in the forward "
                "pass; choose layers that the model's forward() uses"
            )
        if start == start_row:
            self.first_calls = dict(self.calls)
        elif self.calls != self.first_calls:
            name = next(m for m in self.chosen if self.calls[m] != self.first_calls[m])
            raise FactorlensError(
                f"layer {name!r} ran {self.calls[name]} time(s) in the batch starting at "
                f"sample {start} but {self.first_calls[name]} time(s) in the first batch; "
                "every call is its own block, so capture a module that runs the same "
                "number of times for every batch"
            )


class _StorePass(ForwardPass):
    """The capture proper: every block's rows (and the input's) written to a store."""

    def __init__(
        self,
        model: nn.Module,
        chosen: list[str],
        store: ActivationStore,
        *,
        nonfinite: str,
        counts: dict[str, int],
        resumed: bool,
        n_samples: int,
        **options: Any,
    ) -> None:
        super().__init__(model, chosen, **options)
        self.n_samples = n_samples
        self.store = store
        self.nonfinite = nonfinite
        self.counts = counts
        self.resumed = resumed
        self.rows: dict[str, np.ndarray] = {}  # block -> rows of this batch, in call order
        self.writer: BatchWriter | None = None  # checks and writes while the next batch runs

    def on_block(self, block: str, module: str, out: torch.Tensor) -> None:
        # copy now: later in-place operations (ReLU(inplace=True)) must not change what we keep
        self.rows[block] = _to_rows(out)

    def on_batch(
        self, start: int, stop: int, batch: torch.Tensor, returned: dict[str, np.ndarray]
    ) -> None:
        store, n = self.store, int(self.n_samples)
        rows_in = _input_rows(batch)
        if len(store) == 0:
            if self.output in self.rows:
                raise FactorlensError(
                    f"output block name {self.output!r} clashes with a captured call of "
                    f"layer {self.blocks[self.output]!r}; choose another name"
                )
            store.create_block("input", rows_in.shape[1:], "input", "input", n_samples=n)
            for block, rows in returned.items():
                kind = type(self.model).__name__
                store.create_block(block, rows.shape[1:], "output", kind, n_samples=n)
            for block, rows in self.rows.items():
                module = type(self.modules[self.blocks[block]]).__name__
                store.create_block(block, rows.shape[1:], "layer", module, n_samples=n)
        elif self.resumed:  # resumed: the blocks must be the ones on disk
            _check_resumed_blocks(store, [*returned, *self.rows])
            self.resumed = False
        if self.writer is None:
            self.writer = BatchWriter(store, self.nonfinite, self.counts)
        self.writer.put(start, stop, [("input", rows_in), *returned.items(), *self.rows.items()])
        self.rows = {}


def _run_capture(
    model: nn.Module,
    images: Any,
    chosen: list[str],
    store: ActivationStore,
    options: CaptureOptions,
    *,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
    select: dict[str, Any],
    progress: bool,
    output: str | None = None,
    start_row: int = 0,
    counts: dict[str, int] | None = None,
    stop_if: Callable[[], bool] | None = None,
    drop_unused: bool = False,
    check_determinism: bool = True,
) -> tuple[dict[str, int], dict[str, str | None]]:
    """Run the batch loop of :func:`capture`, from sample ``start_row``, into ``store``.

    ``options`` gives the batch size, the device and the non-finite policy.
    ``start_row`` is a batch boundary; the store then already holds the rows before it, and
    ``counts`` their non-finite counts. ``stop_if`` is asked before every batch; when it says
    so the loop stops with a :class:`FactorlensRuntimeError` (a sharded capture given up).
    ``drop_unused`` leaves out (default) layers that do not run, with a note.
    ``check_determinism`` runs a few inputs twice first (:func:`check_deterministic`).
    Returns the non-finite counts replaced per block, and what the store's metadata records
    of the model's output: ``{OUTPUT_BLOCK_KEY: block or None}`` (see
    :func:`factorlens.pipeline.predicted_classes`), empty when no batch ran.
    """
    run = _StorePass(
        model,
        chosen,
        store,
        nonfinite=options.nonfinite,
        counts=dict(counts or {}),
        resumed=start_row > 0 or len(store) > 0,
        n_samples=int(images.shape[0]),
        device=resolve_device(str(options.device)),
        preprocess=preprocess,
        select=select,
        output=output,
        drop_unused=drop_unused,
    )
    run.checked_determinism = not check_determinism
    try:
        run.run(
            images,
            batch_size=int(options.batch_size),
            progress=progress,
            start_row=start_row,
            stop_if=stop_if,
        )
        if run.writer is not None:
            run.writer.close()  # every batch written (or the writer's error raised here)
    finally:
        if run.writer is not None:
            run.writer.close()  # after an error or interruption: what was queued, in order
    note_unused(run.dropped)
    return run.counts, output_record(run)


#: the key of a store's metadata that names the block holding the model's output
OUTPUT_BLOCK_KEY = "model_output_block"


def output_record(run: ForwardPass) -> dict[str, str | None]:
    """Return what a store records of the model's output block (empty when no batch ran)."""
    return {OUTPUT_BLOCK_KEY: run.output_block} if run.output_known else {}


#: inputs run twice to check that the model answers the same each time
DETERMINISM_ROWS = 8


def check_deterministic(
    model: nn.Module, images: Any, start: int, preprocess: Any, device: Any
) -> bool:
    """Run a few inputs twice in eval mode; warn when the answers differ (and return False).

    Dropout called as ``F.dropout(x, p)`` in ``forward`` (without ``training=self.training``)
    or an ``eval()`` that does not reach every module keeps the model random: every capture
    then differs, and so does everything fitted to it.
    """
    stop = min(start + DETERMINISM_ROWS, int(images.shape[0]))
    x = _apply_preprocess(preprocess, _batch_tensor(images, start, stop)).to(device)
    try:  # each on its own copy: a model may change its input in place
        first, second = model(x.clone()), model(x.clone())
    except Exception:  # the capture itself reports a failing model, with its context
        return True
    training = sorted({type(m).__name__ for m in model.modules() if m.training})
    if training:  # put back by the model itself: batch statistics, dropout
        warn(
            f"the model's forward() puts modules back in training mode ({', '.join(training)}); "
            "batch normalisation then uses each batch's statistics and dropout stays on, so "
            "results depend on `batch_size`; call self.train() outside forward()"
        )
    pairs = list(zip(_tensors_in(first), _tensors_in(second), strict=False))
    if all(
        a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True)
        for a, b in pairs
    ):
        return True  # (a model that returns no tensor has nothing to compare)
    gap = max(
        float((a.float() - b.float()).abs().max()) if a.shape == b.shape else 0.0 for a, b in pairs
    )
    warn(
        f"the model gives different outputs for the same inputs in eval mode (largest "
        f"difference {gap:.3g}): randomness such as F.dropout(x, p) without "
        "training=self.training runs in its forward(), so every capture and result differ; "
        "make forward() deterministic in eval mode"
    )
    return False


def _tensors_in(out: Any) -> list[torch.Tensor]:
    """Return the tensors a model returned: itself, or those of a tuple, list or dict."""
    if isinstance(out, Mapping):
        out = list(out.values())
    items = out if isinstance(out, list | tuple) else [out]
    return [t for t in items if isinstance(t, torch.Tensor) and t.is_floating_point()]


def note_unused(dropped: Sequence[str]) -> None:
    """Note the default layers left out because they never ran (``ForwardPass.drop_unused``)."""
    if dropped:
        shown = ", ".join(dropped[:3]) + (
            f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
        )
        note(
            f"{len(dropped)} default layer(s) never ran as modules and are left out: {shown} "
            "(an attention's out_proj runs inside it; capture the attention with "
            "`layers` and `select`)"
        )


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
