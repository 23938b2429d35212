"""Matplotlib figures of a fitted result, for notebooks and scripts.

Every function follows tlviz's style: it takes the data and an optional ``ax`` (default: the
current Axes, :func:`matplotlib.pyplot.gca`), draws on it and returns the Axes, so figures can
be composed with ``plt.subplots`` and restyled afterwards. Nothing is written to disk.

Colours are colour-blind safe: strengths use the sequential ``Blues`` map (as the HTML report
does), signed values the two ends of the diverging ``RdBu_r`` map, and series that share an
Axes differ in marker and line style too. User strings (block names, checkpoint labels,
criterion names) are shown literally: a ``$`` never starts mathtext.

Example::

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    plot_flow(result, ax=left)
    plot_strengths(result, 0, ax=right)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator

from factorlens.report.explorer import RankScan, component_index, loading_histogram, rank_scan

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from factorlens.factorize.result import CMTFResult

__all__ = [
    "plot_block_fit",
    "plot_checkpoints",
    "plot_flow",
    "plot_loadings",
    "plot_rank_scan",
    "plot_strengths",
]

_SHADE = colormaps["Blues"]
_BLUE = "#2166ac"  # the blue end of RdBu_r
_RED = "#b2182b"  # the red end of RdBu_r
_GREY = "#636363"
#: Okabe–Ito colours (colour-blind safe), then line styles and markers for more series
_SERIES = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"]
_STYLES = ["-", "--", "-.", ":"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _text(value: object, limit: int = 28) -> str:
    """Return ``value`` as a plain-text matplotlib label.

    Shortened to ``limit`` characters, each ``$`` escaped so that mathtext never interprets
    it.
    """
    s = str(value)
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.gca()


def _finite(x: Any) -> np.ndarray:
    """``x`` as a float array, ``None`` and other non-numbers as NaN."""
    vals = [np.nan if v is None else v for v in np.asarray(x, dtype=object).ravel()]
    return np.asarray(vals, dtype=np.float64).reshape(np.shape(x))


def _block_bars(ax: Axes, names: Sequence[str], values: np.ndarray, colours: Any) -> None:
    """Horizontal bars, the first block at the top (network order top to bottom)."""
    y = np.arange(len(names))
    ax.barh(y, values, color=colours, height=0.7)
    ax.set_yticks(y, [_text(n) for n in names])
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.spines[["top", "right"]].set_visible(False)


def plot_flow(result: CMTFResult, ax: Axes | None = None, *, per_row: bool = True) -> Axes:
    """Draw the flow map: the strength of every component in every block.

    Rows are the components C1..CR, columns the blocks in network order, drawn as a ``Blues``
    heatmap with a colourbar. Strength is ‖component in block‖ / ‖block‖ (``result.flow``,
    shape (R, n_blocks), unitless, comparable across blocks).

    Parameters
    ----------
    result : CMTFResult
        The fitted factorization.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: the current Axes).
    per_row : bool
        Divide each row by its own maximum so that weaker components (C2..CR) stay readable;
        the cells are annotated with the unscaled strengths when the map is small enough.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    ax = _axes(ax)
    flow = np.nan_to_num(np.asarray(result.flow, dtype=np.float64))
    r, b = flow.shape
    if per_row:
        top = flow.max(axis=1, keepdims=True)
        shown = np.divide(flow, top, out=np.zeros_like(flow), where=top > 0)
        vmax, what = 1.0, "strength, each row scaled to its max"
    else:
        shown = flow
        vmax = float(flow.max()) if flow.size and flow.max() > 0 else 1.0
        what = "strength (‖component‖ / ‖block‖)"
    im = ax.imshow(shown, aspect="auto", cmap=_SHADE, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_xticks(np.arange(b), [_text(n, 20) for n in result.block_names], rotation=30, ha="right")
    step = 1 if r <= 40 else 5
    ticks = np.arange(0, r, step)
    ax.set_yticks(ticks, [f"C{i + 1}" for i in ticks])
    ax.set_xlabel("block (network order)")
    ax.set_ylabel("component")
    if r <= 30 and r * b <= 300:
        for i in range(r):
            for j in range(b):
                dark = shown[i, j] / vmax > 0.55
                ax.text(
                    j,
                    i,
                    f"{flow[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize="x-small",
                    color="white" if dark else "#111111",
                )
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    cb.set_label(what)
    return ax


def plot_strengths(result: CMTFResult, component: int | str, ax: Axes | None = None) -> Axes:
    """Draw horizontal bars of one component's strength in each block.

    The strengths are ``result.flow[component]`` (unitless), the input at the top; blocks
    where the component counts as absent (:meth:`CMTFResult.presence`) are drawn pale.

    Parameters
    ----------
    result : CMTFResult
        The fitted factorization.
    component : int or str
        A 0-based index (``result.A[:, component]``) or the report's label (``"C1"``).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: the current Axes).

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    ax = _axes(ax)
    r = component_index(result.rank, component)
    values = np.nan_to_num(np.asarray(result.flow[r], dtype=np.float64))
    present = result.presence()[r]
    colours = [_SHADE(0.75) if p else _SHADE(0.3) for p in present]
    _block_bars(ax, result.block_names, values, colours)
    ax.set_xlim(0, max(1e-12, float(values.max(initial=0.0))) * 1.08)
    ax.set_xlabel("strength (‖component‖ / ‖block‖)")
    ax.set_title(f"C{r + 1}: strength per block")
    return ax


def plot_loadings(
    result: CMTFResult, component: int | str, ax: Axes | None = None, *, bins: int = 40
) -> Axes:
    """Draw a histogram of one component's sample loadings ``result.A[:, component]``.

    One value per input (the column has unit norm; signed); non-finite values are left out.

    Parameters
    ----------
    result : CMTFResult
        The fitted factorization.
    component : int or str
        A 0-based index (``result.A[:, component]``) or the report's label (``"C1"``).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: the current Axes).
    bins : int
        The number of bins.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    ax = _axes(ax)
    r = component_index(result.rank, component)
    counts, edges = loading_histogram(result.A[:, r], bins=bins)
    ax.hist(edges[:-1], list(edges), weights=counts, color=_SHADE(0.7), edgecolor="white", lw=0.3)
    if edges[0] < 0 < edges[-1]:
        ax.axvline(0.0, color=_GREY, lw=0.8)
    ax.set_xlabel(f"loading on C{r + 1} (unit-norm column of A)")
    ax.set_ylabel("inputs")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_block_fit(result: CMTFResult, ax: Axes | None = None) -> Axes:
    """Draw horizontal bars of each block's fit, the input at the top.

    The fit ``result.block_fit[name]`` is the share of the (centred) block explained by the model,
    0..1.

    Parameters
    ----------
    result : CMTFResult
        The fitted factorization.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: the current Axes).

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    ax = _axes(ax)
    values = np.nan_to_num(np.array([result.block_fit[n] for n in result.block_names], dtype=float))
    _block_bars(ax, result.block_names, values, _SHADE(0.75))
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("fit (share of the block explained)")
    return ax


def plot_rank_scan(
    scan: dict[str, Any] | RankScan,
    ax: Axes | None = None,
    *,
    criteria: Sequence[str] | None = None,
) -> Axes:
    """Draw each rank-scan criterion against the rank R.

    A dashed line marks the chosen rank and the plausible range (when stored) is shaded. The
    criteria have their own units (``corcondia`` is a percentage, the others mostly 0..1):
    draw them on separate Axes with ``criteria=[name]`` when their scales differ.

    Parameters
    ----------
    scan : dict or RankScan
        ``result.meta["rank_scan"]`` (``{"ranks": [..], "criteria": {name: [..]},
        "chosen": R}``), the whole ``meta`` dict holding it, or a parsed :class:`RankScan`.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: the current Axes).
    criteria : sequence of str, optional
        The names to draw (default: all).

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.
    """
    ax = _axes(ax)
    parsed = scan if isinstance(scan, RankScan) else _parse_scan(scan)
    names = list(parsed.criteria) if criteria is None else [str(c) for c in criteria]
    missing = [n for n in names if n not in parsed.criteria]
    if missing:
        raise KeyError(f"rank scan has no criterion {missing[0]!r}; it has {list(parsed.criteria)}")
    x = np.asarray(parsed.ranks, dtype=np.float64)
    for i, name in enumerate(names):
        ax.plot(
            x,
            np.asarray(parsed.criteria[name], dtype=np.float64),
            color=_SERIES[i % len(_SERIES)],
            ls=_STYLES[i // len(_SERIES) % len(_STYLES)],
            marker=_MARKERS[i % len(_MARKERS)],
            ms=4,
            lw=1.3,
            label=_text(name),
        )
    if parsed.plausible is not None:
        low, high = parsed.plausible
        ax.axvspan(low - 0.25, high + 0.25, color=_GREY, alpha=0.12, lw=0, label="plausible range")
    if parsed.chosen is not None:
        ax.axvline(
            parsed.chosen, color=_GREY, ls="--", lw=1.1, label=f"chosen R = {parsed.chosen:g}"
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rank R")
    ax.set_ylabel(_text(names[0]) if len(names) == 1 else "criterion value")
    ax.legend(frameon=False, fontsize="small")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def _parse_scan(scan: dict[str, Any]) -> RankScan:
    if not isinstance(scan, dict):
        raise TypeError(f"a rank scan is a dict or a RankScan, got {type(scan).__name__}")
    meta = scan if "rank_scan" in scan and "ranks" not in scan else {"rank_scan": scan}
    parsed = rank_scan(meta)
    if parsed is None:
        raise ValueError("no rank scan given (rank_scan is None)")
    return parsed


def plot_checkpoints(
    labels: Sequence[object],
    scores: Sequence[float | None],
    ranks: Sequence[int | None],
    ax: Axes | None = None,
    *,
    accuracy: Sequence[float | None] | None = None,
    runs: Sequence[object] | None = None,
) -> Axes:
    """Compare checkpoints: score, accuracy and rank against the checkpoint.

    Checkpoint k sits at position k on x (ticks labelled with ``labels[k]``), its quality
    score ``scores[k]`` as a filled point, ``accuracy[k]`` as a hollow marker on the same
    Axes, and the rank ``ranks[k]`` on a twin y axis (integer ticks).

    Parameters
    ----------
    labels : sequence
        The checkpoints' tick labels.
    scores : sequence of float or None
        The quality scores.
    ranks : sequence of int or None
        The joint ranks.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: the current Axes).
    accuracy : sequence of float or None, optional
        Reference accuracies (entries may be None).
    runs : sequence, optional
        Each checkpoint's run key (same length as ``labels``, e.g. from
        :func:`factorlens.report.trajectory.run_keys`): consecutive checkpoints of the same
        run are joined by lines, different runs never are; None draws no lines.

    Returns
    -------
    matplotlib.axes.Axes
        The main Axes; the rank axis (its twin, holding the legend) is in
        ``ax.figure.axes``.
    """
    ax = _axes(ax)
    n = len(labels)
    for what, seq in (("scores", scores), ("ranks", ranks), ("accuracy", accuracy), ("runs", runs)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{what} has {len(seq)} entries, labels has {n}")
    x = np.arange(n, dtype=np.float64)
    y = _finite(scores)
    ax.scatter(x, y, color=_BLUE, marker="o", s=28, zorder=3, label="score")
    if runs is not None:
        start = 0
        for k in range(1, n + 1):
            if k == n or runs[k] != runs[start]:
                if k - start >= 2:
                    ax.plot(x[start:k], y[start:k], color=_BLUE, lw=1.2, zorder=2)
                start = k
    if accuracy is not None:
        ax.scatter(
            x,
            _finite(accuracy),
            facecolors="none",
            edgecolors=_RED,
            marker="s",
            s=32,
            zorder=3,
            label="accuracy",
        )
    ax.set_xticks(x, [_text(t, 16) for t in labels], rotation=30, ha="right")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_xlabel("checkpoint")
    ax.set_ylabel("score" if accuracy is None else "score / accuracy")
    twin = ax.twinx()
    r = _finite(ranks)
    twin.scatter(x, r, color=_GREY, marker="_", s=120, lw=2, zorder=3, label="rank R")
    twin.yaxis.set_major_locator(MaxNLocator(integer=True))
    if np.isfinite(r).any():
        twin.set_ylim(np.nanmin(r) - 0.5, np.nanmax(r) + 0.5)  # integer ticks even when equal
    twin.set_ylabel("rank R")
    handles, names = ax.get_legend_handles_labels()
    more, more_names = twin.get_legend_handles_labels()
    twin.legend(handles + more, names + more_names, frameon=False, fontsize="small")
    return ax
