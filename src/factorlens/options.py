"""One options object per stage: the fields, defaults and help texts the API and the CLI share.

Each stage's settings are a frozen dataclass — :class:`CaptureOptions`, :class:`EngineOptions`
(the joint factorization, :class:`~factorlens.factorize.CMTF`), :class:`RankOptions`
(:func:`~factorlens.rank.estimate_rank`) and :class:`QualityOptions` — and that dataclass is
the only place a default is written. The API's signatures take their defaults from it, and
the CLI builds its flags from the fields that carry a :class:`Flag` (its name, help text and
parser); :func:`from_args` turns parsed flags back into the options object.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

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
    parse : callable, optional
        Turns the flag's text into the value; raises ``ValueError`` with a message for bad
        text. None for ``store_true`` flags and free text.
    choices : sequence of str, optional
        The allowed values.
    metavar : str, optional
        The placeholder shown in ``--help``.
    """

    name: str
    help: str
    parse: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        """Return the attribute argparse stores the value in (``--max-iter`` → ``max_iter``)."""
        return self.name.lstrip("-").replace("-", "_")


def _flag(flag: Flag) -> dict[str, Flag]:
    return {"flag": flag}


# ---------------------------------------------------------------------------- value parsers
def positive_int(text: str) -> int:
    """Parse a count: an integer ≥ 1 (``ValueError`` with the reason otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """Parse a count that may be 0 (off): an integer ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise ValueError(f"expected an integer >= 0, got {value}")
    return value


def seed(text: str) -> int:
    """Parse a seed: an integer in 0..:data:`MAX_SEED`."""
    try:
        value: int | None = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise ValueError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def tolerance(text: str) -> float:
    """Parse a relative tolerance: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:  # NaN fails this too
        raise ValueError(f"expected a number between 0 and 1 (e.g. 1e-7), got {text!r}")
    return value


def penalty(text: str) -> float | str:
    """Parse an ACMTF penalty: ``auto`` or a finite number ≥ 0."""
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected 'auto' or a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected 'auto' or a finite number >= 0, got {text!r}")
    return value


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


def existing_dir(text: str) -> str:
    """Parse a folder that must exist already."""
    from pathlib import Path

    if not Path(text).is_dir():
        raise ValueError(f"no folder {text!r}; create it first or give another")
    return text


def sketch_size(text: str) -> int | str:
    """Parse ``--sketch``: ``auto``, ``0`` (off) or a number of directions >= 1."""
    if text == "auto":
        return "auto"
    try:
        return nonnegative_int(text)
    except ValueError:
        raise ValueError(f"expected 'auto', 0 or a number of directions, got {text!r}") from None


def byte_size(text: str) -> int:
    """Parse a memory size: bytes, or a number with a unit (``500M``, ``2G``, ``1.5GB``)."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in units else ""
    try:
        value = float(t[: len(t) - len(unit)] if unit else t)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"expected a size such as 500M or 4G, got {text!r}")
    return max(1, int(value * units[unit]))


# ---------------------------------------------------------------------------- the stages
@dataclass(frozen=True)
class CaptureOptions:
    """Settings of the forward passes that record the layers (see :func:`factorlens.capture`)."""

    batch_size: int = field(
        default=256,
        metadata=_flag(
            Flag("--batch-size", "inputs per forward pass (default {default})", parse=positive_int)
        ),
    )
    device: str = field(
        default="cpu", metadata=_flag(Flag("--device", "cpu (default), cuda, cuda:N"))
    )
    nonfinite: str = field(
        default="raise",
        metadata=_flag(
            Flag(
                "--nonfinite",
                "NaN/Inf in an activation: stop with an error (default) or set to 0",
                choices=("raise", "zero"),
            )
        ),
    )
    compression: str = field(
        default="none",
        metadata=_flag(
            Flag(
                "--compression",
                "how a store's chunks are written: 'none' (default; raw float32, the fastest to "
                "write and read) or 'zstd' (about half the disk for ReLU outputs, slower)",
                choices=("none", "zstd"),
            )
        ),
    )
    sketch: int | str = field(
        default="auto",
        metadata=_flag(
            Flag(
                "--sketch",
                "layers too wide to hold (ResNets, ViTs at full size) are kept as their "
                "coordinates in K sketched directions, over two forward passes, without a "
                "store: 'auto' (default) sketches only when the activations exceed "
                "--memory, with K = rank + 30 where the memory allows; 0 holds every layer "
                "whole; K sketches every layer wider than K. Exact when K >= the number of "
                "inputs; otherwise each layer's captured energy is reported",
                parse=sketch_size,
                metavar="K",
            )
        ),
    )
    memory_budget: int = field(
        default=2 * 1024**3,
        metadata=_flag(
            Flag(
                "--memory",
                "activations held in memory without --store (default 2G); beyond it the widest "
                "layers are sketched",
                parse=byte_size,
                metavar="SIZE",
            )
        ),
    )


