"""What the component view shows, computed from a result (numbers only; no drawing).

* :func:`block_view` — how a block's component is read: ``"conv"`` for ``C×H×W`` (or ``C×L``)
  samples — a spatial map and the channels that carry it (:func:`conv_view`) — ``"dense"`` for
  ``d`` features — the units with the largest weights (:func:`unit_view`) — and ``"units"`` for
  any other shape (flattened, entries named by their multi-index).
* :func:`loading_histogram` — the distribution of one column of the sample factor ``A``.
* :func:`class_makeup` — which classes the top-loading inputs belong to (for reading only; the
  factorization never sees labels).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from factorlens.comparison import label_of
from factorlens.report.pixels import top_indices


def stage_groups(names: Sequence[str], min_blocks: int = 24) -> list[dict]:
    """Group a long list of blocks into the stages their names share (``layer1``, ``layer2``…).

    The stage is the first ``d`` dotted parts of a name, for the smallest ``d`` that gives at
    least 4 groups none of which holds more than half the blocks (``layer3.1.conv2`` →
    ``layer3`` in a ResNet; ``encoder.layers.encoder_layer_4.mlp.0`` →
    ``encoder.layers.encoder_layer_4`` in a ViT). Consecutive blocks only; a block alone in its
    stage stays a column of its own. Returns ``[{"name", "start", "count"}]`` (only the stages
    of two or more blocks), or ``[]`` for fewer than ``min_blocks`` blocks or no such depth.
    """
    if len(names) < min_blocks:
        return []
    depth_max = max(len(n.split(".")) for n in names)
    for depth in range(1, depth_max):
        runs = _runs([".".join(n.split("#")[0].split(".")[:depth]) for n in names])
        if len(runs) >= 4 and max(r["count"] for r in runs) <= len(names) / 2:
            return [r for r in runs if r["count"] >= 2]
    return []


def model_groups(names: Sequence[str], labels: Sequence[str]) -> list[dict]:
    """Group a comparison's blocks by model: ``[{"name": label, "start", "count"}]``.

    A block ``label.layer`` belongs to model ``label``; the input (and any block of no model)
    stays a column of its own.
    """
    return _runs([label_of(n, labels) for n in names])


def _runs(keys: Sequence[str | None]) -> list[dict]:
    """Return the runs of equal consecutive keys as ``[{"name", "start", "count"}]``.

    A ``None`` key belongs to no run (and ends the one before it).
    """
    runs: list[dict] = []
    for i, key in enumerate(keys):
        if key is None:
            continue
        last = runs[-1] if runs else None
        if last is not None and last["name"] == key and last["start"] + last["count"] == i:
            last["count"] += 1
        else:
            runs.append({"name": key, "start": i, "count": 1})
    return runs


def block_view(sample_shape: Sequence[int]) -> str:
    """``"dense"`` for (d,), ``"conv"`` for (C, L) or (C, H, W), ``"units"`` otherwise."""
    n = len(tuple(sample_shape))
    if n == 1:
        return "dense"
    if n in (2, 3):
        return "conv"
    return "units"


@dataclass
class ConvView:
    """A conv-like component ``m`` (C, *spatial), signed, usually unit norm.

    ``abs_map = Σ_c |m[c]|`` (where the component lives), ``signed_map = Σ_c m[c]``,
    ``channel_strength[c] = ‖m[c]‖`` (Σ_c strength² = ‖m‖², so strength² is the share of the
    component carried by channel c), ``top_channels`` strongest first.
    """

    abs_map: np.ndarray
    signed_map: np.ndarray
    channel_strength: np.ndarray
    top_channels: np.ndarray

    @property
    def channel_share(self) -> np.ndarray:
        """Share of the component's energy in each channel (sums to 1 unless all zero)."""
        e = self.channel_strength**2
        total = float(e.sum())
        return e / total if total > 0 else e


def conv_view(component: np.ndarray, n_top: int = 8) -> ConvView:
    """Spatial maps and channel strengths of a (C, H, W) or (C, L) component."""
    m = np.nan_to_num(np.asarray(component, dtype=np.float64))
    if m.ndim < 2:
        raise ValueError(f"a conv component needs a channel axis, got shape {m.shape}")
    axes = tuple(range(1, m.ndim))
    strength = np.sqrt((m * m).sum(axis=axes))
    return ConvView(
        abs_map=np.abs(m).sum(axis=0),
        signed_map=m.sum(axis=0),
        channel_strength=strength,
        top_channels=top_indices(strength, n_top),
    )


@dataclass
class UnitView:
    """The entries of a component with the largest |weight|, strongest first."""

    indices: np.ndarray  # flat indices into the component
    values: np.ndarray  # their signed weights
    labels: list[str]  # "unit 12", a class name, or "(c, h, w)" for other shapes


def unit_view(
    component: np.ndarray, n_top: int = 12, unit_names: Sequence[str] | None = None
) -> UnitView:
    """Top ``n_top`` entries of ``component`` by |weight| (ties: lower index first)."""
    m = np.nan_to_num(np.asarray(component, dtype=np.float64))
    flat = m.ravel()
    idx = top_indices(np.abs(flat), n_top)
    labels = []
    for i in idx:
        if m.ndim == 1:
            if unit_names is not None and int(i) < len(unit_names):
                name = str(unit_names[int(i)])
                labels.append(f"class {name}" if name == str(int(i)) else f"{name} ({int(i)})")
            else:
                labels.append(f"unit {int(i)}")
        else:
            labels.append("(" + ", ".join(str(int(j)) for j in np.unravel_index(i, m.shape)) + ")")
    return UnitView(indices=idx, values=flat[idx], labels=labels)


