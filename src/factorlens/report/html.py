"""The report page: one self-contained, offline ``index.html`` plus its PNG figures.

Layout (every part has an id; the page reads fine without JavaScript, which only adds the
one-component-at-a-time explorer on top):

* ``#overview``   — model (the chosen layers with shapes and fit), data, the chosen rank with
  its evidence plot when ``result.meta["rank_scan"]`` exists, options;
* ``#flow``       — the components × blocks heatmap of strengths as a shaded table; cell
  (r, j) links to ``#component-{r+1}-block-{j}`` (component r at block j); cell size shrinks
  with the number of components;
* ``#components`` — a toolbar (selector, previous/next, ← → keys; JavaScript only) and one
  ``<section id="component-K" class="component">`` per component (K = 1..R, strongest first,
  ``data-index`` = r): the input pattern, the mean of the top inputs, the strength in each
  block, the histogram of all loadings, the top-k and bottom-k inputs, the class make-up of the
  top inputs (labels, for reading only), then one card per layer
  (``id="component-K-block-J"``): a conv layer's spatial map and the channels that carry the
  component, a dense layer's top units;
* ``#trajectory`` — only with several checkpoints (see :mod:`factorlens.report.trajectory`).

Every image is a ``data:`` URI (no external requests; works from ``file://``) and also written
under ``figures/``; charts are inline SVG on the page and matplotlib PNGs in ``figures/``.
Every user-controlled string is HTML-escaped; the JSON read by the script sits in a
``<script type="application/json">`` element with ``<``, ``>`` and ``&`` escaped.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.report import explorer as X
from factorlens.report import figures as F
from factorlens.report import svg
from factorlens.report.assets import CSS, JS

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult
    from factorlens.report.trajectory import Trajectory

INDEX_HTML = "index.html"
FIGURES_DIR = "figures"
#: the meta keys the overview shows, in this order (the rest stays in result.json)
_META_SHOWN = ("model", "data", "checkpoint", "quality_score", "normalize", "device", "batch_size")
#: engine options not worth a row in the overview (per-block numbers, internal bookkeeping)
_OPTIONS_HIDDEN = ("block_norms", "block_scales", "rank")
#: how many channels / units / channel maps a layer card shows
TOP_CHANNELS = 8
TOP_UNITS = 12
CHANNEL_TILES = 4
#: the class make-up is counted over this many top inputs (at least top_k)
MAKEUP_INPUTS = 50
#: a block where a component's strength is below this share of its strongest block is "weak"
WEAK = 0.05


def esc(value: object) -> str:
    """HTML-escape ``str(value)`` (quotes included)."""
    return html.escape(str(value), quote=True)


def json_for_script(obj: Any) -> str:
    """``obj`` as JSON safe inside ``<script type="application/json">``: ``<``, ``>`` and ``&``
    become ``\\u003c`` etc., so no ``</script>`` or ``<!--`` can appear; JSON.parse undoes it."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def format_value(value: Any, limit: int = 400) -> str:
    """A meta/option value as one line of plain text (not yet escaped), at most ``limit`` chars."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None:
        s = str(value)
    elif isinstance(value, float):
        s = f"{value:.4g}"
    elif isinstance(value, dict):
        s = ", ".join(f"{k}: {format_value(v, limit)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        s = ", ".join(format_value(v, limit) for v in value)
    else:
        s = str(value)
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _shape(shape: Sequence[int]) -> str:
    return " × ".join(str(int(s)) for s in shape)


def _pct(fit: float) -> str:
    return f"{100.0 * fit:.1f}%" if np.isfinite(fit) else "n/a"


def safe_name(name: str, limit: int = 40) -> str:
    """A file-name-safe version of a block name (letters, digits, ``._-``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "block"
    return s[:limit]


# --------------------------------------------------------------------------- inputs
@dataclass
class _Inputs:
    images: np.ndarray  # (N, *sample_shape), display shape
    kind: str  # figures.sample_kind of the sample shape
    labels: np.ndarray | None
    class_names: list[str] | None
    top_k: int


def _check(
    result: CMTFResult,
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    top_k: int,
) -> _Inputs:
    n = result.n_samples
    x = np.asarray(images)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim < 2 or x.shape[0] != n:
        raise FactorlensError(
            f"images has shape {tuple(x.shape)} but the result was fitted on {n} samples; "
            "pass the input block the result was fitted on (N first)"
        )
    block = tuple(int(s) for s in result.block_shapes[0])
    sample = tuple(int(s) for s in x.shape[1:])
    if int(np.prod(sample)) != int(np.prod(block[1:])):
        raise FactorlensError(
            f"images has samples of shape {sample} but the input block "
            f"{result.block_names[0]!r} has samples of shape {block[1:]}; "
            "pass the input block the result was fitted on"
        )
    if len(block) - 1 > len(sample):  # e.g. flattened images given for an image block
        x = x.reshape((n, *block[1:]))
    if labels is not None:
        labels = np.asarray(labels).ravel()
        if labels.shape[0] != n:
            raise FactorlensError(
                f"labels has {labels.shape[0]} entries but there are {n} samples; "
                "pass one label per test input or none"
            )
    if int(top_k) < 1:
        raise FactorlensError(f"top_k must be at least 1, got {top_k}")
    return _Inputs(
        images=x,
        kind=F.sample_kind(x.shape[1:]),
        labels=labels,
        class_names=[str(c) for c in class_names] if class_names is not None else None,
        top_k=min(int(top_k), n),
    )


def _label_text(inp: _Inputs, i: int) -> str | None:
    if inp.labels is None:
        return None
    return X.label_text(inp.labels[i], inp.class_names)


# --------------------------------------------------------------------------- figure store
@dataclass
class _Figures:
    """Writes PNGs under ``figures/`` and hands back data URIs."""

    directory: Path
    written: list[Path] = field(default_factory=list)

    def put(self, name: str, data: bytes) -> str:
        self.save(name, data)
        return uri(data)

    def save(self, name: str, data: bytes) -> None:
        path = self.directory / name
        path.write_bytes(data)
        self.written.append(path)


def uri(data: bytes) -> str:
    """A ``data:image/png;base64,…`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(src: str, alt: str, pixels: np.ndarray, *, css: str = "", scale: int = 1) -> str:
    h, w = pixels.shape[:2]
    cls = f' class="{css}"' if css else ""
    return f'<img src="{src}" alt="{esc(alt)}" width="{w * scale}" height="{h * scale}"{cls}>'


def _thumb_scale(pixels: np.ndarray) -> int:
    return max(1, F.THUMB_DISPLAY // max(pixels.shape[:2]))


def _pix_img(native: np.ndarray, big: np.ndarray, alt: str) -> str:
    """An ``<img>`` shown at the size of ``big`` (an enlarged copy of ``native``, as written to
    figures/): the page embeds the small ``native`` pixels and lets the browser scale them
    (pixelated), unless ``big`` is the smaller of the two (a shrunk image)."""
    small = native if native.shape[0] <= big.shape[0] else big
    h, w = big.shape[:2]
    return f'<img src="{uri(F.png(small))}" alt="{esc(alt)}" width="{w}" height="{h}" class="px">'


def _map_pixels(
    x: np.ndarray, *, signed: bool, vmax: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A spatial map (H, W) or (L,) as ``(native, display)`` pixels: an image enlarged to about
    96 px, or a strip for 1-D maps."""
    pix = F.signed_to_pixels(x, vmax) if signed else F.magnitude_to_pixels(x, vmax)
    if pix.ndim == 2:  # (L, 3): a 1-D map
        big = F.strip(pix[None, :, :], width=160, height=12)
        return big, big
    return pix, F.enlarge(pix, side=96, max_side=128)


# --------------------------------------------------------------------------- overview
_KIND_TEXT = {
    "gray": "grayscale images",
    "rgb": "colour (RGB) images",
    "channels": "multi-channel images",
    "vector": "non-image feature vectors",
}


def _data_summary(result: CMTFResult, inp: _Inputs) -> str:
    sample = inp.images.shape[1:]
    rows = [
        f"<dt>test inputs (N)</dt><dd>{result.n_samples}</dd>",
        f"<dt>each input</dt><dd>{esc(_KIND_TEXT.get(inp.kind, inp.kind))}, "
        f"{esc(_shape(sample))}</dd>",
    ]
    if inp.labels is not None:
        counts: dict[str, int] = {}
        for v in inp.labels:
            t = X.label_text(v, inp.class_names)
            counts[t] = counts.get(t, 0) + 1
        shown = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{name} ×{c}" for name, c in shown[:30])
        if len(shown) > 30:
            text += f", … ({len(shown) - 30} more)"
        rows.append(
            f"<dt>labels</dt><dd>{len(counts)} classes (for reading only; never used by the "
            f"factorization): {esc(text)}</dd>"
        )
    else:
        rows.append("<dt>labels</dt><dd>none</dd>")
    return f'<dl class="meta">{"".join(rows)}</dl>'


def _rank_evidence(result: CMTFResult, figs: _Figures) -> str:
    try:
        scan = X.rank_scan(result.meta)
    except ValueError as exc:
        return (
            f'<p class="note">The rank scan stored with the result cannot be shown: {esc(exc)}.</p>'
        )
    if scan is None:
        return ""
    src = figs.put("rank_scan.png", F.rank_scan_chart(scan.ranks, scan.criteria, scan.chosen))
    names = list(scan.criteria)
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    body = []
    for i, r in enumerate(scan.ranks):
        cls = ' class="chosen"' if scan.chosen is not None and r == scan.chosen else ""
        cells = "".join(f'<td class="num">{format_value(scan.criteria[n][i])}</td>' for n in names)
        body.append(f'<tr{cls}><td class="num">{format_value(r)}</td>{cells}</tr>')
    chosen = format_value(scan.chosen) if scan.chosen is not None else "not recorded"
    how = f" Rule: {esc(scan.rule)}." if scan.rule else ""
    if scan.plausible is not None:
        low, high = (format_value(v) for v in scan.plausible)
        how += f" The splits one at a time support ranks {esc(low)} to {esc(high)}."
    return f"""
<h3 id="rank-evidence">Rank evidence</h3>
<p class="note">Each criterion computed for every tried rank R; the chosen rank ({esc(chosen)}) is
marked (dashed line, highlighted row).{how}</p>
<p class="note"><strong>fit</strong>: share of the (weighted) data the joint model explains.
<strong>corcondia</strong>: core consistency of the input's CP part (Bro &amp; Kiers; 100 = CP structure,
low or negative = more components than the input supports). <strong>bicv</strong>: bi-cross-validation
error of held-out data (Owen &amp; Perry; it falls while components predict new data).
<strong>stability</strong>: how well the worst component reappears when the inputs are split in two
halves fitted separately (congruence of the matched components, median over splits).</p>
<div class="row">
<figure><img src="{src}" alt="rank evidence: criteria against the rank R"></figure>
<table class="scan"><thead><tr><th>R</th>{head}</tr></thead><tbody>{"".join(body)}</tbody>
</table>
</div>"""


def _overview(result: CMTFResult, inp: _Inputs, figs: _Figures) -> str:
    meta = dict(result.meta or {})
    rows = [
        f"<dt>{esc(key.replace('_', ' '))}</dt><dd>{esc(format_value(meta[key]))}</dd>"
        for key in _META_SHOWN
        if meta.get(key) not in (None, "", [])
    ]
    replaced = {k: v for k, v in (meta.get("nonfinite") or {}).items() if v}
    if replaced:
        rows.append(f"<dt>NaN/Inf set to 0</dt><dd>{esc(format_value(replaced))}</dd>")
    rows.append(f"<dt>rank (components)</dt><dd>{result.rank}</dd>")
    if result.loss_history:
        rows.append(
            f"<dt>final loss</dt><dd>{result.loss:.6g} after "
            f"{len(result.loss_history)} iterations</dd>"
        )
    opts = result.options or {}
    opt_rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(format_value(v))}</td></tr>"
        for k, v in opts.items()
        if k not in _OPTIONS_HIDDEN and v not in ([], {})
    )
    options = (
        f'<table class="options"><tbody>{opt_rows}</tbody></table>'
        if opt_rows
        else "<p>(none recorded)</p>"
    )
    modules = meta.get("modules") or {}
    if not isinstance(modules, dict):
        modules = {}
    block_rows = []
    for i, (name, shape, model) in enumerate(
        zip(result.block_names, result.block_shapes, result.block_models, strict=True)
    ):
        fit = float(result.fit.get(name, np.nan))
        view = "input" if i == 0 else X.block_view(shape[1:])
        block_rows.append(
            f'<tr><td class="num">{i}</td><td class="name">{esc(name)}</td>'
            f"<td>{esc(modules.get(name, ''))}</td>"
            f"<td>{esc(_shape(shape))}</td><td>{esc(view)}</td><td>{esc(model)}</td>"
            f'<td class="num">{_pct(fit)}</td></tr>'
        )
    fits = [float(result.fit.get(n, np.nan)) for n in result.block_names]
    chart = figs.put("overview_fit.png", F.fit_chart(result.block_names, fits))
    return f"""
<section id="overview">
<h2>Overview</h2>
<dl class="meta">{"".join(rows)}</dl>
<h3>Model: the input and the chosen layers</h3>
<p class="note">The input first, then the chosen layers in network order. Fit = share of the
(weighted, centred) block explained by the model: 1 − ‖Y − model‖² / ‖Y‖². View: how a
component is shown for that block (conv: spatial map and channels; dense: units).</p>
<div class="row">
<table class="blocks"><thead><tr><th>#</th><th>block</th><th>layer type</th><th>shape</th>
<th>view</th><th>model</th><th>fit</th></tr></thead><tbody>{"".join(block_rows)}</tbody></table>
<figure><img src="{chart}" alt="fit of each block (bar chart)"></figure>
</div>
<h3>Data</h3>
{_data_summary(result, inp)}
{_rank_evidence(result, figs)}
<h3>Options</h3>
{options}
</section>"""


