"""Load the user's model: a class from ``FILE.py:Class``, built with no arguments, plus a checkpoint.

Checkpoints are read with ``torch.load(..., weights_only=True)``, which only accepts tensors and
plain containers. Accepted contents: a state dict, or a dict holding one under ``"state_dict"``,
``"model"`` or ``"model_state_dict"`` (other keys such as ``"epoch"`` are ignored). A leading
``"module."`` (``nn.DataParallel``) or ``"_orig_mod."`` (``torch.compile``) prefix on every key is
stripped. A checkpoint that pickles a whole model (``torch.save(model, path)``) is refused unless
``trust_pickle=True`` (CLI ``--trust-pickle``), because unpickling can run arbitrary code.

Preprocess hook
---------------
The model file may define how raw images become the model's input::

    def factorlens_preprocess(x: torch.Tensor) -> torch.Tensor:
        # x: float32 (N, C, H, W) in [0, 1], after --normalize if that was given
        return x * 2 - 1

either as a module-level function or as a ``@staticmethod`` of the model class (the class's
one wins when both exist). factorlens calls it on every batch before the model sees it; the
input block stored for the factorization is always the un-preprocessed images.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import pickle
import pickletools
import re
import sys
import types
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeGuard, cast

import torch
from torch import nn

from factorlens.errors import FactorlensError, close_matches
from factorlens.options import CaptureOptions

__all__ = [
    "HOOK_NAME",
    "build_model",
    "find_preprocess_hook",
    "load_model_class",
    "resolve_device",
]

HOOK_NAME = "factorlens_preprocess"
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")

# (resolved path, mtime_ns, size) -> imported module; avoids importing one file twice.
_MODULE_CACHE: dict[tuple[str, int, int], types.ModuleType] = {}
# the folders of the model files imported so far (each was first on sys.path while it ran)
_MODEL_FOLDERS: set[Path] = set()


# --------------------------------------------------------------------------------------------
# device


def resolve_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or ``"auto"`` (CUDA if available) -> device."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise FactorlensError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FactorlensError(
                f"device {name!r} requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use `device` cpu or auto"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise FactorlensError(
                f"device {name!r} requested but only {count} CUDA device(s) exist; "
                f"use cuda:0..cuda:{count - 1}"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise FactorlensError(
                f"device {name!r} requested but MPS is not available; use `device` cpu or auto"
            )
        return dev
    raise FactorlensError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or auto")


# --------------------------------------------------------------------------------------------
# model class


def _split_spec(spec: str) -> tuple[Path, str | None]:
    text = str(spec).strip()
    if not text:
        raise FactorlensError("empty model SPEC; use FILE.py:ClassName")
    head, colon, tail = text.rpartition(":")
    # A trailing ":Name" is the class unless it is really part of a path (e.g. C:\models\net.py).
    if colon and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tail):
        return Path(head).expanduser(), tail
    return Path(text).expanduser(), None


def _module_classes(module: types.ModuleType) -> list[str]:
    """Names of the nn.Module subclasses defined in ``module`` itself."""
    return sorted(
        name
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__
    )


def _module_root(name: str, module: types.ModuleType) -> Path | None:
    """Return the folder that ``import <top-level package of name>`` found ``module`` in."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    origin = Path(file).resolve()
    depth = name.count(".") + (origin.stem == "__init__")
    return origin.parents[depth] if depth < len(origin.parents) else None


def _forget_other_siblings(folder: Path) -> None:
    """Drop cached modules of another model file's folder that this folder also has.

    These are the modules another model file's folder provided under a name this folder also
    has a file for, so that the model file's ``import helper`` gets its own.
    """
    own = {p.stem for p in folder.glob("*.py")} | {
        p.parent.name for p in folder.glob("*/__init__.py")
    }
    others = _MODEL_FOLDERS - {folder}
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in own and _module_root(name, module) in others:
            del sys.modules[name]