def loading_histogram(loadings: np.ndarray, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(counts (bins,), edges (bins + 1,))`` of the finite loadings.

    Constant loadings get a ±0.5 span.
    """
    x = np.asarray(loadings, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros(bins, dtype=np.int64), np.linspace(-0.5, 0.5, bins + 1)
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi), 1.0):
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    return counts, edges


def label_text(label: object, class_names: Sequence[str] | None) -> str:
    """Return a label as text: its class name when it is an in-range integer and names are known."""
    lab = label.item() if isinstance(label, np.generic) else label
    if class_names is not None and isinstance(lab, (int, np.integer)) and not isinstance(lab, bool):
        if 0 <= int(lab) < len(class_names):
            return str(class_names[int(lab)])
    return str(lab)


@dataclass
class ClassShare:
    """One class among selected inputs: its count, its share and its base rate."""

    name: str
    count: int  # among the selected inputs
    share: float  # count / number selected
    base: float  # share of this class among all inputs


def class_makeup(
    labels: np.ndarray, indices: np.ndarray, class_names: Sequence[str] | None = None
) -> list[ClassShare]:
    """Classes of the inputs ``indices`` (most frequent first, ties by name), with base rates."""
    labels = np.asarray(labels).ravel()
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0:
        return []
    everyone = Counter(label_text(v, class_names) for v in labels)
    chosen = Counter(label_text(v, class_names) for v in labels[idx])
    n_all, n_sel = labels.size, idx.size
    order = sorted(chosen.items(), key=lambda kv: (-kv[1], kv[0]))
    return [ClassShare(name, c, c / n_sel, everyone[name] / n_all) for name, c in order]


@dataclass
class RankScan:
    """Rank evidence from ``result.meta["rank_scan"]``: criteria values per tried rank."""

    ranks: list[float]
    criteria: dict[str, list[float]]
    chosen: float | None
    rule: str | None = None
    plausible: tuple[float, float] | None = None


def rank_scan(meta: dict | None) -> RankScan | None:
    """Parse ``meta["rank_scan"]`` = ``{"ranks": [..], "criteria": {name: [..]}, "chosen": R}``.

    Returns None when absent; raises ValueError (one line) when present but malformed.
    Missing or non-numeric criterion values become NaN.
    """
    scan = (meta or {}).get("rank_scan")
    if scan is None:
        return None
    if not isinstance(scan, dict):
        raise ValueError("rank_scan is not a mapping")
    ranks = scan.get("ranks")
    criteria = scan.get("criteria")
    if not isinstance(ranks, (list, tuple)) or not ranks:
        raise ValueError("rank_scan has no list of ranks")
    try:
        r = [float(x) for x in ranks]
    except (TypeError, ValueError):
        raise ValueError("rank_scan ranks are not numbers") from None
    if not isinstance(criteria, dict) or not criteria:
        raise ValueError("rank_scan has no criteria")
    out: dict[str, list[float]] = {}
    for name, values in criteria.items():
        if not isinstance(values, (list, tuple)) or len(values) != len(r):
            raise ValueError(
                f"rank_scan criterion {str(name)!r} does not have one value per rank ({len(r)})"
            )
        out[str(name)] = [_number(v) for v in values]
    chosen = scan.get("chosen")
    c = _number(chosen) if chosen is not None else None
    rule = scan.get("rule")
    span = scan.get("plausible")
    plausible = None
    if isinstance(span, (list, tuple)) and len(span) == 2:
        low, high = (_number(v) for v in span)
        if low == low and high == high:  # both numbers (NaN is not equal to itself)
            plausible = (low, high)
    return RankScan(
        ranks=r,
        criteria=out,
        chosen=None if c is None or c != c else c,
        rule=str(rule) if isinstance(rule, str) else None,
        plausible=plausible,
    )


def _number(value: object) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]  # any JSON value: TypeError is caught below
    except (TypeError, ValueError):
        return float("nan")
    return x


def distinctive_block(flow: np.ndarray, r: int) -> int:
    """Return the block (column of ``flow``, R × blocks) where component ``r`` stands out most.

    Each block's strengths are divided by that block's largest over the components, so the
    block is where ``r`` comes closest to leading, not merely where it is strongest.
    """
    col = np.nanmax(np.abs(flow), axis=0) if flow.size else np.ones(0)
    rel = flow / np.where(col > 0, col, 1.0)
    return int(np.nanargmax(rel[r])) if rel.shape[1] and np.isfinite(rel[r]).any() else 0


def component_index(rank: int, component: int | str) -> int:
    """Return the 0-based column of ``component``: an index or the report's label ``"C1"``.

    Raises IndexError (naming both ways to count) for anything else or out of ``0..rank-1``.
    """
    text, label = str(component), isinstance(component, str)
    r = int(component) if isinstance(component, int | np.integer) and not label else -1
    if label and text[:1].upper() == "C" and text[1:].isdigit():
        r = int(text[1:]) - 1
    if not 0 <= r < rank:
        raise IndexError(
            f"component {component!r} is out of range: give an index 0..{rank - 1} "
            f"(0-based, as in result.A[:, r]) or the report's label 'C1'..'C{rank}'"
        )
    return r