@dataclass(frozen=True)
class EngineOptions:
    """Settings of the joint factorization besides the rank (see :class:`factorlens.CMTF`)."""

    nonneg: bool = field(
        default=False,
        metadata=_flag(
            Flag(
                "--nonneg", "nonnegative factors (pixels and ReLU outputs are >= 0; easier to read)"
            )
        ),
    )
    l1_penalty: float | str = field(
        default="auto",
        metadata=_flag(
            Flag(
                "--l1",
                "ACMTF penalty on component strengths, which sets a component's strength in a "
                "block that does not hold it to exactly zero. 'auto' (default): per block from its "
                "noise floor (Gavish-Donoho threshold of its singular values), then the remaining "
                "strengths refitted without shrinkage; a number: one penalty for every block "
                "(0 = plain CMTF)",
                parse=penalty,
            )
        ),
    )
    weighting: str | dict[str, float] = field(
        default="unit",
        metadata=_flag(
            Flag(
                "--weighting",
                "block weighting: 'unit' scales every block to unit Frobenius norm so each counts "
                "equally (default); 'none' lets the largest layer dominate",
                choices=("unit", "none"),
            )
        ),
    )
    center: bool = field(
        default=False, metadata=_flag(Flag("--center", "centre every block (not with --nonneg)"))
    )
    tensor_blocks: tuple[str, ...] | None = None
    init: str | np.ndarray = "svd"
    n_init: int = field(
        default=3,
        metadata=_flag(
            Flag(
                "--n-init",
                "starts (SVD-based, then random); the best is kept (default {default})",
                parse=positive_int,
            )
        ),
    )
    screen_iter: int = 20
    n_iter_max: int = field(
        default=500,
        metadata=_flag(
            Flag("--max-iter", "ALS iteration cap (default {default})", parse=positive_int)
        ),
    )
    tol: float = field(
        default=1e-7,
        metadata=_flag(
            Flag(
                "--tol",
                "stop when the loss changes by less than this fraction (default {default})",
                parse=tolerance,
            )
        ),
    )
    inner_sweeps: int = 3
    refit: str = "guarded"
    extrapolate: bool = True
    random_state: int | None = field(
        default=DEFAULT_SEED,
        metadata=_flag(
            Flag(
                "--seed",
                "random seed for sub-sampling, initialisation and the rank scan (default {default})",
                parse=seed,
            )
        ),
    )
    device: str = "cpu"
    backend: str | None = None
    memory_budget: int = 2 * 1024**3
    verbose: bool = False
    check_fewer: bool = True
    callback: Callable[[int, float], Any] | None = None
    compress_rows: int = field(
        default=0,
        metadata=_flag(
            Flag(
                "--compress-rows",
                "for many inputs: fit on the data compressed to this many sample directions "
                "(a randomized range finder, 4 passes over the data), then refine a few "
                "iterations on all inputs; 0 = off (default)",
                parse=nonnegative_int,
                metavar="K",
            )
        ),
    )


@dataclass(frozen=True)
class RankOptions:
    """Settings of the rank scan (see :func:`factorlens.estimate_rank`).

    Its fits are converged tighter per iteration than a quick scan needs: with loosely
    converged fits the split halves disagreed by chance and the chosen rank moved with the
    seed.
    """

    max_rank: int = field(
        default=10,
        metadata=_flag(
            Flag("--max-rank", "largest R of the rank scan (default {default})", parse=positive_int)
        ),
    )
    stability_threshold: float = 0.8
    n_splits: int = 3
    n_iter_max: int = 200
    tol: float = 1e-6
    compress: bool = True
    n_jobs: int | None = None


@dataclass(frozen=True)
class QualityOptions:
    """Settings of the label-free quality scores (see :func:`factorlens.score_checkpoints`)."""

    mode: str = field(
        default="auto",
        metadata=_flag(
            Flag(
                "--mode",
                "consensus: score the checkpoints against each other (needs >= 3, and is "
                "unreliable when most of few checkpoints are poor); single: each on its own; "
                "auto (default): consensus from 5 checkpoints on",
                choices=("auto", "consensus", "single"),
            )
        ),
    )
    scratch: str | None = field(
        default=None,
        metadata=_flag(
            Flag(
                "--scratch",
                "capture each checkpoint into a temporary zarr store in this folder (removed "
                "once it is scored) instead of memory: the rank scan and --out's analysis then "
                "read layers above the memory budget (2 GiB) from disk, chunk by chunk",
                parse=existing_dir,
                metavar="DIR",
            )
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


def engine_options(options: EngineOptions | None = None, **changes: Any) -> EngineOptions:
    """Return ``options`` (default: every default) with ``changes``, as one object that travels.

    The API's functions take the engine's settings as an :class:`EngineOptions` (``options``),
    as keyword arguments, or both (the keywords win); this merges them once, at the door, and
    names a keyword that is not a setting. Values are checked where they are used
    (:class:`factorlens.CMTF`), by the one validator the CLI's flags also reach.
    """
    from dataclasses import replace

    from factorlens.errors import FactorlensError

    if options is not None and not isinstance(options, EngineOptions):
        raise FactorlensError(
            f"`options` must be a factorlens.options.EngineOptions, got {type(options).__name__}"
        )
    names = {f.name for f in fields(EngineOptions)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise FactorlensError(
            f"unknown engine option(s) {', '.join(map(repr, unknown))}; the options are those of "
            f"factorlens.CMTF: {', '.join(sorted(names))}"
        )
    return replace(options or EngineOptions(), **changes)


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
