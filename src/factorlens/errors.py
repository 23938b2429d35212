"""User-facing errors and the wording of their messages.

Every problem caused by what the user gave (a file, a name, an option) raises
:class:`FactorlensError` with a one-line message that says what was wrong and how to fix it;
a failure at run time that is not the user's argument (a damaged store or result file, a
model that raises in its forward pass) raises :class:`FactorlensRuntimeError`. The CLI prints
either as ``error: <message>`` without a traceback (unless ``--debug``) and exits with the
error's :attr:`~FactorlensError.exit_code` (2 and 1).

Messages name the arguments of the Python API in backticks (``choose `rank` <= 12``,
``pass `overwrite=True` to replace it``); :func:`flags_for_cli` turns them into the CLI's
flags (``choose --rank <= 12``, ``pass --overwrite to replace it``) with the table
:data:`CLI_FLAGS`, and :func:`note` prints a library note worded for whoever is calling.
"""

from __future__ import annotations

import ast
import contextlib
import re
import sys
from collections.abc import Iterator


class FactorlensError(ValueError):
    """A problem with the user's input; the message is one line and says how to fix it."""

    #: the CLI's exit status for this error: 2, a usage error the user can fix
    exit_code = 2


class FactorlensRuntimeError(FactorlensError):
    """A failure at run time that is not the user's argument (the CLI exits 1).

    A damaged store or result file found while reading it, or a model that raises in its
    forward pass. A subclass of :class:`FactorlensError`, so ``except FactorlensError`` still
    catches it.
    """

    exit_code = 1


def _option_flags() -> dict[str, str]:
    """Return field name -> flag of every options field with a CLI flag (``options.py``)."""
    from factorlens.options import (
        CaptureOptions,
        EngineOptions,
        QualityOptions,
        RankOptions,
        flagged,
    )

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
    if isinstance(literal, dict):  # select={'fc': 0} -> --select fc=0
        return f"{flag} " + ",".join(f"{k}={v}" for k, v in literal.items())
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


_FOR_CLI = [False]  # set while the CLI runs (cli_wording), read by note()


@contextlib.contextmanager
def cli_wording() -> Iterator[None]:
    """Word the library's notes for the CLI (flags, not arguments) inside this block."""
    before = _FOR_CLI[0]
    _FOR_CLI[0] = True
    try:
        yield
    finally:
        _FOR_CLI[0] = before


def note(message: str) -> None:
    """Print ``note: <message>`` to stderr, its arguments as flags while the CLI runs.

    Parameters
    ----------
    message : str
        The note, its arguments in backticks (as in error messages).
    """
    print(f"note: {flags_for_cli(message) if _FOR_CLI[0] else message}", file=sys.stderr)


def warn(message: str) -> None:
    """Print ``warning: <message>`` to stderr: a result may be wrong, not only worth knowing."""
    print(f"warning: {flags_for_cli(message) if _FOR_CLI[0] else message}", file=sys.stderr)


def close_matches(word: str, candidates: list[str], n: int = 3) -> str:
    """Return ``" (did you mean: a, b?)"`` for the closest candidates, or ``""``."""
    import difflib

    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(found)}?)" if found else ""


def one_line(text: object, limit: int = 160) -> str:
    """Return ``text`` (an exception, say) on one line, whitespace collapsed.

    At most ``limit`` characters (cut with "...").
    """
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
