"""PNG figures for the report.

Two kinds of figure, both returned as PNG bytes (the caller writes them and embeds them):

* pixel images (input patterns, test inputs, means) are coloured with NumPy and encoded with
  Pillow — fast enough for thousands of thumbnails;
* charts (block fits, the flow heatmap, per-component strengths, 1-D patterns) are drawn with
  matplotlib's Agg canvas on ``matplotlib.figure.Figure`` objects that never enter pyplot's
  global figure registry (so nothing needs closing and the user's backend is left alone).
  Charts drawn once per component reuse one figure and only update its data.

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


# --------------------------------------------------------------------------- selection
def top_indices(loadings: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of ``loadings`` (N,), largest first.

    Returns ``min(k, N)`` int64 indices; ties keep the lower index first, NaNs come last.
    """
    x = np.asarray(loadings, dtype=np.float64).ravel()
    k = max(0, min(int(k), x.size))
    # -x: NaN stays NaN and argsort puts it last; "stable" keeps ties in index order
    return np.argsort(-x, kind="stable")[:k].astype(np.int64)


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
    fig = _figure(1.7 + 0.8 * b, 0.9 + 0.24 * r)
    ax = fig.add_subplot()
    im = ax.imshow(flow, aspect="auto", cmap=_SHADE, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_xticks(np.arange(b), [label(s, 20) for s in names], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(np.arange(r), [f"C{i + 1}" for i in range(r)], fontsize=7 if r > 12 else 8)
    ax.set_xlabel("block (network order)", fontsize=8)
    ax.set_ylabel("component", fontsize=8)
    if r * b <= 400:
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


class StrengthChart:
    """Bar chart of one component's strength in each block; one figure reused for every row.

    All rows share the y scale [0, 1.15·vmax] so bar heights compare across components.
    """

    def __init__(self, names: Sequence[str], vmax: float) -> None:
        b = len(names)
        self.fig = _figure(1.3 + 0.42 * b, 2.1)
        ax = self.fig.add_subplot()
        x = np.arange(b)
        self.bars = ax.bar(x, np.zeros(b), color="#3182bd", width=0.7)
        self.texts = [ax.text(i, 0.0, "", ha="center", va="bottom", fontsize=6.5) for i in x]
        ax.set_xticks(x, [label(s, 18) for s in names], rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel("strength", fontsize=8)
        ax.set_ylim(0.0, 1.15 * vmax if vmax > 0 else 1.0)
        ax.spines[["top", "right"]].set_visible(False)
        self.ax = ax

    def render(self, values: np.ndarray, title: str) -> bytes:
        """PNG of the bars for ``values`` (B,)."""
        values = _finite(values)
        for bar, text, v in zip(self.bars, self.texts, values, strict=True):
            bar.set_height(max(v, 0.0))
            text.set_y(max(v, 0.0))
            text.set_text(f"{v:.2f}")
        self.ax.set_title(label(title, 40), fontsize=8)
        return _save(self.fig)


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
        return _save(self.fig)