# --------------------------------------------------------------------------- flow map
def _flow_size(rank: int) -> str:
    if rank <= 24:
        return "flow-normal"
    if rank <= 60:
        return "flow-compact"
    return "flow-tiny"


def _flow(result: CMTFResult, flow: np.ndarray, figs: _Figures) -> str:
    names = result.block_names
    vmax = float(np.nanmax(np.abs(flow))) if flow.size else 0.0
    figs.put("flow.png", F.flow_heatmap(flow, names))
    opts = result.options or {}
    floor = opts.get("noise_floor") or opts.get("absent_below") or {}
    cut = [float(floor.get(n, 0.0)) if isinstance(floor, dict) else 0.0 for n in names]
    try:
        present = result.presence()
    except (TypeError, ValueError, AttributeError):  # a hand-edited result: show every number
        present = np.ones(flow.shape, dtype=bool)
    if present.shape != flow.shape:
        present = np.ones(flow.shape, dtype=bool)
    head = "".join(
        f'<th class="name" scope="col">{esc(n)}'
        + (f'<br><small title="noise floor">&gt; {c:.2g}</small>' if c > 0 else "")
        + "</th>"
        for n, c in zip(names, cut, strict=True)
    )
    body = []
    for r in range(flow.shape[0]):
        cells = []
        for j, name in enumerate(names):
            v = flow[r, j]
            absent = not present[r, j]
            bg, fg = F.shade(0.0 if absent else v, vmax)
            label = "absent" if absent else f"{v:.3f}"
            tip = esc(
                f"C{r + 1} in {name}: {v:.3f}"
                + (f" (not above the block's floor {cut[j]:.3g}: absent)" if absent else "")
            )
            cells.append(
                f'<td class="cell" style="background:{bg};color:{fg}">'
                f'<a href="#component-{r + 1}-block-{j}" title="{tip}">{label}</a></td>'
            )
        body.append(
            f'<tr data-r="{r}"><th scope="row"><a href="#component-{r + 1}">C{r + 1}</a></th>'
            f'{"".join(cells)}<td class="num total">{np.nansum(flow[r]):.3f}</td></tr>'
        )
    return f"""
<section id="flow">
<h2>Flow map</h2>
<p class="note">Strength of each component (rows, strongest first) in each block (columns: the
input, then the layers in network order): how much of that block the component accounts for,
comparable across blocks. Follow a row to see where an input pattern travels through the
network; click a cell to open that component at that layer (darker = stronger; the PNG version
is <code>{FIGURES_DIR}/flow.png</code>). A strength at or below its block's floor (under the
block's name: the block's noise floor with <code>--l1 auto</code>, half the penalty with a
fixed one) is set to zero by the fit and shown as <em>absent</em>: that block does not hold the
component.</p>{_spare_notes(result)}
<div class="flowwrap"><table class="flow {_flow_size(flow.shape[0])}">
<thead><tr><th scope="col">component</th>{head}<th scope="col">total</th></tr></thead>
<tbody>{"".join(body)}</tbody></table></div>
</section>"""


