"""Progress on stderr: tqdm bars on a terminal, plain lines in a log.

A bar redraws itself with carriage returns; in a file, a CI log or a cluster job's output
every redraw is kept, so a short run wrote thousands of them. :func:`progress_bar` gives a
tqdm bar when stderr is a terminal and otherwise a :class:`LineProgress`: one line when a stage
ends, and a line at most every :data:`INTERVAL` seconds while a long one runs. Set
``FACTORLENS_PROGRESS=bars`` or ``lines`` to choose either way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

#: the least time between two lines of one stage in a log (seconds)
INTERVAL = 10.0

T = TypeVar("T")


class LineProgress:
    """A progress counter that writes whole lines (the tqdm methods factorlens uses).

    Parameters
    ----------
    total : int or None
        The number of steps, when known.
    desc : str
        The stage, printed at the start of each line.
    unit : str
        What a step is ("batch", "it").
    initial : int
        Steps already done (a resumed capture).
    disable : bool
        Write nothing.
    stream : file, optional
        Where lines go (default ``sys.stderr``).
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        *,
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, int(initial)
        self.disable = disable
        self.stream = stream
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def _line(self, final: bool) -> None:
        if self.disable:
            return
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        elapsed = time.monotonic() - self.start
        tail = f" ({self.postfix})" if self.postfix else ""
        verb = "done" if final else "at"
        stream = self.stream or sys.stderr
        units = self.unit + ("es" if self.unit.endswith(("s", "sh", "ch", "x")) else "s")
        print(f"{self.desc}: {verb} {count} {units}, {elapsed:.1f} s{tail}", file=stream)
        stream.flush()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps (a line when :data:`INTERVAL` has passed since the last)."""
        self.n += n
        now = time.monotonic()
        if now - self.last >= INTERVAL:
            self.last = now
            self._line(final=False)

    def set_postfix(self, **values: Any) -> None:
        """Show ``key=value`` pairs at the end of the next line."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        """Show ``text`` at the end of the next line."""
        self.postfix = text

    def set_description(self, desc: str) -> None:
        """Rename the stage."""
        self.desc = desc

    def close(self) -> None:
        """End the stage with one line (once)."""
        if not self.closed:
            self.closed = True
            self._line(final=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def use_bars(stream: TextIO | None = None) -> bool:
    """Whether progress is drawn as bars: ``FACTORLENS_PROGRESS``, else stderr is a terminal."""
    mode = os.environ.get("FACTORLENS_PROGRESS", "").strip().lower()
    if mode in ("bars", "lines"):
        return mode == "bars"
    stream = stream or sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def progress_bar(
    total: int | None,
    desc: str,
    *,
    unit: str = "it",
    initial: int = 0,
    disable: bool = False,
    leave: bool = False,
) -> Any:
    """Return a progress counter for one stage on stderr (see the module docstring).

    Parameters
    ----------
    total : int or None
        The number of steps, when known.
    desc : str
        The stage's label.
    unit : str
        What a step is.
    initial : int
        Steps already done.
    disable : bool
        Show nothing.
    leave : bool
        Keep a terminal's bar after it closes.

    Returns
    -------
    tqdm.tqdm or LineProgress
        Call ``update`` once per step and ``close`` at the end.
    """
    if not use_bars():
        return LineProgress(total, desc, unit=unit, initial=initial, disable=disable)
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=disable,
        leave=leave,
        file=sys.stderr,
    )


def progress_iter(
    items: Iterable[T], desc: str, *, unit: str = "it", disable: bool = False
) -> Iterator[T]:
    """Yield ``items`` while counting them on a :func:`progress_bar` (closed at the end)."""
    seq = list(items)
    bar = progress_bar(len(seq), desc, unit=unit, disable=disable)
    try:
        for item in seq:
            yield item
            bar.update(1)
    finally:
        bar.close()
