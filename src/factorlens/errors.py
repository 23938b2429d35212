"""User-facing errors and the wording of their messages.

Every problem caused by what the user gave (a file, a name, an option) raises
:class:`FactorlensError` with a one-line message that says what was wrong and how to fix it;
a failure at run time that is not the user's argument (a damaged store or result file, a
model that raises in its forward pass) raises :class:`FactorlensRuntimeError`. The CLI prints
either as ``error: <message>`` without a traceback (unless ``--debug``) and exits with the
error's :attr:`~FactorlensError.exit_code` (2 and 1).

Messages name the arguments of the Python API in backticks (``choose `rank` <= 12``,
``pass `overwrite=True` to replace it``); the CLI words them as its flags
(:func:`factorlens.wording.flags_for_cli`), and :func:`note` and :func:`warn` print a library
note worded for whoever is calling (:func:`worded`). This module imports nothing of
factorlens: every other module may raise its errors.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


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


#: how notes and warnings are worded: None as the library writes them (arguments in
#: backticks), else the function set by :func:`worded` (the CLI's flags). A process-wide
#: setting, not a context variable: notes printed from the worker threads of a CLI run are
#: worded for the CLI too.
_wording: list[Callable[[str], str] | None] = [None]


@contextlib.contextmanager
def worded(wording: Callable[[str], str]) -> Iterator[None]:
    """Word the library's notes and warnings with ``wording`` inside this block.

    The CLI passes :func:`factorlens.wording.flags_for_cli`, so a note names its flags
    (``--resume``) instead of the API's arguments (`` `resume=True` ``).
    """
    before = _wording[0]
    _wording[0] = wording
    try:
        yield
    finally:
        _wording[0] = before


def _worded(message: str) -> str:
    wording = _wording[0]
    return message if wording is None else wording(message)


def note(message: str) -> None:
    """Print ``note: <message>`` to stderr, worded for whoever calls (see :func:`worded`).

    Parameters
    ----------
    message : str
        The note, its arguments in backticks (as in error messages).
    """
    print(f"note: {_worded(message)}", file=sys.stderr)


def warn(message: str) -> None:
    """Print ``warning: <message>`` to stderr: a result may be wrong, not only worth knowing."""
    print(f"warning: {_worded(message)}", file=sys.stderr)


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