def _import_file(path: Path) -> types.ModuleType:
    if not path.exists():
        raise FactorlensError(
            f"model file {path} does not exist; check the FILE.py part of the SPEC"
        )
    if not path.is_file():
        raise FactorlensError(f"model file {path} is not a file; give FILE.py:ClassName")
    resolved = path.resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_mtime_ns, stat.st_size)
    if key in _MODULE_CACHE:
        return _MODULE_CACHE[key]
    digest = hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", resolved.stem)
    mod_name = f"factorlens_user_{stem}_{digest}"  # sharded.USER_MODULE_PREFIX
    spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if spec is None or spec.loader is None:
        raise FactorlensError(f"cannot import {path}; the model file must be a Python .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    # Let the model file import its sibling modules, its own ones first.
    parent = str(resolved.parent)
    sys.path.insert(0, parent)
    _forget_other_siblings(resolved.parent)
    _MODEL_FOLDERS.add(resolved.parent)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(mod_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        msg = " ".join(str(exc).split())
        raise FactorlensError(
            f"importing model file {path} failed ({type(exc).__name__}: {msg}); fix the file "
            "so that 'python FILE.py' runs"
        ) from exc
    finally:
        if parent in sys.path:
            sys.path.remove(parent)
    _MODULE_CACHE[key] = module
    return module


def load_model_class(spec: str) -> Callable[[], nn.Module]:
    """Import ``FILE.py`` by path and return its attribute ``Class`` from SPEC ``FILE.py:Class``.

    The result is an ``nn.Module`` subclass or any callable that returns an ``nn.Module``.
    """
    path, name = _split_spec(spec)
    if name is None:
        hint = ""
        if path.is_file() and path.suffix == ".py":
            try:
                classes = _module_classes(_import_file(path))
            except FactorlensError:
                classes = []
            if classes:
                hint = f" (classes in the file: {', '.join(classes)})"
        raise FactorlensError(f"model SPEC {spec!r} has no class name; use FILE.py:ClassName{hint}")
    module = _import_file(path)
    obj = getattr(module, name, None)
    if obj is None:
        classes = _module_classes(module)
        listing = f"; classes in the file: {', '.join(classes)}" if classes else ""
        raise FactorlensError(f"{path} defines no {name!r}{close_matches(name, classes)}{listing}")
    if not callable(obj):
        raise FactorlensError(
            f"{path}:{name} is a {type(obj).__name__}, not a class; name an nn.Module subclass "
            "or a function returning one"
        )
    return obj


def find_preprocess_hook(
    spec: str | Callable[..., Any],
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Find the model file's ``factorlens_preprocess`` hook.

    The class's staticmethod is looked for first, then the module-level function.

    Parameters
    ----------
    spec : str or callable
        ``FILE.py:Class``, or the model class itself.

    Returns
    -------
    callable or None
        The hook, or None when the model file defines none.
    """
    obj = load_model_class(spec) if isinstance(spec, str) else spec
    candidates: list[tuple[str, Any]] = []
    if inspect.isclass(obj) and HOOK_NAME in vars(obj):
        raw = inspect.getattr_static(obj, HOOK_NAME)
        if inspect.isfunction(raw):
            raise FactorlensError(
                f"{obj.__name__}.{HOOK_NAME} is a plain method; mark it @staticmethod "
                "(it receives only the image batch x)"
            )
        candidates.append((f"{obj.__name__}.{HOOK_NAME}", getattr(obj, HOOK_NAME)))
    module = sys.modules.get(getattr(obj, "__module__", "") or "")
    if module is not None and HOOK_NAME in vars(module):
        candidates.append((HOOK_NAME, getattr(module, HOOK_NAME)))
    if not candidates:
        return None
    where, hook = candidates[0]
    if not callable(hook):
        raise FactorlensError(
            f"{where} in the model file is a {type(hook).__name__}, not a function; define "
            f"def {HOOK_NAME}(x: torch.Tensor) -> torch.Tensor"
        )
    return hook


# --------------------------------------------------------------------------------------------
# checkpoint


class _MissingGlobal(Exception):
    """A class or function a trusted pickle names that neither its module nor the model has.

    The message is its ``module.name``.
    """


def _user_unpickler_module(fallback: types.ModuleType | None) -> types.ModuleType:
    """Return a stand-in for the ``pickle`` module that finds the model file's classes.

    Its Unpickler finds classes pickled from the model file under another module name
    (``__main__.Net``, ``model.Net``) in the imported model file.
    """

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module_name: str, name: str) -> Any:
            try:
                return super().find_class(module_name, name)
            except (ImportError, AttributeError) as exc:
                found: Any = fallback
                for part in name.split("."):
                    found = getattr(found, part, None)
                if found is None:
                    raise _MissingGlobal(f"{module_name}.{name}") from exc
                return found

    def _load(f: Any, **kwargs: Any) -> Any:
        return _Unpickler(f, **kwargs).load()

    mod = types.ModuleType("factorlens_trusted_pickle")
    # a module made at run time: ModuleType declares none of the attributes pickle needs
    mod.Unpickler = _Unpickler  # type: ignore[attr-defined]
    mod.load = _load  # type: ignore[attr-defined]
    return mod


#: the pickle opcodes that push a string
_STRING_OPS = frozenset(
    "UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8 STRING BINSTRING SHORT_BINSTRING".split()
)


def _pickle_globals(data: bytes) -> list[str]:
    """Return ``module.name`` of every class or function a pickle names, without running it.

    Read from ``GLOBAL``, and ``STACK_GLOBAL`` of pickle protocol 4+ from the two strings
    before it.
    """
    names: list[str] = []
    memo: dict[int, Any] = {}
    pushed: list[Any] = [None, None]  # the values pushed last (strings, else None)
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.append(str(arg).replace(" ", "."))
        elif op.name == "STACK_GLOBAL" and all(isinstance(v, str) for v in pushed[-2:]):
            names.append(".".join(pushed[-2:]))
        if op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1]
        elif op.name.endswith("PUT"):
            memo[cast(int, arg)] = pushed[-1]  # the PUT and GET opcodes carry an int index
        elif op.name.endswith("GET"):
            pushed.append(memo.get(cast(int, arg)))
        else:
            pushed.append(arg if op.name in _STRING_OPS else None)
    return names


def _refused_globals(path: Path, message: str) -> list[str] | None:
    """Return what a checkpoint refused by weights-only loading pickles beyond tensors.

    ``module.name`` each; ``[]`` when nothing is named, or None when the file is damaged
    rather than pickled.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            pkl = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            names = _pickle_globals(zf.read(pkl))
    except Exception:  # the legacy (non-zip) format, or a damaged pickle
        return re.findall(r"GLOBAL ([\w.]+)", message) or None
    unpickler = getattr(torch, "_weights_only_unpickler", None)  # private: may go away
    allowed: Mapping[str, object] = getattr(unpickler, "_get_allowed_globals", dict)()
    return [n for n in dict.fromkeys(names) if n not in allowed]


def _short(exc: BaseException) -> str:
    """Return the informative first sentence of a (often multi-paragraph) torch error."""
    msg = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in msg:
        msg = msg.split("WeightsUnpickler error:", 1)[1].strip()
    msg = msg.split(". ", 1)[0].split(" Check the documentation", 1)[0]
    return msg[:160]


def _unreadable(path: Path, exc: BaseException) -> FactorlensError:
    first = _short(exc)
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return FactorlensError(
        f"cannot read checkpoint {path}: it is truncated or not a PyTorch file ({detail}); "
        "save it again with torch.save(model.state_dict(), path)"
    )


def _load_checkpoint(path: Path, trust_pickle: bool, fallback: types.ModuleType | None) -> Any:
    if not path.exists():
        raise FactorlensError(f"checkpoint {path} does not exist; check the checkpoint path")
    if not path.is_file():
        raise FactorlensError(f"checkpoint {path} is not a file; give the .pt/.pth file")
    if path.stat().st_size == 0:
        raise FactorlensError(
            f"cannot read checkpoint {path}: the file is empty (0 bytes); save it again with "
            "torch.save(model.state_dict(), path)"
        )
    try:
        with warnings.catch_warnings():  # protocol >= 4: refused below with a clearer message
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        refused = _refused_globals(path, msg) if "Weights only load failed" in msg else None
        if refused is None:
            raise _unreadable(path, exc) from exc
        if not trust_pickle:
            more = f" and {len(refused) - 3} more" if len(refused) > 3 else ""
            needs = f" ({', '.join(refused[:3])}{more})" if refused else ""
            raise FactorlensError(
                f"checkpoint {path} holds pickled Python objects{needs} that weights-only "
                "loading refuses; pass `trust_pickle=True` if you trust this file (unpickling "
                "runs its code), or save torch.save(model.state_dict(), path) instead"
            ) from None
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # RuntimeError (bad zip), EOFError, struct.error, KeyError, ...
        raise _unreadable(path, exc) from exc
    # trusted full pickle
    try:
        return torch.load(
            path,
            map_location="cpu",
            weights_only=False,
            pickle_module=_user_unpickler_module(fallback),
        )
    except KeyboardInterrupt:
        raise
    except _MissingGlobal as exc:
        where = f"the model file {fallback.__file__}" if fallback is not None else "the model file"
        raise FactorlensError(
            f"checkpoint {path} needs {exc} to unpickle, which cannot be found; import or define "
            f"{str(exc).rpartition('.')[2]} in {where}, or save a state dict instead"
        ) from exc
    except Exception as exc:
        raise FactorlensError(
            f"cannot unpickle checkpoint {path} ({type(exc).__name__}: {_short(exc)}): it is "
            "truncated, or its objects do not fit the code importable now; save it again with "
            "torch.save(model.state_dict(), path)"
        ) from exc


def _is_tensor_dict(obj: Any) -> TypeGuard[Mapping[str, torch.Tensor]]:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _extract_state(obj: Any, path: Path) -> nn.Module | dict[str, torch.Tensor]:
    """Turn a loaded checkpoint into a full module (trusted pickles only) or a state dict."""
    if isinstance(obj, nn.Module):
        return obj
    if not isinstance(obj, Mapping):
        raise FactorlensError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict; save "
            "torch.save(model.state_dict(), path)"
        )
    for key in _STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            return inner
        if _is_tensor_dict(inner):
            return dict(inner)
    if (
        obj
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        return dict(obj)
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise FactorlensError(
        f"checkpoint {path} is a dict without weights (keys: {keys or 'none'}); expected a state "
        f"dict or a dict with one under {', '.join(repr(k) for k in _STATE_DICT_KEYS)}"
    )


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and state:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _check_keys(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    expected = model.state_dict()
    # BatchNorm fills a missing num_batches_tracked itself (old checkpoints lack it).
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state
        and isinstance(state[k], torch.Tensor)
        and isinstance(expected[k], torch.Tensor)
        and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return

    def few(items: list[str]) -> str:
        more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
        return ", ".join(items[:5]) + more

    parts = []
    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {few(shapes)}")
    raise FactorlensError(
        f"checkpoint {path} does not fit {type(model).__name__} ({'; '.join(parts)}); "
        "check that the model class matches the one the weights were saved from"
    )


def build_model(
    spec: str,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
    device: str = CaptureOptions.device,
    seed: int | None = None,
) -> nn.Module:
    """Build ``Class()`` from SPEC ``FILE.py:Class``, load ``weights`` (strict), eval mode, on device.

    With ``weights=None`` the model keeps the weights its constructor gives it: random ones
    repeat from run to run when ``seed`` is given (the constructor runs with torch's
    generators seeded; their state is restored afterwards). A trusted full pickle
    (``trust_pickle=True``) may hold the whole module, which is then used as the model.
    """
    dev = resolve_device(device)
    factory = load_model_class(spec)
    name = getattr(factory, "__name__", repr(factory))
    try:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            # a SPEC may name a module built in the file (Net = nn.Sequential(...)): used as is
            model = factory if isinstance(factory, nn.Module) else factory()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        msg = " ".join(str(exc).split())
        raise FactorlensError(
            f"building {name}() with no arguments failed ({type(exc).__name__}: {msg}); give its "
            "arguments defaults or point the SPEC at a function that builds the model"
        ) from exc
    if not isinstance(model, nn.Module):
        raise FactorlensError(
            f"{name}() returned an object of type {type(model).__name__}, not a torch.nn.Module; point the SPEC "
            "at an nn.Module subclass or a function returning one"
        )
    if weights is not None:
        path = Path(weights).expanduser()
        fallback = sys.modules.get(getattr(factory, "__module__", "") or "")
        loaded = _extract_state(_load_checkpoint(path, trust_pickle, fallback), path)
        if isinstance(loaded, nn.Module):
            model = loaded
        else:
            state = _strip_prefixes(loaded)
            _check_keys(model, state, path)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                msg = " ".join(str(exc).split())[:300]
                raise FactorlensError(
                    f"loading checkpoint {path} into {name} failed ({msg}); check that the model "
                    "class matches the weights"
                ) from exc
    return model.to(dev).eval()
