"""Chart geometry for the page: plain dicts that ``templates/chart.svg.j2`` draws as SVG.

This is the report's one chart renderer. Each function returns a chart — ``{"css", "width",
"height", "title", "groups"}`` — whose groups hold primitives ``{"t": tag, "a": {attribute:
value}, "text": …}`` with coordinates already rounded, an optional ``href`` (the group becomes
a link) and ``tip`` (a hover title). Every string is plain text; the template escapes it.
The same chart is embedded in the page and written to ``figures/NAME.svg``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from factorlens.report.pixels import BAR_COLOUR, NEG_COLOUR, POS_COLOUR

Chart = dict[str, Any]
ACC_COLOUR = "#1a9850"  # reference accuracy in the checkpoint charts (green, hollow marks)


def number(value: float, digits: int = 1) -> str:
    """Format a number (an SVG coordinate, a percentage) without trailing zeros.

    At most ``digits`` decimals: ``12.0`` → ``12``, ``12.25`` → ``12.2``.
    """
    s = f"{float(value):.{digits}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def _clip(text: object, limit: int) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _el(tag: str, text: str | None = None, tip: str | None = None, **attrs: object) -> dict:
    """One SVG primitive; float attributes are rounded, ``css`` becomes ``class``."""
    a = {
        ("class" if k == "css" else k.replace("_", "-")): (number(v) if isinstance(v, float) else v)
        for k, v in attrs.items()
        if v is not None
    }
    return {"t": tag, "a": a, "text": text, "tip": tip}


def _chart(css: str, width: float, height: float, title: str, groups: list[dict]) -> Chart:
    return {
        "css": css,
        "width": number(width),
        "height": number(height),
        "title": title,
        "groups": groups,
    }


def hbars(
    values: Sequence[float] | np.ndarray,
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
    label_chars: int = 18,
) -> Chart:
    """Horizontal bars, one row per value (first on top), labels on the left.

    ``signed``: a centred zero line, red bars > 0, blue < 0. ``links``: per row an ``href``.
    ``marks``: per row a reference value drawn as a thin tick (e.g. a base rate). ``vmax``: the
    value of a full-length bar (default max |value|).
    """
    v = np.nan_to_num(np.asarray(values, dtype=np.float64).ravel())
    n = v.size
    top = float(np.max(np.abs(v))) if n else 0.0
    if marks is not None and n:
        top = max(top, float(np.max(np.abs(np.asarray(marks, dtype=float)))))
    full = vmax if vmax is not None and vmax > 0 else (top if top > 0 else 1.0)
    value_w = 44
    plot_w = max(20, width - label_width - value_w)
    zero = label_width + (plot_w / 2 if signed else 0)
    scale = (plot_w / 2 if signed else plot_w) / full
    height = row * n + 4
    groups = []
    for i in range(n):
        y = 2.0 + i * row
        x = float(v[i])
        w = min(abs(x) * scale, plot_w / 2 if signed else plot_w)
        x0 = zero - w if x < 0 else zero
        colour = (NEG_COLOUR if x < 0 else POS_COLOUR) if signed else BAR_COLOUR
        end = zero + w if x >= 0 or not signed else zero
        items = [
            _el(
                "rect",
                x=float(label_width),
                y=y,
                width=float(plot_w + value_w),
                height=row,
                css="hit",
            ),
            _el(
                "text",
                _clip(labels[i], label_chars),
                x=label_width - 4.0,
                y=y + row * 0.72,
                css="lab",
                text_anchor="end",
            ),
            _el("rect", x=float(x0), y=y + 2, width=float(w), height=row - 4, fill=colour),
        ]
        if marks is not None:
            mx = zero + float(marks[i]) * scale
            end = max(end, mx + 1)
            items.append(_el("line", x1=mx, x2=mx, y1=y + 1, y2=y + row - 1, css="mark"))
        items.append(_el("text", fmt.format(x), x=end + 3.0, y=y + row * 0.72, css="val"))
        tip = tooltips[i] if tooltips is not None else f"{labels[i]}: {fmt.format(x)}"
        href = links[i] if links is not None else None
        groups.append({"css": "row", "items": items, "tip": tip, "href": href})
    if n:
        axis = _el("line", x1=float(zero), x2=float(zero), y1=0, y2=height, css="axis")
        groups.append({"css": "axis", "items": [axis], "tip": None, "href": None})
    return _chart("hbars", width, height, title, groups)


def histogram(
    counts: Sequence[int] | np.ndarray,
    edges: Sequence[float] | np.ndarray,
    *,
    marks: Sequence[tuple[float, str, str]] = (),
    width: int = 300,
    height: int = 120,
    title: str = "",
) -> Chart:
    """Draw a histogram (bins as columns) with a zero line and vertical ``marks``.

    ``marks`` are (x, label, colour); each bin's tooltip gives its range and count.
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

    bins = []
    for i in range(c.size):
        x0, x1 = sx(e[i]), sx(e[i + 1])
        h = c[i] / cmax * ph
        tip = f"{e[i]:.3g} … {e[i + 1]:.3g}: {int(c[i])} inputs"
        bins.append(
            _el(
                "rect",
                tip=tip,
                x=x0,
                y=top + ph - h,
                width=max(x1 - x0 - 0.5, 0.5),
                height=float(h),
                fill=BAR_COLOUR,
            )
        )
    axes = [_el("line", x1=left, x2=left + pw, y1=top + ph, y2=top + ph, css="axis")]
    ticks = [
        _el("text", f"{lo:.3g}", x=left, y=height - 3, css="lab"),
        _el("text", f"{hi:.3g}", x=left + pw, y=height - 3, css="lab", text_anchor="end"),
    ]
    if lo < 0 < hi:
        axes.append(_el("line", x1=sx(0), x2=sx(0), y1=top, y2=top + ph, css="axis"))
        ticks.append(_el("text", "0", x=sx(0), y=height - 3, css="lab", text_anchor="middle"))
    for x, text, colour in marks:
        if not np.isfinite(x):
            continue
        px = sx(min(max(float(x), lo), hi))
        anchor = "end" if px > left + pw / 2 else "start"
        axes.append(
            _el(
                "line", x1=px, x2=px, y1=top - 2, y2=top + ph, stroke=colour, stroke_dasharray="3 2"
            )
        )
        ticks.append(
            _el(
                "text",
                text,
                x=px + (-2 if anchor == "end" else 2),
                y=9,
                css="lab",
                text_anchor=anchor,
                fill=colour,
            )
        )
    groups = [
        {"css": "bins", "items": bins, "tip": None, "href": None},
        {"css": "axis", "items": axes + ticks, "tip": None, "href": None},
    ]
    return _chart("hist", width, height, title, groups)