def _spare_notes(result: CMTFResult) -> str:
    """The model's signs of too many components, as a warning list (empty when none)."""
    try:
        notes = result.spare_components()
    except (ValueError, TypeError, KeyError):  # a hand-edited result without the fields
        return ""
    if not notes:
        return ""
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<div class="note warn"><p>Signs of more components than the data hold:</p><ul>{items}</ul></div>'


# --------------------------------------------------------------------------- components
@dataclass
class _Layer:
    """A layer block (index >= 1) and the reusable chart drawn for it."""

    index: int
    name: str
    sample_shape: tuple[int, ...]
    view: str  # explorer.block_view
    module: str
    chart: F.HBarChart
    vmax: float  # the largest channel norm / |weight| over all components (the bar scale)
    unit_names: list[str] | None = None


@dataclass
class _Shared:
    """Things built once and reused by every component section."""

    inp: _Inputs
    flow: np.ndarray
    mean_all: np.ndarray
    strength: F.StrengthChart
    histogram: F.LoadingHistogram
    layers: list[_Layer]
    line_pattern: F.LinePlot | None
    line_mean: F.LinePlot | None
    thumbs: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)


def _layers(result: CMTFResult, inp: _Inputs) -> list[_Layer]:
    modules = (result.meta or {}).get("modules") or {}
    if not isinstance(modules, dict):
        modules = {}
    out = []
    last = len(result.block_names) - 1
    for j in range(1, len(result.block_names)):
        name = result.block_names[j]
        shape = tuple(int(s) for s in result.block_shapes[j][1:])
        view = X.block_view(shape)
        names = None
        if (
            view == "dense"
            and j == last
            and inp.class_names is not None
            and shape[0] == len(inp.class_names)
        ):
            names = inp.class_names  # the last layer has one unit per class: name them
        # one scale per layer for every component, so bars compare across components
        vmax = 0.0
        for r in range(result.rank):
            m = np.nan_to_num(np.asarray(result.component_map(name, r), dtype=np.float64))
            if view == "conv":
                m = m.reshape(shape)
                vmax = max(vmax, float(np.sqrt((m * m).reshape(shape[0], -1).sum(axis=1)).max()))
            else:
                vmax = max(vmax, float(np.abs(m).max()) if m.size else 0.0)
        vmax = vmax if vmax > 0 else 1.0
        if view == "conv":
            rows = min(shape[0], TOP_CHANNELS)
            chart = F.HBarChart(rows, "‖channel‖ in the component", signed=False, vmax=vmax)
        else:
            rows = min(int(np.prod(shape)), TOP_UNITS)
            chart = F.HBarChart(
                rows, "weight in the component", signed=True, vmax=vmax, label_chars=14
            )
        out.append(_Layer(j, name, shape, view, str(modules.get(name, "")), chart, vmax, names))
    return out


