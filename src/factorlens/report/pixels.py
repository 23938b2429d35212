"""Pixel images for the report: test inputs, patterns, maps and their colour scales.

Everything here returns uint8 pixel arrays or PNG bytes, coloured with NumPy and encoded with
Pillow (fast enough for thousands of thumbnails). Charts are not drawn here: the page's charts
are SVG templates (:mod:`factorlens.report.charts`), the notebook plots matplotlib
(:mod:`factorlens.report.plots`).

Display conventions: a test input is scaled to its own min..max (grey, or RGB for 3 channels);
a pattern (a signed, unit-norm component) uses the diverging ``RdBu_r`` map centred at 0 and
scaled to ±max|pattern| (red > 0 > blue, white = 0); a magnitude map uses ``magma_r``
(light = 0, dark = large).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex
from PIL import Image

THUMB_SIDE = 96  # largest side (px) of an embedded thumbnail; larger inputs are shrunk
THUMB_DISPLAY = 84  # small thumbnails are enlarged to about this side (pixelated) on the page
PATTERN_SIDE = 140  # pattern / mean images are enlarged by a whole factor to about this side
PATTERN_MAX = 192  # ... and shrunk to at most this side
STRIP_WIDTH = 320  # 1-D inputs and patterns are drawn as a strip this wide ...
STRIP_HEIGHT = 14  # ... and this high
MAX_TILED_CHANNELS = 4  # patterns with C != 3 channels: one tile per channel up to this many
_DIVERGING = colormaps["RdBu_r"]
_SHADE = colormaps["Blues"]
_SEQUENTIAL = colormaps["magma_r"]
POS_COLOUR = "#c0392b"  # positive weights / loadings (red, as in RdBu_r)
NEG_COLOUR = "#2f6db5"  # negative ones (blue)
BAR_COLOUR = "#3182bd"  # strengths (>= 0)


# --------------------------------------------------------------------------- selection
def top_indices(loadings: np.ndarray, k: int) -> np.ndarray:
    """Return the indices of the ``k`` largest entries of ``loadings``, largest first.

    Parameters
    ----------
    loadings : numpy.ndarray
        ``(N,)`` values (a column of the sample factor, say).
    k : int
        How many indices.

    Returns
    -------
    numpy.ndarray
        ``min(k, N)`` int64 indices; ties keep the lower index first, NaNs come last.

    Examples
    --------
    >>> import numpy as np
    >>> from factorlens.report.pixels import top_indices
    >>> top_indices(np.array([0.1, 0.9, np.nan, 0.9, -0.3]), 3)
    array([1, 3, 0])
    """
    x = np.asarray(loadings, dtype=np.float64).ravel()
    k = max(0, min(int(k), x.size))
    # -x: NaN stays NaN and argsort puts it last; "stable" keeps ties in index order
    return np.argsort(-x, kind="stable")[:k].astype(np.int64)


def bottom_indices(loadings: np.ndarray, k: int) -> np.ndarray:
    """Return the indices of the ``k`` smallest entries of ``loadings``, smallest first.

    Parameters
    ----------
    loadings : numpy.ndarray
        ``(N,)`` values.
    k : int
        How many indices.

    Returns
    -------
    numpy.ndarray
        ``min(k, N)`` int64 indices; ties keep the lower index first, NaNs come last.

    Examples
    --------
    >>> import numpy as np
    >>> from factorlens.report.pixels import bottom_indices
    >>> bottom_indices(np.array([0.1, 0.9, np.nan, 0.9, -0.3]), 2)
    array([4, 0])
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
    """Return a test input (or a mean of inputs) as uint8 pixels scaled to its own range.

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
    """Return an input pattern as RGB pixels: ``(pixels (h, w, 3) uint8, vmax, signed)``.

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
    """Stretch a (1, D[, 3]) row into a ``height``-px strip about ``width`` px wide."""
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
    # level 1: a report of 105 layers encodes thousands of small images; level 6 took 3× as
    # long for files a few percent smaller
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def shade(value: float, vmax: float) -> tuple[str, str]:
    """Background and text colour (hex) for a table cell, on the flow heatmap's colour scale."""
    t = 0.0 if vmax <= 0 or not np.isfinite(value) else float(np.clip(abs(value) / vmax, 0, 1))
    return to_hex(_SHADE(t)), ("#ffffff" if t > 0.55 else "#111111")


def uri(data: bytes) -> str:
    """Return a ``data:image/png;base64,…`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
