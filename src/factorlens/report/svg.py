"""Small inline SVG charts for the page (crisp at any zoom, a few kB each, hover tooltips).

The same charts are written as matplotlib PNGs under ``figures/`` (see :mod:`figures`); these
are only the on-page versions. Every label and tooltip is HTML-escaped here.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from factorlens.report.figures import BAR_COLOUR, NEG_COLOUR, POS_COLOUR


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _n(x: float) -> str:
    """A coordinate with at most one decimal."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def hbars(
    values: Sequence[float],
    labels: Sequence[str],
    *,
    signed: bool = False,
    vmax: float | None = None,
    tooltips: Sequence[str] | None = None,
    links: Sequence[str | None] | None = None,
    marks: Sequence[float] | None = None,
    width: int = 300,
    label_width: int = 100,
    row: int = 16,
    fmt: str = "{:.2f}",
    title: str = "",
    css: str = "",
) -> str:
    """Horizontal bars, one row per value (first on top), labels on the left.

    ``signed``: a centred zero line, red bars > 0, blue < 0. ``links``: per row an ``href`` (the
    row becomes a link). ``marks``: per row a reference value drawn as a thin tick (e.g. a base
    rate). ``vmax``: the value of a full-length bar (default max |value|).
    """
    v = np.nan_to_num(np.asarray(values, dtype=np.float64).ravel())
    n = v.size
    top = max(float(np.max(np.abs(v))) if n else 0.0, 0.0)
    if marks is not None:
        top = max(top, float(np.max(np.abs(np.asarray(marks, dtype=float)))) if n else 0.0)
    full = vmax if vmax is not None and vmax > 0 else (top if top > 0 else 1.0)
    value_w = 40
    plot_w = max(20, width - label_width - value_w)
    zero = label_width + (plot_w / 2 if signed else 0)
    scale = (plot_w / 2 if signed else plot_w) / full
    height = row * n + 4
    parts = []
    for i in range(n):
        y = 2 + i * row
        x = float(v[i])
        w = min(abs(x) * scale, plot_w / 2 if signed else plot_w)
        x0 = zero - w if x < 0 else zero
        colour = (NEG_COLOUR if x < 0 else POS_COLOUR) if signed else BAR_COLOUR
        tip = tooltips[i] if tooltips is not None else f"{labels[i]}: {fmt.format(x)}"
        end = zero + w if x >= 0 or not signed else zero
        if marks is not None:
            end = max(end, zero + float(marks[i]) * scale + 1)
        text_x = end + 3
        g = (
            f"<title>{_esc(tip)}</title>"
            f'<rect x="{_n(label_width)}" y="{y}" width="{_n(plot_w + value_w)}" '
            f'height="{row}" class="hit"/>'
            f'<text x="{_n(label_width - 4)}" y="{_n(y + row * 0.72)}" class="lab" '
            f'text-anchor="end">{_esc(_clip(str(labels[i]), 18))}</text>'
            f'<rect x="{_n(x0)}" y="{_n(y + 2)}" width="{_n(w)}" height="{row - 4}" '
            f'fill="{colour}"/>'
            f'<text x="{_n(text_x)}" y="{_n(y + row * 0.72)}" class="val">'
            f"{_esc(fmt.format(x))}</text>"
        )
        if marks is not None:
            mx = zero + float(marks[i]) * scale
            g += f'<line x1="{_n(mx)}" x2="{_n(mx)}" y1="{y + 1}" y2="{y + row - 1}" class="mark"/>'
        link = links[i] if links is not None else None
        if link:
            parts.append(f'<a href="{_esc(link)}"><g class="row">{g}</g></a>')
        else:
            parts.append(f'<g class="row">{g}</g>')
    axis = f'<line x1="{_n(zero)}" x2="{_n(zero)}" y1="0" y2="{height}" class="axis"/>' if n else ""
    cls = f"chart hbars {css}".strip()
    return (
        f'<svg class="{cls}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_esc(title)}">{"".join(parts)}{axis}</svg>'
    )


def histogram(
    counts: Sequence[int],
    edges: Sequence[float],
    *,
    marks: Sequence[tuple[float, str, str]] = (),
    width: int = 300,
    height: int = 120,
    title: str = "",
) -> str:
    """A histogram (bins as columns) with a zero line and vertical ``marks`` (x, label, colour).

    Each bin's tooltip gives its range and count.
    """
    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    left, right, top, bottom = 6, 6, 14, 16
    pw, ph = width - left - right, height - top - bottom
    lo, hi = float(e[0]), float(e[-1])
    span = hi - lo if hi > lo else 1.0
    cmax = float(c.max()) if c.size and c.max() > 0 else 1.0

    def sx(x: float) -> float:
        return left + (x - lo) / span * pw

    parts = []
    for i in range(c.size):
        x0, x1 = sx(e[i]), sx(e[i + 1])
        h = c[i] / cmax * ph
        parts.append(
            f'<rect x="{_n(x0)}" y="{_n(top + ph - h)}" width="{_n(max(x1 - x0 - 0.5, 0.5))}" '
            f'height="{_n(h)}" fill="{BAR_COLOUR}"><title>{e[i]:.3g} … {e[i + 1]:.3g}: '
            f"{int(c[i])} inputs</title></rect>"
        )
    parts.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="axis"/>'
    )
    if lo < 0 < hi:
        parts.append(
            f'<line x1="{_n(sx(0))}" x2="{_n(sx(0))}" y1="{top}" y2="{top + ph}" class="axis"/>'
        )
    for x, text, colour in marks:
        if not np.isfinite(x):
            continue
        px = sx(min(max(float(x), lo), hi))
        anchor = "end" if px > left + pw / 2 else "start"
        dx = -2 if anchor == "end" else 2
        parts.append(
            f'<line x1="{_n(px)}" x2="{_n(px)}" y1="{top - 2}" y2="{top + ph}" stroke="{colour}" '
            f'stroke-dasharray="3 2"/><text x="{_n(px + dx)}" y="9" class="lab" '
            f'text-anchor="{anchor}" fill="{colour}">{_esc(text)}</text>'
        )
    parts.append(
        f'<text x="{left}" y="{height - 3}" class="lab">{lo:.3g}</text>'
        f'<text x="{left + pw}" y="{height - 3}" class="lab" text-anchor="end">{hi:.3g}</text>'
    )
    if lo < 0 < hi:
        parts.append(
            f'<text x="{_n(sx(0))}" y="{height - 3}" class="lab" text-anchor="middle">0</text>'
        )
    return (
        f'<svg class="chart hist" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{_esc(title)}">{"".join(parts)}</svg>'
    )


__all__ = ["POS_COLOUR", "hbars", "histogram"]