def _thumb(shared: _Shared, i: int) -> tuple[str, np.ndarray]:
    """(data URI, pixels) of test input ``i``, encoded once however many components use it."""
    if i not in shared.thumbs:
        pix = F.data_to_pixels(shared.inp.images[i], shared.inp.kind)
        pix = F.strip(pix) if shared.inp.kind == "vector" else F.shrink(pix)
        shared.thumbs[i] = (uri(F.png(pix)), pix)
    return shared.thumbs[i]


def _thumbs(
    shared: _Shared, idx: np.ndarray, loadings: np.ndarray, which: str, figs: _Figures, tag: str
) -> str:
    inp = shared.inp
    vector = inp.kind == "vector"
    items, tiles = [], []
    for i in idx:
        i = int(i)
        src, tpix = _thumb(shared, i)
        lab = _label_text(inp, i)
        scale = 1 if vector else _thumb_scale(tpix)
        alt = f"test input {i}, loading {loadings[i]:.3g}"
        caption = f"#{i}<br>{loadings[i]:.3g}"
        if lab is not None:
            caption += f'<br><span class="lab">{esc(lab)}</span>'
        items.append(
            f'<figure class="thumb">{_img(src, alt, tpix, css="px", scale=scale)}'
            f"<figcaption>{caption}</figcaption></figure>"
        )
        tiles.append(tpix if vector else F.enlarge(tpix, F.THUMB_DISPLAY, F.THUMB_SIDE))
    if tiles:
        figs.put(f"component-{tag}_{which}.png", F.png(F.grid(tiles, ncols=1 if vector else 8)))
    css = f"thumbs {which}" + (" strips" if vector else "")
    return f'<div class="{css}">{"".join(items)}</div>'


