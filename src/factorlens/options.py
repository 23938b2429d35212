"""One options object per stage: the fields, defaults and help texts the API and the CLI share.

Each stage's settings are a frozen dataclass — :class:`CaptureOptions`, :class:`EngineOptions`
(the joint factorization, :class:`~factorlens.factorize.CMTF`), :class:`RankOptions`
(:func:`~factorlens.rank.estimate_rank`) and :class:`QualityOptions` — and that dataclass is
the only place a default is written. The API's signatures take their defaults from it, and
the CLI builds its flags from the fields that carry a :class:`Flag` (its name and help text);
:func:`from_args` turns parsed flags back into the options object.

Each field also carries its :class:`Rule` (what values it takes): the options objects check
every field when they are made, :class:`~factorlens.CMTF` checks its parameters in ``fit`` by
the same rules (:func:`check_fields`), and the CLI turns a flag's text into a value and checks
it by that rule too, so a bad value reads the same from Python and from the command line.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from factorlens.errors import FactorlensError

if TYPE_CHECKING:
    import numpy as np

_T = TypeVar("_T")

#: the number of components R where none is given (analyze, demo, a sketch's plan)
DEFAULT_RANK = 10

#: the seed of every random draw where none is given (fits, splits, perturbations)
DEFAULT_SEED = 0

#: the largest seed the CLI accepts: seeds reach torch.manual_seed and numpy's SeedSequence,
#: and 0 <= seed < 2**32 suits both
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class Flag:
    """How a field appears on the command line.

    Parameters
    ----------
    name : str
        The flag, e.g. ``"--max-iter"``.
    help : str
        Its help text; ``{default}`` is replaced by the field's default.
    metavar : str, optional
        The placeholder shown in ``--help`` (default: the rule's choices, ``{raise,zero}``).

    The flag's text becomes a value by its field's :class:`Rule` (``from_text``), and is
    checked by the same rule as the API's arguments. A ``bool`` field is a ``store_true`` flag.
    """

    name: str
    help: str
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """Return the attribute argparse stores the value in (``--max-iter`` → ``max_iter``)."""
        return self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Rule:
    """The values a setting takes: the one check of the API, the options objects and the CLI.

    Parameters
    ----------
    must : str
        What a value must be, completing "`tol` must be ...".
    accepts : callable
        ``value -> bool``.
    from_text : callable
        The CLI's text -> a value of the setting's type, before the check (``ValueError`` for
        text that is no such value, e.g. ``"abc"`` for a number).
    choices : tuple, optional
        The allowed values, where they are a short list (shown in ``--help``).
    flag_must : str, optional
        ``must`` as the CLI words it, where a flag's text differs (``500M or 2G``); by
        default ``must`` without its "None or".
    """

    must: str
    accepts: Callable[[Any], bool]
    from_text: Callable[[str], Any] = str
    choices: tuple[Any, ...] | None = None
    flag_must: str | None = None

    def refusal(self, value: Any, *, flag: bool = False) -> str:
        """Return why ``value`` is refused, without the setting's name: "must be ..., got 2".

        ``flag``: worded for a flag's text (a flag is never None, so that is not offered).
        """
        must = self.must
        if flag:
            must = self.flag_must or must.removeprefix("None or ").removesuffix(", or None")
        return f"must be {must}, got {_shown(value)}"


class OptionError(FactorlensError):
    """A setting outside its :class:`Rule`: "`tol` must be a number ..., got 2".

    :attr:`requirement` is the message without the name ("must be ..., got 2"), which the
    CLI prints after its flag.
    """

    def __init__(self, name: str, rule: Rule, value: Any) -> None:
        self.name = name
        self.requirement = rule.refusal(value)
        super().__init__(f"`{name}` {self.requirement}")


def _shown(value: Any) -> str:
    """``repr`` of a value as a user wrote it (numpy scalars as Python numbers), on one line."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        value = value.item()
    text = " ".join(repr(value).split())
    return text if len(text) <= 80 else text[:77] + "..."


def check(name: str, value: Any, rule: Rule) -> Any:
    """Return ``value`` if ``rule`` accepts it; raise :class:`OptionError` naming ``name``."""
    if not rule.accepts(value):
        raise OptionError(name, rule, value)
    return value


def check_fields(options: type, values: Mapping[str, Any]) -> None:
    """Check ``values`` (field name -> value) against the rules of ``options``' fields.

    Names that are not fields of ``options``, and fields without a rule, are not checked.
    """
    rules = {f.name: f.metadata["rule"] for f in fields(options) if "rule" in f.metadata}
    for name, value in values.items():
        if name in rules:
            check(name, value, rules[name])


class _Checked:
    """Base of the options dataclasses: each field is checked by its rule when they are made."""

    def __post_init__(self) -> None:
        check_fields(type(self), {f.name: getattr(self, f.name) for f in fields(self)})  # type: ignore[arg-type]


def _field(default: Any, rule: Rule, flag: Flag | None = None) -> Any:
    """Return a dataclass field with its default, its rule and (optionally) its CLI flag."""
    metadata: dict[str, Any] = {"rule": rule}
    if flag is not None:
        metadata["flag"] = flag
    return field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------- text -> value
def integer(text: str) -> int:
    """Read an integer from the CLI's text (``ValueError`` otherwise); its range is the rule's."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got {text!r}") from None


def number(text: str) -> int | float:
    """Read a number from the CLI's text: an int where it is written as one (``2``), else a float."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number, got {text!r}") from None


def _auto_or(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        if text == "auto":
            return "auto"
        try:
            return convert(text)
        except ValueError:
            raise ValueError(f"expected 'auto' or a {convert.__name__}, got {text!r}") from None

    parse.__name__ = f"auto_or_{convert.__name__}"  # argparse names the type in its messages
    return parse


def byte_size(text: str) -> int:
    """Read a memory size from the CLI's text: bytes, or with a unit (``500M``, ``2G``, ``1.5GB``)."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"expected a size such as 500M or 4G, got {text!r}")
    size = int(value * units[unit])
    return max(1, size) if value > 0 else size  # a fraction of a byte is still some memory


# ---------------------------------------------------------------------------- the rules
def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"  # numpy's bool too


def _at_least(low: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and value >= low


def one_of(*values: Any) -> Rule:
    """Return the rule of a setting that takes one of a few values (strings, or None)."""
    shown = [repr(v) for v in values]
    return Rule(
        ", ".join(shown[:-1]) + f" or {shown[-1]}",
        lambda value: isinstance(value, str | type(None)) and value in values,
        choices=values,
    )


COUNT = Rule("an integer >= 1", _at_least(1), integer)
COUNT_OR_OFF = Rule("an integer >= 0 (0 = off)", _at_least(0), integer)
TOLERANCE = Rule(
    "a number from 0 (every iteration) to below 1, e.g. 1e-7",
    lambda value: _is_real(value) and 0 <= value < 1,
    number,
)
FRACTION = Rule("a number from 0 to 1", lambda value: _is_real(value) and 0 <= value <= 1, number)
SEED = Rule(
    f"an integer from 0 to {MAX_SEED} (or, through the API, None or a numpy Generator)",
    lambda value: (
        value is None
        or type(value).__name__ == "Generator"
        or (_is_int(value) and 0 <= value <= MAX_SEED)
    ),
    integer,
    flag_must=f"an integer from 0 to {MAX_SEED}",
)
PENALTY = Rule(
    "'auto' or a finite number >= 0",
    lambda value: value == "auto" if isinstance(value, str) else _is_real(value) and value >= 0,
    _auto_or(number),
)
SKETCH = Rule(
    "'auto', 0 (off) or a number of directions >= 1",
    lambda value: value == "auto" if isinstance(value, str) else _at_least(0)(value),
    _auto_or(integer),
)
BYTES = Rule(
    "a number of bytes >= 0 (e.g. 2 * 1024**3)",
    _at_least(0),
    byte_size,
    flag_must="a size >= 0, such as 500M or 2G",
)
SOME_BYTES = Rule(
    "a number of bytes >= 1 (e.g. 2 * 1024**3)",
    _at_least(1),
    byte_size,
    flag_must="a size >= 1 byte, such as 500M or 2G",
)
FLAG = Rule("True or False", _is_bool)
#: what :func:`factorlens.modelio.resolve_device` turns into a device (is it there: at use)
DEVICE = Rule(
    "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'",
    lambda value: re.fullmatch(r"cpu|cuda(:\d+)?|mps|auto", str(value).strip().lower()) is not None,
)
WEIGHTING = Rule(
    "'unit', 'none' or a mapping block name -> finite weight > 0",
    lambda value: (
        value in ("unit", "none")
        if isinstance(value, str)
        else isinstance(value, Mapping) and all(_is_real(w) and w > 0 for w in value.values())
    ),
    choices=("unit", "none"),
)
INIT = Rule(
    "'svd', 'random' or an (N, R) array",
    lambda value: (
        getattr(value, "ndim", None) == 2 or (isinstance(value, str) and value in ("svd", "random"))
    ),
)
BLOCK_NAMES = Rule(
    "None or a sequence of block names",
    lambda value: (
        value is None
        or (
            isinstance(value, Sequence | set | frozenset)
            and not isinstance(value, str)
            and all(isinstance(v, str) for v in value)
        )
    ),
)
CALLBACK = Rule("None or a function of (iteration, loss)", lambda v: v is None or callable(v))
JOBS = Rule("None or an integer >= 1", lambda value: value is None or _at_least(1)(value), integer)
FOLDER = Rule(
    "an existing folder (create it first), or None",
    lambda value: value is None or (isinstance(value, str | os.PathLike) and os.path.isdir(value)),
)


#: the address schemes a Dask scheduler listens on
SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "inproc")


def scheduler_address(text: str) -> str:
    """Parse a Dask scheduler address: ``tcp://HOST:PORT`` (``HOST:PORT`` means tcp).

    Refuses an empty address, another scheme (``http://…`` is a dashboard, not the
    scheduler) and a missing or out-of-range port, before any work.
    """
    from urllib.parse import urlsplit

    text = text.strip()
    if not text:
        raise ValueError("expected a scheduler address such as tcp://10.0.0.5:8786, got ''")
    url = text if "://" in text else f"tcp://{text}"
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEDULER_SCHEMES:
        raise ValueError(
            f"{text!r} is not a Dask scheduler address (scheme {scheme}://); use "
            "tcp://HOST:PORT, the scheduler's port (usually 8786), not its dashboard"
        )
    if scheme == "inproc":
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or not parts.hostname or port is None or not 0 < port < 65536:
        raise ValueError(
            f"{text!r} has no host and port; use tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786"
        )
    return url


# ---------------------------------------------------------------------------- the stages
@dataclass(frozen=True)
class CaptureOptions(_Checked):
    """Settings of the forward passes that record the layers (see :func:`factorlens.capture`)."""

    batch_size: int = _field(
        256, COUNT, Flag("--batch-size", "inputs per forward pass (default {default})")
    )
    device: str = _field("cpu", DEVICE, Flag("--device", "cpu (default), cuda, cuda:N or auto"))
    nonfinite: str = _field(
        "raise",
        one_of("raise", "zero"),
        Flag("--nonfinite", "NaN/Inf in an activation: stop with an error (default) or set to 0"),
    )
    compression: str = _field(
        "none",
        one_of("none", "zstd"),
        Flag(
            "--compression",
            "how a store's chunks are written: 'none' (default; raw float32, the fastest to "
            "write and read) or 'zstd' (about half the disk for ReLU outputs, slower)",
        ),
    )
    store_dtype: str = _field(
        "float32",
        one_of("float32", "float16"),
        Flag(
            "--store-dtype",
            "the number type of a store's chunks: 'float32' (default) or 'float16' (half the "
            "bytes written and read; each value rounded to 11 significant bits: a relative "
            "error of at most 2^-11 = 4.9e-4, or 3e-8 absolute below 6.1e-5; a value beyond "
            "±65,504 is refused); read back as float32 either way",
        ),
    )
    sketch: int | str = _field(
        "auto",
        SKETCH,
        Flag(
            "--sketch",
            "layers too wide to hold (ResNets, ViTs at full size) are kept as their "
            "coordinates in K sketched directions, over two forward passes, without a "
            "store: 'auto' (default) sketches only when the activations exceed "
            "--memory, with K = rank + 30 where the memory allows; 0 holds every layer "
            "whole; K sketches every layer wider than K. Exact when K >= the number of "
            "inputs; otherwise each layer's captured energy is reported",
            metavar="K",
        ),
    )
    memory_budget: int = _field(
        2 * 1024**3,
        SOME_BYTES,
        Flag(
            "--memory",
            "activations held in memory without --store (default 2G); beyond it the widest "
            "layers are sketched",
            metavar="SIZE",
        ),
    )


@dataclass(frozen=True)
class EngineOptions(_Checked):
    """Settings of the joint factorization besides the rank (see :class:`factorlens.CMTF`)."""

    nonneg: bool = _field(
        False,
        FLAG,
        Flag("--nonneg", "nonnegative factors (pixels and ReLU outputs are >= 0; easier to read)"),
    )
    l1_penalty: float | str = _field(
        "auto",
        PENALTY,
        Flag(
            "--l1",
            "ACMTF penalty on component strengths, which sets a component's strength in a "
            "block that does not hold it to exactly zero. 'auto' (default): per block from its "
            "noise floor (Gavish-Donoho threshold of its singular values), then the remaining "
            "strengths refitted without shrinkage; a number: one penalty for every block "
            "(0 = plain CMTF)",
        ),
    )
    weighting: str | dict[str, float] = _field(
        "unit",
        WEIGHTING,
        Flag(
            "--weighting",
            "block weighting: 'unit' scales every block to unit Frobenius norm so each counts "
            "equally (default); 'none' lets the largest layer dominate",
        ),
    )
    center: bool = _field(False, FLAG, Flag("--center", "centre every block (not with --nonneg)"))
    tensor_blocks: tuple[str, ...] | None = _field(None, BLOCK_NAMES)
    init: str | np.ndarray = _field("svd", INIT)
    n_init: int = _field(
        3,
        COUNT,
        Flag("--n-init", "starts (SVD-based, then random); the best is kept (default {default})"),
    )
    screen_iter: int = _field(20, COUNT)
    n_iter_max: int = _field(
        500, COUNT, Flag("--max-iter", "ALS iteration cap (default {default})")
    )
    tol: float = _field(
        1e-7,
        TOLERANCE,
        Flag("--tol", "stop when the loss changes by less than this fraction (default {default})"),
    )
    inner_sweeps: int = _field(3, COUNT)
    refit: str = _field("guarded", one_of("guarded", "always", "never"))
    extrapolate: bool = _field(True, FLAG)
    random_state: int | None = _field(
        DEFAULT_SEED,
        SEED,
        Flag(
            "--seed",
            "random seed for sub-sampling, a model's random weights (without --weights), "
            "initialisation and the rank scan (default {default})",
        ),
    )
    device: str = _field("cpu", DEVICE)
    backend: str | None = _field(None, one_of(None, "numpy", "torch", "dask"))
    memory_budget: int = _field(2 * 1024**3, BYTES)
    verbose: bool = _field(False, FLAG)
    check_fewer: bool = _field(True, FLAG)
    callback: Callable[[int, float], Any] | None = _field(None, CALLBACK)
    compress_rows: int = _field(
        0,
        COUNT_OR_OFF,
        Flag(
            "--compress-rows",
            "for many inputs: fit on the data compressed to this many sample directions "
            "(a randomized range finder, 4 passes over the data), then refine a few "
            "iterations on all inputs; 0 = off (default)",
            metavar="K",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_combination(self.nonneg, self.center, self.compress_rows)


def check_combination(nonneg: bool, center: bool, compress_rows: int) -> None:
    """Refuse fit settings that cannot go together (one line), before any work is done."""
    if nonneg and center:
        raise FactorlensError(
            "`nonneg` and `center` cannot be combined (centred data is signed); drop one"
        )
    if nonneg and compress_rows:
        raise FactorlensError(
            "`compress_rows` fits on samples compressed by a signed basis, which a "
            "nonnegative fit cannot use (its loss ended 58x the full fit's on planted "
            "data); drop `compress_rows` or `nonneg`"
        )


@dataclass(frozen=True)
class RankOptions(_Checked):
    """Settings of the rank scan (see :func:`factorlens.estimate_rank`).

    Its fits are converged tighter per iteration than a quick scan needs: with loosely
    converged fits the split halves disagreed by chance and the chosen rank moved with the
    seed.
    """

    max_rank: int = _field(
        10, COUNT, Flag("--max-rank", "largest R of the rank scan (default {default})")
    )
    stability_threshold: float = _field(0.8, FRACTION)
    n_splits: int = _field(3, COUNT)
    patience: int = _field(3, COUNT_OR_OFF)
    n_iter_max: int = _field(200, COUNT)
    tol: float = _field(1e-6, TOLERANCE)
    compress: bool = _field(True, FLAG)
    n_jobs: int | None = _field(None, JOBS)


@dataclass(frozen=True)
class QualityOptions(_Checked):
    """Settings of the label-free quality scores (see :func:`factorlens.score_checkpoints`)."""

    mode: str = _field(
        "auto",
        one_of("auto", "consensus", "single"),
        Flag(
            "--mode",
            "consensus: score the checkpoints against each other (needs >= 3, and is "
            "unreliable when most of few checkpoints are poor); single: each on its own; "
            "auto (default): consensus from 5 checkpoints on",
        ),
    )
    scratch: str | None = _field(
        None,
        FOLDER,
        Flag(
            "--scratch",
            "capture each checkpoint into a temporary zarr store in this folder (removed "
            "once it is scored) instead of memory: the rank scan and --out's analysis then "
            "read layers above the memory budget (2 GiB) from disk, chunk by chunk",
            metavar="DIR",
        ),
    )


def defaults(options: type) -> dict[str, Any]:
    """Return every field of an options dataclass with its default (``{name: default}``)."""
    return {
        f.name: f.default
        for f in fields(options)
        if f.default is not MISSING  # every field has one; a field without would be a bug
    }


def flagged(options: type) -> list[tuple[str, Flag, Any]]:
    """Return ``(field name, Flag, default)`` for each field of ``options`` with a CLI flag."""
    return [
        (f.name, f.metadata["flag"], f.default) for f in fields(options) if "flag" in f.metadata
    ]


def rule_of(options: type, name: str) -> Rule:
    """Return the :class:`Rule` of field ``name`` of ``options``."""
    return next(f.metadata["rule"] for f in fields(options) if f.name == name)


def merged(kind: type[_T], options: _T | None, changes: Mapping[str, Any], what: str) -> _T:
    """Return ``options`` of class ``kind`` (default: every default) with ``changes`` applied.

    The API's functions take a stage's settings as its options object, as keyword arguments,
    or both (the keywords win); this merges them once, at the door, checks the result by the
    fields' rules, and names a keyword that is not a setting (``what`` says whose, e.g.
    ``"engine"``).
    """
    from dataclasses import replace

    if options is not None and not isinstance(options, kind):
        raise FactorlensError(
            f"{what} options must be a factorlens.options.{kind.__name__}, "
            f"got {type(options).__name__}"
        )
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - names)
    if unknown:
        raise FactorlensError(
            f"unknown {what} option(s) {', '.join(map(repr, unknown))}; the options are the "
            f"fields of factorlens.options.{kind.__name__}: {', '.join(sorted(names))}"
        )
    return replace(options or kind(), **changes)  # type: ignore[type-var]


def engine_options(options: EngineOptions | None = None, /, **changes: Any) -> EngineOptions:
    """Return the engine's settings: ``options`` with ``changes`` (see :func:`merged`)."""
    return merged(EngineOptions, options, changes, "engine")


def capture_settings(options: CaptureOptions | None = None, /, **changes: Any) -> CaptureOptions:
    """Return the capture's settings: ``options`` with ``changes`` (see :func:`merged`)."""
    return merged(CaptureOptions, options, changes, "capture")


def split_settings(
    settings: Mapping[str, Any],
    capture: CaptureOptions | None = None,
    engine: EngineOptions | None = None,
) -> tuple[CaptureOptions, EngineOptions]:
    """Return the capture's and the engine's settings, keywords sorted by whose field they name.

    For the functions that capture and then fit (``analyze``, ``compare``): a keyword that
    names a field of both (``device``, ``memory_budget``) sets it in both, so
    ``device="cuda"`` runs the forward passes and the fit there, and ``memory_budget`` bounds
    what either holds; one that names neither is refused.
    """
    capture_names = {f.name for f in fields(CaptureOptions)}
    engine_names = {f.name for f in fields(EngineOptions)}
    unknown = sorted(set(settings) - capture_names - engine_names)
    if unknown:
        raise FactorlensError(
            f"unknown option(s) {', '.join(map(repr, unknown))}; the options are the fields "
            "of factorlens.options.CaptureOptions and EngineOptions (the parameters of "
            "factorlens.CMTF)"
        )
    return (
        capture_settings(capture, **{k: v for k, v in settings.items() if k in capture_names}),
        engine_options(engine, **{k: v for k, v in settings.items() if k in engine_names}),
    )


def as_params(options: Any) -> dict[str, Any]:
    """Return an options object's fields as keyword arguments (arrays and callables as they are)."""
    return {f.name: getattr(options, f.name) for f in fields(options)}


def from_args(options: type, args: Any, **extra: Any) -> Any:
    """Build the options object of ``options`` from parsed CLI ``args``.

    ``args`` holds each flag's value under the flag's name (``--max-iter`` → ``max_iter``);
    ``extra`` gives further fields; fields without a flag keep their defaults.
    """
    values = {
        name: getattr(args, flag.dest)
        for name, flag, _ in flagged(options)
        if hasattr(args, flag.dest)
    }
    return options(**{**values, **extra})
