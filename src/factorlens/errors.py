"""User-facing errors.

Every problem caused by what the user gave (a file, a name, an option) raises
:class:`FactorlensError` with a one-line message that says what was wrong and how to fix it.
The CLI prints it as ``error: <message>`` without a traceback (unless ``--debug``).
"""

from __future__ import annotations


class FactorlensError(ValueError):
    """A problem with the user's input; the message is one line and says how to fix it."""


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