def _input_card(result: CMTFResult, r: int, shared: _Shared, figs: _Figures, tag: str) -> str:
    inp = shared.inp
    names = result.block_names
    cname = f"C{r + 1}"
    vector = inp.kind == "vector"
    sample_shape = inp.images.shape[1:]
    pattern = np.asarray(result.component_map(names[0], r)).reshape(sample_shape)
    pix, vmax, signed = F.pattern_to_pixels(pattern, inp.kind)
    if vector:
        assert shared.line_pattern is not None
        line = figs.put(
            f"component-{tag}_pattern.png",
            shared.line_pattern.render(pattern, title=f"{cname} input pattern"),
        )
        spix = F.strip(pix)
        srip = figs.put(f"component-{tag}_pattern_strip.png", F.png(spix))
        pattern_html = (
            f'<img src="{line}" alt="{cname} input pattern (line plot)">'
            f"<br>{_img(srip, f'{cname} input pattern (strip)', spix, css='px')}"
        )
    else:
        big = F.enlarge(pix)
        figs.save(f"component-{tag}_pattern.png", F.png(big))
        pattern_html = _pix_img(pix, big, f"{cname} input pattern")
    if inp.kind == "rgb":
        scale_note = (
            f"shown as colour, mid-grey = 0, scale ±{vmax:.3g}"
            if signed
            else f"shown as colour, black = 0, scale 0…{vmax:.3g}"
        )
    else:
        scale_note = f"red &gt; 0 &gt; blue, white = 0, scale ±{vmax:.3g}"
        if inp.kind == "channels":
            c = sample_shape[0]
            scale_note += (
                f"; one tile per channel (C = {c})"
                if c <= F.MAX_TILED_CHANNELS
                else f"; mean of the {c} channels"
            )

    loadings = np.asarray(result.A[:, r], dtype=np.float64)
    top = F.top_indices(loadings, inp.top_k)
    k = len(top)
    mean_top = inp.images[top].astype(np.float64).mean(axis=0)
    if vector:
        assert shared.line_mean is not None
        msrc = figs.put(
            f"component-{tag}_mean.png",
            shared.line_mean.render(mean_top, shared.mean_all, title=f"{cname} top-{k} mean"),
        )
        mean_html = (
            f'<img src="{msrc}" alt="{cname} mean of the top {k} inputs (line plot)">'
            '<p class="note">solid: mean of the top inputs; dashed: mean of all inputs</p>'
        )
    else:
        mnat = F.data_to_pixels(mean_top, inp.kind)
        mpix = F.enlarge(mnat)
        figs.save(f"component-{tag}_mean.png", F.png(mpix))
        dnat, dmax, _ = F.pattern_to_pixels(mean_top - shared.mean_all, inp.kind)
        dpix = F.enlarge(dnat)
        figs.save(f"component-{tag}_mean_diff.png", F.png(dpix))
        mean_html = (
            f"{_pix_img(mnat, mpix, f'{cname} mean of the top {k} inputs')}"
            f"{_pix_img(dnat, dpix, f'{cname} top-{k} mean minus the mean of all inputs')}"
            f'<p class="note">left: mean of the top {k}; right: minus the mean of all '
            f"{result.n_samples} inputs (±{dmax:.3g})</p>"
        )
    strength = shared.flow[r, 0]
    return f"""<article class="card block input" id="component-{r + 1}-block-0" data-block="0">
<h4>input pattern <span class="name">{esc(names[0])}</span>
<small>strength {strength:.3f}</small></h4>
<div class="pair"><figure><figcaption>rank-one pattern from the input factors</figcaption>
{pattern_html}<p class="note">{scale_note}</p></figure>
<figure><figcaption>mean of the top {k} inputs</figcaption>{mean_html}</figure></div>
</article>"""


