"""PNG figures for the report.

Two kinds of figure, both returned as PNG bytes (the caller writes them and embeds them):

* pixel images (input patterns, test inputs, means) are coloured with NumPy and encoded with
  Pillow — fast enough for thousands of thumbnails;
* charts (block fits, the flow heatmap, rank evidence, per-component strengths, loading
  histograms, a layer's top channels / units, 1-D patterns, checkpoint comparisons) are drawn
  with matplotlib's Agg canvas on ``matplotlib.figure.Figure`` objects that never enter pyplot's
  global figure registry (so nothing needs closing and the user's backend is left alone).
  Charts drawn once per component (or per component and layer) reuse one figure laid out once;
  most are blitted: the static background is drawn once and each render redraws only the
  artists that change, so hundreds of them stay fast.

Display conventions: a test input is scaled to its own min..max (grey, or RGB for 3 channels);
a pattern (a signed, unit-norm component) uses the diverging ``RdBu_r`` map centred at 0 and
scaled to ±max|pattern| (red > 0 > blue, white = 0).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory
from PIL import Image

DPI = 90
THUMB_SIDE = 96  # largest side (px) of an embedded thumbnail; larger inputs are shrunk
THUMB_DISPLAY = 84  # small thumbnails are enlarged to about this side (pixelated) on the page
PATTERN_SIDE = 140  # pattern / mean images are enlarged by a whole factor to about this side
PATTERN_MAX = 192  # ... and shrunk to at most this side
STRIP_WIDTH = 320  # 1-D inputs and patterns are drawn as a strip this wide ...
STRIP_HEIGHT = 14  # ... and this high
MAX_TILED_CHANNELS = 4  # patterns with C != 3 channels: one tile per channel up to this many
_PNG_META = {"Software": None}  # keep PNGs free of the default "https://matplotlib.org" text
_DIVERGING = colormaps["RdBu_r"]
_SHADE = colormaps["Blues"]
_SEQUENTIAL = colormaps["magma_r"]
POS_COLOUR = "#c0392b"  # positive weights / loadings (red, as in RdBu_r)
NEG_COLOUR = "#2f6db5"  # negative ones (blue)
BAR_COLOUR = "#3182bd"  # strengths (>= 0)


# --------------------------------------------------------------------------- selection
def top_indices(loadings: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of ``loadings`` (N,), largest first.

    Returns ``min(k, N)`` int64 indices; ties keep the lower index first, NaNs come last.
    """
    x = np.asarray(loadings, dtype=np.float64).ravel()
    k = max(0, min(int(k), x.size))
    # -x: NaN stays NaN and argsort puts it last; "stable" keeps ties in index order
    return np.argsort(-x, kind="stable")[:k].astype(np.int64)


