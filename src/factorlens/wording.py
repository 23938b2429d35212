"""How the CLI words the library's messages: its flags where the API names its arguments.

Library messages name the arguments of the Python API in backticks (``choose `rank` <= 12``,
``pass `overwrite=True` to replace it``). :func:`flags_for_cli` turns them into what a CLI
user types (``choose --rank <= 12``, ``pass --overwrite to replace it``) with one table,
:data:`CLI_FLAGS`, generated from the options' fields (:mod:`factorlens.options`) plus the
arguments that are not options fields. :func:`cli_wording` words the library's notes the same
way while the CLI runs.
"""

from __future__ import annotations

import ast
import contextlib
import re
from collections.abc import Iterator

from factorlens.errors import worded
from factorlens.options import (
    CaptureOptions,
    EngineOptions,
    QualityOptions,
    RankOptions,
    flagged,
)


def _option_flags() -> dict[str, str]:
    """Return field name -> flag of every options field with a CLI flag (``options.py``)."""
    stages = (CaptureOptions, EngineOptions, RankOptions, QualityOptions)
    return {name: flag.name for stage in stages for name, flag, _ in flagged(stage)}


#: argument name, as library messages write it in backticks -> what a CLI user types: the
#: options' own flags (``--max-iter`` for ``n_iter_max``), and the arguments that are not
#: options fields
CLI_FLAGS: dict[str, str] = {
    **_option_flags(),
    # the factorization (CMTF, analyze, estimate_rank)
    "rank": "--rank",
    "tensor_layers": "--tensor-layers",
    "seed": "--seed",
    # the model, the data and the capture
    "model": "--model",
    "weights": "--weights",
    "trust_pickle": "--trust-pickle",
    "data": "--data",
    "arch": "--arch",
    "normalize": "--normalize",
    "layers": "--layers",
    "select": "--select",
    # where results go
    "store": "--store",
    "resume": "--resume",
    "out": "--out",
    "overwrite": "--overwrite",
    # API calls that the CLI spells differently
    "analyze_store": "--store without --model",
    "build_zoo": "factorlens zoo --data ... --out DIR",
}

#: a backticked argument: `name` or `name=value` (a Python literal)
_ARGUMENT = re.compile(r"`([A-Za-z_]\w*)(?:=([^`\n]+))?`")


def _as_flag(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    flag = CLI_FLAGS.get(name)
    if flag is None:
        return match.group(0)[1:-1]  # no flag: the name (and value) without backticks
    if value is None or value == "True":
        return flag
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return f"{flag} {value}"
    if isinstance(literal, dict):  # select={'fc': 0} -> --select fc=0 ('a b=0' quoted)
        pairs = (f"{k}={v}" for k, v in literal.items())
        return " ".join(f"{flag} " + (f"'{p}'" if " " in p else p) for p in pairs)
    if isinstance(literal, bool | type(None)):  # overwrite=False: no flag says that
        return f"{name}={value}"
    return f"{flag} {literal}"


def flags_for_cli(message: str) -> str:
    """Return a library message worded for the CLI: backticked arguments become flags.

    Parameters
    ----------
    message : str
        A message of the library, its arguments in backticks.

    Returns
    -------
    str
        The message with `` `rank` `` as ``--rank``, `` `overwrite=True` `` as
        ``--overwrite``, `` `nonfinite="zero"` `` as ``--nonfinite zero`` (see
        :data:`CLI_FLAGS`); a backticked name without a flag loses its backticks, and
        backticked text that is not an argument name is kept as it is.

    >>> flags_for_cli("choose `rank` <= 12, or pass `overwrite=True`")
    'choose --rank <= 12, or pass --overwrite'
    """
    return _ARGUMENT.sub(_as_flag, message)


@contextlib.contextmanager
def cli_wording() -> Iterator[None]:
    """Word the library's notes and warnings for the CLI (flags, not arguments) in this block."""
    with worded(flags_for_cli):
        yield