def _layer_card(
    result: CMTFResult, r: int, layer: _Layer, shared: _Shared, figs: _Figures, tag: str
) -> str:
    j = layer.index
    row = shared.flow[r]
    v = float(row[j])
    vmax = float(np.nanmax(row)) if row.size and np.isfinite(row).any() else 0.0
    weak = vmax > 0 and v < WEAK * vmax
    m = np.asarray(result.component_map(layer.name, r)).reshape(layer.sample_shape)
    base = f"component-{tag}_block-{j}-{safe_name(layer.name)}"
    cname = f"C{r + 1}"
    if layer.view == "conv":
        cv = X.conv_view(m, TOP_CHANNELS)
        share = cv.channel_share
        anat, apix = _map_pixels(cv.abs_map, signed=False)
        snat, spix = _map_pixels(cv.signed_map, signed=True)
        figs.save(f"{base}_spatial.png", F.png(F.grid([apix, spix], ncols=2, gap=4)))
        top = cv.top_channels
        labels = [f"ch {int(c)}" for c in top]
        tips = [
            f"channel {int(c)}: ‖·‖ = {cv.channel_strength[c]:.3f}, "
            f"{100 * share[c]:.1f}% of the component"
            for c in top
        ]
        bars = svg.hbars(
            cv.channel_strength[top],
            labels,
            tooltips=tips,
            vmax=layer.vmax,
            width=280,
            label_width=52,
            title=f"{cname} top channels in {layer.name}",
        )
        figs.put(
            f"{base}_channels.png",
            layer.chart.render(
                cv.channel_strength[top], labels, title=f"{cname} top channels · {layer.name}"
            ),
        )
        tiles_html = ""
        if m.ndim == 3:
            tvmax = float(np.max(np.abs(m[top[:CHANNEL_TILES]]))) if top.size else 1.0
            tiles, items = [], []
            for c in top[:CHANNEL_TILES]:
                tnat = F.signed_to_pixels(m[c], tvmax)
                tpix = F.enlarge(tnat, side=56, max_side=72)
                tiles.append(tpix)
                items.append(
                    f"<figure>{_pix_img(tnat, tpix, f'channel {int(c)} map')}"
                    f"<figcaption>ch {int(c)} · {100 * share[c]:.0f}%</figcaption></figure>"
                )
            if tiles:
                figs.save(f"{base}_topchannels.png", F.png(F.grid(tiles, ncols=len(tiles))))
            tiles_html = f'<div class="chtiles">{"".join(items)}</div>'
        n_ch = layer.sample_shape[0]
        body = f"""<div class="pair"><figure><figcaption>Σ |channels| (where)</figcaption>
{_pix_img(anat, apix, f"{cname} spatial map in {layer.name}, sum of absolute values")}
</figure><figure><figcaption>Σ channels (signed)</figcaption>
{_pix_img(snat, spix, f"{cname} spatial map in {layer.name}, signed sum")}</figure></div>
<p class="note">channels carrying the component (top {len(top)} of {n_ch} by norm; share =
‖channel‖²):</p>{bars}{tiles_html}"""
    else:
        uv = X.unit_view(m, TOP_UNITS, layer.unit_names)
        bars = svg.hbars(
            uv.values,
            uv.labels,
            signed=True,
            vmax=layer.vmax,
            width=280,
            label_width=96 if layer.unit_names or layer.view == "units" else 60,
            fmt="{:+.2f}",
            title=f"{cname} top units in {layer.name}",
        )
        figs.put(
            f"{base}_units.png",
            layer.chart.render(uv.values, uv.labels, title=f"{cname} top units · {layer.name}"),
        )
        what = "entries" if layer.view == "units" else "units"
        named = (
            " Units named after the classes (the last layer has one unit per class)."
            if layer.unit_names
            else ""
        )
        body = (
            f'<p class="note">top {len(uv.indices)} of {int(np.prod(layer.sample_shape))} '
            f"{what} by |weight| (red &gt; 0 &gt; blue).{named}</p>{bars}"
        )
    pct = 0.0 if vmax <= 0 else max(0.0, min(100.0, 100.0 * v / vmax))
    module = f"{esc(layer.module)} · " if layer.module else ""
    weak_note = '<p class="note weaknote">weak here: the component barely reaches this block</p>'
    return f"""<article class="card block layer {layer.view}{" weak" if weak else ""}" \
id="component-{r + 1}-block-{j}" data-block="{j}">
<h4><span class="name">{esc(layer.name)}</span> <small>{module}{esc(_shape(layer.sample_shape))}
· strength {v:.3f}</small></h4>
<div class="meter" title="{esc(f"strength {v:.3f}")}"><span style="width:{pct:.0f}%"></span></div>
{weak_note if weak else ""}{body}
</article>"""