def bottom_indices(loadings: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest entries of ``loadings`` (N,), smallest first.

    Returns ``min(k, N)`` int64 indices; ties keep the lower index first, NaNs come last.
    """
    x = np.asarray(loadings, dtype=np.float64).ravel()
    k = max(0, min(int(k), x.size))
    # argsort puts NaN last; "stable" keeps ties in index order
    return np.argsort(x, kind="stable")[:k].astype(np.int64)


# --------------------------------------------------------------------------- pixel images
def sample_kind(sample_shape: Sequence[int]) -> str:
    """How to show a sample of shape ``sample_shape``: "gray", "rgb", "channels" or "vector".

    (H, W) -> gray; (3, H, W) -> rgb; (C, H, W) with C != 3 -> channels; anything else -> vector.
    """
    shape = tuple(sample_shape)
    if len(shape) == 2:
        return "gray"
    if len(shape) == 3:
        return "rgb" if shape[0] == 3 else "channels"
    return "vector"


def _finite(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def _unit(x: np.ndarray) -> np.ndarray:
    """Scale ``x`` to [0, 1] by its own min..max (constant -> 0.5)."""
    if x.size == 0:
        return np.full(x.shape, 0.5)
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1.0):
        return np.full(x.shape, 0.5)
    return (x - lo) / (hi - lo)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def data_to_pixels(x: np.ndarray, kind: str) -> np.ndarray:
    """A test input (or a mean of inputs) as uint8 pixels scaled to its own range.

    ``x``: one sample, (H, W) / (3, H, W) / (C, H, W) / (D,). Returns (H, W) grey, (H, W, 3) RGB,
    or (1, D) grey for a vector. Inputs with C != 3 channels are shown as their channel mean.
    """
    x = _finite(x)
    if kind == "gray":
        return _u8(_unit(x))
    if kind == "rgb":
        return _u8(_unit(x)).transpose(1, 2, 0).copy()
    if kind == "channels":
        return _u8(_unit(x.mean(axis=0)))
    return _u8(_unit(x.ravel()))[None, :]


def _diverging(x: np.ndarray, vmax: float) -> np.ndarray:
    """(…) values -> (…, 3) uint8 through RdBu_r with 0 at the centre and ±vmax at the ends."""
    t = 0.5 + 0.5 * x / vmax
    return _u8(_DIVERGING(np.clip(t, 0.0, 1.0))[..., :3])


def magnitude_to_pixels(x: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Non-negative values (…) -> (…, 3) uint8 through a sequential map, 0 light, vmax dark."""
    x = _finite(x)
    vmax = float(np.max(np.abs(x))) if vmax is None and x.size else (vmax or 0.0)
    vmax = vmax if vmax > 0 else 1.0
    return _u8(_SEQUENTIAL(np.clip(np.abs(x) / vmax, 0.0, 1.0))[..., :3])


def signed_to_pixels(x: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Signed values (…) -> (…, 3) uint8 through RdBu_r centred at 0 (±vmax, default max|x|)."""
    x = _finite(x)
    vmax = float(np.max(np.abs(x))) if vmax is None and x.size else (vmax or 0.0)
    return _diverging(x, vmax if vmax > 0 else 1.0)


def pattern_to_pixels(x: np.ndarray, kind: str) -> tuple[np.ndarray, float, bool]:
    """An input pattern as RGB pixels; returns ``(pixels (h, w, 3) uint8, vmax, signed)``.

    Grey and vector patterns use RdBu_r centred at 0 over ±vmax = max|x|. RGB patterns are shown
    as colour: signed ones as 0.5 + 0.5·x/vmax (mid-grey = 0), non-negative ones as x/vmax.
    C != 3 channels: one diverging tile per channel (up to 4 channels, shared scale, side by
    side), else the channel mean. A vector (D,) gives a (1, D, 3) strip.
    """
    x = _finite(x)
    vmax = float(np.max(np.abs(x))) if x.size else 0.0
    signed = bool(x.size and float(np.min(x)) < -1e-9 * max(vmax, 1e-300))
    vmax = vmax if vmax > 0 else 1.0
    if kind == "gray":
        return _diverging(x, vmax), vmax, signed
    if kind == "rgb":
        rgb = 0.5 + 0.5 * x / vmax if signed else x / vmax
        return _u8(np.clip(rgb, 0.0, 1.0)).transpose(1, 2, 0).copy(), vmax, signed
    if kind == "channels":
        if x.shape[0] > MAX_TILED_CHANNELS:
            m = x.mean(axis=0)
            vm = float(np.max(np.abs(m))) or 1.0
            return _diverging(m, vm), vm, signed
        tiles = [_diverging(c, vmax) for c in x]
        return grid(tiles, ncols=len(tiles), gap=2), vmax, signed
    return _diverging(x.ravel(), vmax)[None, :, :], vmax, signed


def _resize(pixels: np.ndarray, width: int, height: int, *, smooth: bool) -> np.ndarray:
    img = Image.fromarray(pixels)
    method = Image.Resampling.BOX if smooth else Image.Resampling.NEAREST
    return np.asarray(img.resize((max(1, width), max(1, height)), method))


def enlarge(
    pixels: np.ndarray, side: int = PATTERN_SIDE, max_side: int = PATTERN_MAX
) -> np.ndarray:
    """Enlarge by a whole factor (nearest) to about ``side`` px, or shrink to ``max_side``."""
    h, w = pixels.shape[:2]
    big = max(h, w)
    if big > max_side:
        f = max_side / big
        return _resize(pixels, round(w * f), round(h * f), smooth=True)
    s = max(1, side // big)
    return pixels if s == 1 else np.repeat(np.repeat(pixels, s, axis=0), s, axis=1)


def shrink(pixels: np.ndarray, max_side: int = THUMB_SIDE) -> np.ndarray:
    """Shrink (box filter) so the largest side is at most ``max_side``; never enlarges."""
    h, w = pixels.shape[:2]
    big = max(h, w)
    if big <= max_side:
        return pixels
    f = max_side / big
    return _resize(pixels, round(w * f), round(h * f), smooth=True)


def strip(pixels: np.ndarray, width: int = STRIP_WIDTH, height: int = STRIP_HEIGHT) -> np.ndarray:
    """A (1, D[, 3]) row as a ``height``-px strip about ``width`` px wide."""
    d = pixels.shape[1]
    if d <= width:
        row = np.repeat(pixels, max(1, width // d), axis=1)
    else:
        row = _resize(pixels, width, 1, smooth=True)
    return np.repeat(row, height, axis=0)


def grid(tiles: Sequence[np.ndarray], ncols: int, gap: int = 2) -> np.ndarray:
    """Tiles (same size; grey and RGB may mix) in rows of ``ncols`` on a white background."""
    if not tiles:
        raise ValueError("grid needs at least one tile")
    rgb = any(t.ndim == 3 for t in tiles)
    tiles = [np.repeat(t[..., None], 3, axis=2) if rgb and t.ndim == 2 else t for t in tiles]
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    ncols = max(1, min(ncols, len(tiles)))
    nrows = -(-len(tiles) // ncols)
    shape = (nrows * h + (nrows - 1) * gap, ncols * w + (ncols - 1) * gap) + ((3,) if rgb else ())
    out = np.full(shape, 255, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = r * (h + gap), c * (w + gap)
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def png(pixels: np.ndarray) -> bytes:
    """Encode uint8 (h, w) grey or (h, w, 3) RGB pixels as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def shade(value: float, vmax: float) -> tuple[str, str]:
    """Background and text colour (hex) for a table cell, on the flow heatmap's colour scale."""
    t = 0.0 if vmax <= 0 or not np.isfinite(value) else float(np.clip(abs(value) / vmax, 0, 1))
    return to_hex(_SHADE(t)), ("#ffffff" if t > 0.55 else "#111111")


# --------------------------------------------------------------------------- charts
def label(text: object, limit: int = 28) -> str:
    """Plain text for a matplotlib label: shortened, with ``$`` kept literal (no mathtext)."""
    s = str(text)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.05, metadata=_PNG_META
    )
    return buf.getvalue()


def _save_fixed(fig: Figure) -> bytes:
    """PNG of a figure whose layout was fixed once (``tight_layout`` at construction): one
    draw per save instead of the two that ``bbox_inches="tight"`` costs."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_META)
    return buf.getvalue()


def fit_chart(names: Sequence[str], fits: Sequence[float]) -> bytes:
    """Horizontal bars: fit (%) of each block, blocks top to bottom in network order."""
    n = len(names)
    fig = _figure(4.8, 0.55 + 0.28 * n)
    ax = fig.add_subplot()
    vals = [100.0 * f if np.isfinite(f) else 0.0 for f in fits]
    y = np.arange(n)
    bars = ax.barh(y, vals, color="#3182bd", height=0.65)
    ax.bar_label(bars, labels=[f"{v:.1f}%" for v in vals], padding=2, fontsize=7)
    ax.set_yticks(y, [label(s) for s in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel("fit (% of the block explained)", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig)


def flow_heatmap(flow: np.ndarray, names: Sequence[str]) -> bytes:
    """Components × blocks heatmap of the strengths ``flow`` (R, B); rows C1..CR."""
    flow = _finite(flow)
    r, b = flow.shape
    vmax = float(flow.max()) if flow.size and flow.max() > 0 else 1.0
    fig = _figure(1.7 + 0.8 * b, 0.9 + (0.24 if r <= 40 else 0.1) * r)
    ax = fig.add_subplot()
    im = ax.imshow(flow, aspect="auto", cmap=_SHADE, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_xticks(np.arange(b), [label(s, 20) for s in names], rotation=30, ha="right", fontsize=8)
    step = 1 if r <= 40 else 5
    ticks = np.arange(0, r, step)
    ax.set_yticks(ticks, [f"C{i + 1}" for i in ticks], fontsize=7 if r > 12 else 8)
    ax.set_xlabel("block (network order)", fontsize=8)
    ax.set_ylabel("component", fontsize=8)
    if r <= 30 and r * b <= 400:
        for i in range(r):
            for j in range(b):
                v = flow[i, j]
                ax.text(
                    j,
                    i,
                    f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if v / vmax > 0.55 else "#111111",
                )
    cb = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("strength", fontsize=8)
    return _save(fig)


class _Blitted:
    """A chart drawn in full once; each render restores that background and draws only the
    artists that change (``animated=True``) — a few ms instead of a full Agg draw."""

    fig: Figure

    def _freeze(self) -> None:
        self.fig.set_layout_engine(None)
        canvas = self.fig.canvas
        canvas.draw()
        self._background = canvas.copy_from_bbox(self.fig.bbox)

    def _png(self, artists: Sequence) -> bytes:
        canvas = self.fig.canvas
        canvas.restore_region(self._background)
        for a in artists:
            self.fig.draw_artist(a)
        rgba = np.asarray(canvas.buffer_rgba())
        return png(np.ascontiguousarray(rgba[..., :3]))


class StrengthChart(_Blitted):
    """Bar chart of one component's strength in each block; one figure reused for every row.

    All rows share the y scale [0, 1.15·vmax] so bar heights compare across components.
    """

    def __init__(self, names: Sequence[str], vmax: float) -> None:
        b = len(names)
        self.fig = _figure(1.3 + 0.42 * b, 2.1)
        ax = self.fig.add_subplot()
        x = np.arange(b)
        self.bars = list(ax.bar(x, np.zeros(b), color=BAR_COLOUR, width=0.7))
        self.texts = [ax.text(i, 0.0, "", ha="center", va="bottom", fontsize=6.5) for i in x]
        ax.set_xticks(x, [label(s, 18) for s in names], rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("strength", fontsize=8)
        self.top = 1.15 * vmax if vmax > 0 else 1.0
        ax.set_ylim(0.0, self.top)
        ax.spines[["top", "right"]].set_visible(False)
        self.title = ax.set_title("C000 strength per block", fontsize=8)
        self.fig.tight_layout(pad=0.3)  # the labels never change: lay out once
        for a in (*self.bars, *self.texts, self.title):
            a.set_animated(True)
        self.ax = ax
        self._freeze()

    def render(self, values: np.ndarray, title: str) -> bytes:
        """PNG of the bars for ``values`` (B,)."""
        values = _finite(values)
        for bar, text, v in zip(self.bars, self.texts, values, strict=True):
            h = min(max(v, 0.0), self.top)
            bar.set_height(h)
            text.set_y(h)
            text.set_text(f"{v:.2f}")
        self.title.set_text(label(title, 40))
        return self._png([*self.bars, *self.texts, self.title])


class LinePlot:
    """Line plot of a 1-D pattern or mean (D,), optionally over a dashed reference line.

    One figure reused for every component.
    """

    def __init__(self, d: int, ylabel: str) -> None:
        self.fig = _figure(4.6, 1.7)
        ax = self.fig.add_subplot()
        x = np.arange(d)
        (self.ref,) = ax.plot(x, np.zeros(d), color="#999999", lw=0.9, ls="--")
        (self.line,) = ax.plot(x, np.zeros(d), color="#c0392b", lw=1.1)
        ax.axhline(0.0, color="#444444", lw=0.6)
        ax.set_xlim(-0.5, d - 0.5)
        ax.set_xlabel("input feature", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_ylim(-0.55555, 0.55555)  # tick labels about as wide as any later ones
        ax.set_title("W" * 30, fontsize=8)
        self.fig.tight_layout(pad=0.3)
        self.fig.set_layout_engine(None)  # laid out once: one draw per save
        self.ax = ax

    def render(self, y: np.ndarray, ref: np.ndarray | None = None, title: str = "") -> bytes:
        """PNG of ``y`` (D,) and, if given, ``ref`` (D,) dashed."""
        y = _finite(y).ravel()
        self.line.set_ydata(y)
        both = y
        if ref is not None:
            r = _finite(ref).ravel()
            self.ref.set_ydata(r)
            both = np.concatenate([y, r])
        self.ref.set_visible(ref is not None)
        lo, hi = float(min(both.min(), 0.0)), float(max(both.max(), 0.0))
        pad = 0.08 * (hi - lo) if hi > lo else 1.0
        self.ax.set_ylim(lo - pad, hi + pad)
        self.ax.set_title(label(title, 50), fontsize=8)
        return _save_fixed(self.fig)


class HBarChart(_Blitted):
    """Horizontal bars, one row per item (top row first), reused for every component.

    Used for a layer's top channels (strengths >= 0) and top units (signed weights: red > 0,
    blue < 0). Rows and the x range (``vmax``: the same for every component of a layer, so
    bars compare) are fixed; labels, values and the title change per render.
    """

    def __init__(
        self, rows: int, xlabel: str, *, signed: bool, vmax: float = 1.0, label_chars: int = 10
    ) -> None:
        self.rows = max(1, int(rows))
        self.signed = signed
        self.vmax = 1.05 * vmax if vmax > 0 else 1.0
        self.fig = _figure(3.6, 0.75 + 0.2 * self.rows)
        ax = self.fig.add_subplot()
        y = np.arange(self.rows)
        self.bars = list(ax.barh(y, np.zeros(self.rows), color=BAR_COLOUR, height=0.7))
        ax.set_ylim(self.rows - 0.5, -0.5)
        ax.set_yticks(y, ["W" * label_chars] * self.rows, fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_xlim(-self.vmax if signed else 0.0, self.vmax)
        if signed:
            ax.axvline(0.0, color="#444444", lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
        self.title = ax.set_title("W" * 30, fontsize=8)
        self.fig.tight_layout(pad=0.3)  # room for the longest labels, then draw them per render
        ax.set_yticks(y, [""] * self.rows)
        to_label = blended_transform_factory(ax.transAxes, ax.transData)
        self.labels = [
            ax.text(-0.03, yi, "", transform=to_label, ha="right", va="center", fontsize=7)
            for yi in y
        ]
        for a in (*self.bars, *self.labels, self.title):
            a.set_animated(True)
        self.ax = ax
        self._freeze()

    def render(self, values: np.ndarray, labels: Sequence[str], title: str = "") -> bytes:
        """PNG of ``values`` (at most ``rows``) labelled ``labels``, first value on top."""
        v = _finite(values).ravel()[: self.rows]
        n = v.size
        for i, bar in enumerate(self.bars):
            w = float(np.clip(v[i], -self.vmax, self.vmax)) if i < n else 0.0
            bar.set_width(w)
            bar.set_color(NEG_COLOUR if w < 0 else (POS_COLOUR if self.signed else BAR_COLOUR))
            self.labels[i].set_text(label(labels[i], 18) if i < n and i < len(labels) else "")
        self.title.set_text(label(title, 50))
        return self._png([*self.bars, *self.labels, self.title])


class LoadingHistogram(_Blitted):
    """Histogram of one component's loadings (a column of A), with the top-k / bottom-k
    thresholds marked; one figure reused for every component.

    Each component gets its own range: the axes are fixed to [0, 1] and every render maps its
    bins there and writes its own axis labels (min, 0, max; the busiest bin's count), so only
    the changing artists are redrawn.
    """

    def __init__(self) -> None:
        self.fig = _figure(3.6, 1.9)
        ax = self.fig.add_subplot()
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(0.0, 1.12)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("loading", fontsize=8, labelpad=11)
        ax.set_ylabel("inputs", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        handles = [
            Line2D([], [], color=POS_COLOUR, lw=1.0, ls="--", label="top-k threshold"),
            Line2D([], [], color=NEG_COLOUR, lw=1.0, ls="--", label="bottom-k threshold"),
        ]
        ax.legend(handles=handles, fontsize=6, frameon=False, loc="upper right")
        self.title = ax.set_title("W" * 30, fontsize=8)
        self.fig.tight_layout(pad=0.3)
        self.stairs = ax.stairs(np.zeros(1), np.array([0.0, 1.0]), fill=True, color=BAR_COLOUR)
        self.zero = ax.axvline(0.0, color="#444444", lw=0.6)
        self.top = ax.axvline(0.0, color=POS_COLOUR, lw=1.0, ls="--")
        self.bottom = ax.axvline(0.0, color=NEG_COLOUR, lw=1.0, ls="--")
        below = blended_transform_factory(ax.transData, ax.transAxes)
        self.ticks = [
            ax.text(x, -0.03, "", transform=below, ha=ha, va="top", fontsize=7)
            for x, ha in ((0.0, "left"), (0.5, "center"), (1.0, "right"))
        ]
        self.peak = ax.text(0.01, 1.0, "", transform=ax.transAxes, va="top", fontsize=6.5)
        self.artists = [
            self.stairs,
            self.zero,
            self.top,
            self.bottom,
            *self.ticks,
            self.peak,
            self.title,
        ]
        for a in self.artists:
            a.set_animated(True)
        self.ax = ax
        self._freeze()

    def render(
        self, counts: np.ndarray, edges: np.ndarray, top: float, bottom: float, title: str = ""
    ) -> bytes:
        counts = _finite(counts)
        edges = _finite(edges)
        lo, hi = float(edges[0]), float(edges[-1])
        span = hi - lo if hi > lo else 1.0

        def x(v: float) -> float:
            return float(np.clip((v - lo) / span, 0.0, 1.0))

        peak = float(counts.max()) if counts.size else 0.0
        self.stairs.set_data(counts / max(peak, 1.0), (edges - lo) / span)
        self.top.set_xdata([x(top)] * 2)
        self.bottom.set_xdata([x(bottom)] * 2)
        self.zero.set_xdata([x(0.0)] * 2)
        self.zero.set_visible(lo < 0 < hi)
        self.ticks[0].set_text(f"{lo:.3g}")
        self.ticks[2].set_text(f"{hi:.3g}")
        middle = lo < 0 < hi and 0.15 < x(0.0) < 0.85
        self.ticks[1].set_position((x(0.0), -0.03))
        self.ticks[1].set_text("0" if middle else "")
        self.peak.set_text(f"busiest bin: {int(peak)}")
        self.title.set_text(label(title, 50))
        return self._png(self.artists)


def rank_scan_chart(
    ranks: Sequence[float], criteria: dict[str, Sequence[float]], chosen: float | None
) -> bytes:
    """One panel per criterion (its value against the rank R), the chosen rank marked."""
    names = list(criteria)
    n = max(1, len(names))
    fig = _figure(4.6, 0.5 + 1.45 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    x = np.asarray(ranks, dtype=np.float64)
    for ax, name in zip(axes, names, strict=False):
        y = np.asarray(criteria[name], dtype=np.float64)
        ax.plot(x, y, marker="o", ms=3.5, lw=1.2, color=BAR_COLOUR)
        if chosen is not None:
            ax.axvline(float(chosen), color=POS_COLOUR, lw=1.0, ls="--")
            hit = np.flatnonzero(x == float(chosen))
            if hit.size and np.isfinite(y[hit[0]]):
                ax.plot([x[hit[0]]], [y[hit[0]]], marker="o", ms=7, mfc="none", color=POS_COLOUR)
        ax.set_ylabel(label(name, 22), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel("rank R", fontsize=8)
    if len(x) <= 30:
        axes[-1].set_xticks(x)
    if chosen is not None:
        axes[0].set_title(f"chosen rank R = {label(chosen)}", fontsize=8)
    return _save(fig)


def checkpoint_chart(
    labels: Sequence[str], ranks: Sequence[int], scores: Sequence[float] | None
) -> bytes:
    """Rank (and, when given, the quality score) of each checkpoint, in the order given."""
    n = 2 if scores is not None else 1
    fig = _figure(1.8 + 0.5 * len(labels), 0.9 + 1.3 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(labels))
    axes[0].plot(x, np.asarray(ranks, dtype=float), marker="o", ms=4, color=BAR_COLOUR)
    axes[0].set_ylabel("rank R", fontsize=8)
    axes[0].set_ylim(min(ranks) - 0.5, max(ranks) + 0.5)  # integer ticks even when all equal
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    if scores is not None:
        axes[1].plot(x, np.asarray(scores, dtype=float), marker="o", ms=4, color=POS_COLOUR)
        axes[1].set_ylabel("score", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xticks(x, [label(t, 16) for t in labels], rotation=30, ha="right", fontsize=7)
    axes[-1].set_xlabel("checkpoint", fontsize=8)
    return _save(fig)


def congruence_chart(
    mats: Sequence[np.ndarray], titles: Sequence[str], matches: Sequence[np.ndarray]
) -> bytes:
    """|congruence| heatmaps of consecutive checkpoints' sample factors, matched pairs boxed.

    ``mats[i]`` is (R_prev, R_next); ``matches[i][k]`` the previous component matched to next
    component k (-1: none).
    """
    n = len(mats)
    fig = _figure(0.6 + 3.0 * n, 3.2)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, m, t, match in zip(axes, mats, titles, matches, strict=True):
        c = np.abs(_finite(m))
        im = ax.imshow(c, cmap=_SHADE, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        for k, j in enumerate(np.asarray(match)):
            if j >= 0:
                ax.add_patch(Rectangle((k - 0.5, j - 0.5), 1, 1, fill=False, ec=POS_COLOUR, lw=1.0))
        rp, rn = c.shape
        ax.set_xlabel("component (later)", fontsize=7)
        ax.set_ylabel("component (earlier)", fontsize=7)
        sx = 1 if rn <= 20 else 5
        sy = 1 if rp <= 20 else 5
        ax.set_xticks(np.arange(0, rn, sx), [str(i + 1) for i in range(0, rn, sx)], fontsize=6)
        ax.set_yticks(np.arange(0, rp, sy), [str(i + 1) for i in range(0, rp, sy)], fontsize=6)
        ax.set_title("\n".join(label(part, 32) for part in t.split("\n")), fontsize=7)
    cb = fig.colorbar(im, ax=list(axes), fraction=0.03, pad=0.02)
    cb.ax.tick_params(labelsize=7)
    cb.set_label("|congruence| of A columns", fontsize=7)
    return _save(fig)