def _ticks(lo: float, hi: float, integer: bool) -> list[float]:
    if integer:
        lo, hi = np.floor(lo), np.ceil(hi)
    if hi <= lo:
        lo, hi = (lo - 1, hi + 1) if integer else (lo - 0.5, hi + 0.5)
    values = MaxNLocator(nbins=4, integer=integer).tick_values(lo, hi)
    return [float(t) for t in values if lo - 1e-9 <= t <= hi + 1e-9]


def points(
    xlabels: Sequence[str],
    series: Sequence[dict],
    *,
    integer: bool = False,
    mark: int | None = None,
    ylabel: str = "",
    width: int = 640,
    height: int = 150,
    title: str = "",
    links: Sequence[str | None] | None = None,
    show_x: bool = True,
    floor: float | None = None,
) -> Chart:
    """One panel of values at categorical x positions (checkpoints, ranks).

    ``series``: dicts ``{"name", "values" (None = missing), "colour", "hollow" (bool),
    "runs" (lists of x indices joined by a line; other points stand alone), "sd" (optional,
    per x a ± bar's half-height, None = none)}``. ``integer``:
    whole-number y ticks (ranks). ``mark``: an x index drawn as a dashed line (the chosen rank).
    ``links``: per x an ``href`` for its tick label. ``floor``: the axis stops there; a value
    below it is drawn on the bottom edge as a downward triangle whose tooltip gives the value
    (one CORCONDIA of −9e7 would otherwise flatten every other point).
    """
    k = len(xlabels)
    left, right, top = 44, 10, 22 if ylabel else 16  # the y label sits above the top tick
    bottom = 58 if show_x and max((len(str(t)) for t in xlabels), default=0) > 4 else 22
    pw, ph = max(40, width - left - right), height - top - bottom
    vals = [float(v) for s in series for v in s["values"] if v is not None and np.isfinite(v)]
    for s in series:  # the ± bars stay inside the axis
        for v, sd in zip(s["values"], s.get("sd") or [], strict=False):
            if v is not None and sd is not None and np.isfinite(v) and np.isfinite(sd):
                vals += [float(v) - float(sd), float(v) + float(sd)]
    if floor is not None and vals:
        vals = [max(v, floor) for v in vals]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    ticks = _ticks(lo, hi, integer)
    y0, y1 = min(ticks[0], lo), max(ticks[-1], hi)
    span = y1 - y0 if y1 > y0 else 1.0

    def sx(i: int) -> float:
        return left + (i + 0.5) * pw / max(k, 1)

    def sy(v: float) -> float:
        v = v if floor is None else max(v, floor)  # clipped: drawn on the floor
        return top + ph - (v - y0) / span * ph

    axis = [
        _el("line", x1=left, x2=left + pw, y1=top + ph, y2=top + ph, css="axis"),
        _el("line", x1=left, x2=left, y1=top, y2=top + ph, css="axis"),
    ]
    for t in ticks:
        text = f"{round(t)}" if integer else f"{t:.3g}"
        axis.append(_el("line", x1=left - 3, x2=left + pw, y1=sy(t), y2=sy(t), css="grid"))
        axis.append(_el("text", text, x=left - 5, y=sy(t) + 3, css="lab", text_anchor="end"))
    if ylabel:
        axis.append(_el("text", ylabel, x=2, y=top - 9, css="lab"))
    if mark is not None and 0 <= mark < k:
        axis.append(_el("line", x1=sx(mark), x2=sx(mark), y1=top, y2=top + ph, css="chosen"))
    groups = [{"css": "axis", "items": axis, "tip": None, "href": None}]
    if show_x:
        for i, xlabel in enumerate(xlabels):
            label = _el(
                "text",
                _clip(xlabel, 14),
                x=sx(i),
                y=top + ph + 12,
                css="lab",
                text_anchor="end" if bottom > 22 else "middle",
                transform=f"rotate(-35 {number(sx(i))} {number(top + ph + 12)})"
                if bottom > 22
                else None,
            )
            href = links[i] if links is not None else None
            groups.append({"css": "xtick", "items": [label], "tip": str(xlabel), "href": href})
    for s in series:
        v = s["values"]
        items = []
        for run in s.get("runs") or []:
            pts = [(sx(i), sy(float(v[i]))) for i in run if v[i] is not None and np.isfinite(v[i])]
            if len(pts) >= 2:
                d = "M" + " L".join(f"{number(x)} {number(y)}" for x, y in pts)
                items.append(_el("path", d=d, fill="none", stroke=s["colour"], css="run"))
        sds = list(s.get("sd") or [])
        for i, value in enumerate(v):
            if value is None or not np.isfinite(value):
                continue
            fill = "#ffffff" if s.get("hollow") else s["colour"]
            tip = f"{xlabels[i]}: {s['name']} {value:.4g}"
            sd = sds[i] if i < len(sds) else None
            if sd is not None and np.isfinite(sd) and sd > 0:
                tip += f" ± {sd:.2g}"
                y_lo, y_hi = sy(float(value) - float(sd)), sy(float(value) + float(sd))
                items.append(
                    _el("line", x1=sx(i), x2=sx(i), y1=y_lo, y2=y_hi, stroke=s["colour"], css="sd")
                )
            if floor is not None and value < floor:  # off the axis: a triangle on its floor
                x, y = sx(i), sy(floor)
                d = f"M{number(x - 4)} {number(y - 5)} L{number(x + 4)} {number(y - 5)} L{number(x)} {number(y + 2)} Z"
                items.append(
                    _el("path", tip=f"{tip} (below the axis)", d=d, fill=fill, stroke=s["colour"])
                )
                continue
            items.append(
                _el(
                    "circle",
                    tip=tip,
                    cx=sx(i),
                    cy=sy(float(value)),
                    r=3.5,
                    fill=fill,
                    stroke=s["colour"],
                )
            )
        groups.append({"css": "series", "items": items, "tip": None, "href": None})
    return _chart("points", width, height, title, groups)


def stack(panels: Sequence[Chart], title: str) -> Chart:
    """One chart of ``panels`` drawn one below the other (each with its own y axis)."""
    groups, top = [], 0.0
    for panel in panels:
        for g in panel["groups"]:
            groups.append({**g, "transform": f"translate(0 {number(top)})" if top else None})
        top += float(panel["height"])
    width = max(float(p["width"]) for p in panels)
    return _chart("points", width, top, title, groups)


def legend(series: Sequence[dict]) -> list[dict]:
    """Return the series of a :func:`points` chart as ``{"name", "colour", "hollow"}`` entries."""
    return [
        {"name": s["name"], "colour": s["colour"], "hollow": bool(s.get("hollow"))} for s in series
    ]