def _component(result: CMTFResult, r: int, shared: _Shared, figs: _Figures, tag: str) -> str:
    inp = shared.inp
    names = result.block_names
    cname = f"C{r + 1}"
    row = shared.flow[r]
    strongest = int(np.nanargmax(row)) if row.size and np.isfinite(row).any() else 0

    # strength in each block: SVG bars linking to the block cards, PNG bars in figures/
    strength_svg = svg.hbars(
        row,
        [str(n) for n in names],
        links=[f"#component-{r + 1}-block-{j}" for j in range(len(names))],
        tooltips=[f"{n}: {row[j]:.3f} (click to see this block)" for j, n in enumerate(names)],
        width=300,
        label_width=110,
        fmt="{:.3f}",
        title=f"{cname} strength in each block",
    )
    figs.put(
        f"component-{tag}_strength.png",
        shared.strength.render(row, title=f"{cname} strength per block"),
    )

    # loadings: histogram, top-k and bottom-k
    loadings = np.asarray(result.A[:, r], dtype=np.float64)
    top = F.top_indices(loadings, inp.top_k)
    bottom = F.bottom_indices(loadings, inp.top_k)
    counts, edges = X.loading_histogram(loadings)
    t_top = float(loadings[top[-1]]) if top.size else np.nan
    t_bot = float(loadings[bottom[-1]]) if bottom.size else np.nan
    hist_svg = svg.histogram(
        counts,
        edges,
        marks=[
            (t_bot, f"bottom {len(bottom)}", F.NEG_COLOUR),
            (t_top, f"top {len(top)}", F.POS_COLOUR),
        ],
        title=f"{cname} histogram of the loadings of all inputs",
    )
    figs.put(
        f"component-{tag}_loadings.png",
        shared.histogram.render(counts, edges, t_top, t_bot, title=f"{cname} loadings (A[:, {r}])"),
    )

    makeup = ""
    if inp.labels is not None:
        n_sel = min(result.n_samples, max(inp.top_k, MAKEUP_INPUTS))
        shares = X.class_makeup(inp.labels, F.top_indices(loadings, n_sel), inp.class_names)[:10]
        if shares:
            makeup_svg = svg.hbars(
                [s.share for s in shares],
                [s.name for s in shares],
                marks=[s.base for s in shares],
                tooltips=[
                    f"{s.name}: {s.count} of the top {n_sel} ({100 * s.share:.0f}%); "
                    f"{100 * s.base:.0f}% of all inputs"
                    for s in shares
                ],
                fmt="{:.0%}",
                width=260,
                label_width=80,
                vmax=1.0,
                title=f"{cname} classes of the top {n_sel} inputs",
            )
            makeup = f"""<figure class="card"><figcaption>classes of the top {n_sel} inputs
(labels for reading only; tick = share among all inputs)</figcaption>{makeup_svg}</figure>"""

    layers = "".join(_layer_card(result, r, lay, shared, figs, tag) for lay in shared.layers)
    return f"""
<section id="component-{r + 1}" class="component" data-index="{r}" \
aria-label="component {r + 1}">
<h3>{cname} <small>total strength {np.nansum(row):.3f} · strongest in
<span class="name">{esc(names[strongest])}</span> ({row[strongest]:.3f})</small>
<a class="up" href="#flow">flow map ↑</a></h3>
<div class="cgrid">
{_input_card(result, r, shared, figs, tag)}
<figure class="card"><figcaption>strength in each block (click a bar to see that
block)</figcaption>{strength_svg}</figure>
<figure class="card"><figcaption>loadings of all {result.n_samples} inputs
(A[:, {r}])</figcaption>{hist_svg}</figure>
{makeup}
</div>
<h4>Top {len(top)} test inputs (largest loadings)</h4>
{_thumbs(shared, top, loadings, "top", figs, tag)}
<h4>Bottom {len(bottom)} test inputs (smallest loadings)</h4>
{_thumbs(shared, bottom, loadings, "bottom", figs, tag)}
<h4>Through the layers</h4>
<div class="layers">{layers}</div>
</section>"""


def _toolbar(result: CMTFResult, flow: np.ndarray) -> str:
    names = result.block_names
    opts = []
    for r in range(result.rank):
        row = flow[r]
        j = int(np.nanargmax(row)) if row.size and np.isfinite(row).any() else 0
        text = f"C{r + 1} · total {np.nansum(row):.2f} · strongest in {names[j]}"
        opts.append(f'<option value="{r}">{esc(text)}</option>')
    return f"""<div id="component-nav" class="toolbar js-only" role="toolbar"
aria-label="choose a component">
<button type="button" id="component-prev" title="previous component (←)">◀ prev</button>
<select id="component-select" aria-label="component">{"".join(opts)}</select>
<button type="button" id="component-next" title="next component (→)">next ▶</button>
<span id="component-status" aria-live="polite"></span>
<span class="note">← / → step through the components · click a flow-map cell to open a component
at that layer</span>
</div>"""


# --------------------------------------------------------------------------- page
def render_page(
    result: CMTFResult,
    images: np.ndarray,
    fig_dir: Path,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    top_k: int = 8,
    title: str = "factorlens report",
    trajectory: Trajectory | None = None,
) -> str:
    """Write every figure into ``fig_dir`` and return the page's HTML text.

    ``images``: the input block as factorized, (N, H, W), (N, C, H, W) or (N, D).
    ``trajectory``: checkpoints to compare (adds the ``#trajectory`` section).
    """
    inp = _check(result, images, labels, class_names, top_k)
    figs = _Figures(fig_dir)
    flow = np.asarray(result.flow, dtype=np.float64)
    if flow.shape != (result.rank, len(result.block_names)):
        raise FactorlensError(
            f"the result's flow map has shape {flow.shape}, expected "
            f"({result.rank}, {len(result.block_names)}); the result is inconsistent — refit it"
        )
    d = int(np.prod(inp.images.shape[1:]))
    vector = inp.kind == "vector"
    shared = _Shared(
        inp=inp,
        flow=flow,
        mean_all=inp.images.mean(axis=0, dtype=np.float64),
        strength=F.StrengthChart(result.block_names, float(np.nanmax(flow)) if flow.size else 0.0),
        histogram=F.LoadingHistogram(),
        layers=_layers(result, inp),
        line_pattern=F.LinePlot(d, "pattern") if vector else None,
        line_mean=F.LinePlot(d, "input value") if vector else None,
    )
    width = len(str(result.rank))
    overview = _overview(result, inp, figs)
    flow_html = _flow(result, flow, figs)
    comps = "".join(
        _component(result, r, shared, figs, str(r + 1).zfill(width)) for r in range(result.rank)
    )
    traj_html, traj_nav = "", ""
    if trajectory is not None:
        from factorlens.report.trajectory import render_trajectory

        traj_html = render_trajectory(trajectory, inp.images.shape[1:], figs)
        traj_nav = ' <a href="#trajectory">Checkpoints</a>'
    t = esc(title)
    data = {
        "rank": result.rank,
        "blocks": [str(n) for n in result.block_names],
        "checkpoints": trajectory.labels if trajectory is not None else [],
    }
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="factorlens">
<title>{t}</title>
<style>{CSS}</style>
<script id="report-boot">document.documentElement.classList.add("js");</script>
</head>
<body>
<header><h1>{t}</h1>
<p class="note">Joint factorization of the test inputs and the chosen layers' outputs: each
component has an input pattern, a loading for every test input and a strength in every block.
</p></header>
<nav id="toc"><a href="#overview">Overview</a> <a href="#flow">Flow map</a>
<a href="#components">Components</a>{traj_nav}</nav>
<main>
{overview}
{flow_html}
<section id="components">
<h2>Components</h2>
<p class="note">Strongest first. Each shows its input pattern, its strength in each block, the
loadings of all test inputs with the {inp.top_k} largest and {inp.top_k} smallest, and what it
looks like in every chosen layer. A component's sign is only defined together with its
loadings: the pattern and the loadings flip together.</p>
{_toolbar(result, flow)}
{comps}
</section>
{traj_html}
</main>
<footer>Made by factorlens. Self-contained: every image is embedded in this file; PNG versions
of the figures are in the <code>{FIGURES_DIR}/</code> folder next to it.</footer>
<script type="application/json" id="report-data">{json_for_script(data)}</script>
<script id="report-js">{JS}</script>
</body>
</html>
"""


_OWN_FIGURES = (
    "overview_fit.png",
    "flow.png",
    "rank_scan.png",
    "component-*.png",
    "trajectory*.png",
)


def _remove_stale(out: Path, fig_dir: Path) -> None:
    """Drop a previous run's page and figures (only files with this module's names)."""
    (out / INDEX_HTML).unlink(missing_ok=True)
    for pattern in _OWN_FIGURES:
        for p in fig_dir.glob(pattern):
            if p.is_file():
                p.unlink()


def write_report(
    out_dir: str | Path,
    result: CMTFResult,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
    *,
    top_k: int = 8,
    title: str = "factorlens report",
    trajectory: Trajectory | None = None,
) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/figures/*.png``; return the index.html path.

    ``images``: the input block as factorized — (N, H, W) grey, (N, C, H, W) (C = 3 shown as
    RGB), or (N, D). ``labels`` (N,) and ``class_names`` only annotate thumbnails. The page is
    written last and atomically, after any old page is removed, so a crash leaves no page.
    ``trajectory`` (from :func:`factorlens.report.trajectory.build_trajectory`) adds the view
    of several checkpoints; ``result`` should be its first.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FactorlensError(f"{out} exists and is not a directory; choose another --out")
    _check(result, images, labels, class_names, top_k)  # fail before touching anything
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out, fig_dir)
    page = render_page(
        result,
        images,
        fig_dir,
        labels,
        class_names,
        top_k=top_k,
        title=title,
        trajectory=trajectory,
    )
    target = out / INDEX_HTML
    tmp = out / f".{INDEX_HTML}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(page)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
