"""The report page: one self-contained, offline ``index.html`` plus its PNG figures.

Layout (each part has an id so a later interactive explorer can grow it):

* ``#overview``  — title, model/data description (``result.meta``), rank, samples, options,
  the table of blocks with their fit, and a fit bar chart;
* ``#flow``      — the components × blocks heatmap of strengths and the same numbers as a
  shaded table whose rows link to the components;
* ``#components`` holding one ``<section id="component-K">`` per component, K = 1..R (= ``C1..CR``,
  ``data-index`` = the 0-based index r in the result), strongest first: the input pattern, the
  strength in each block, the mean of the top-loading test inputs and those inputs themselves.

Every image is embedded as a ``data:`` URI (no external requests; works from ``file://``) and
also written under ``figures/``. Every user-controlled string is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.report import figures as F

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult

INDEX_HTML = "index.html"
FIGURES_DIR = "figures"
#: the meta keys the overview shows, in this order (the rest stays in result.json)
_META_SHOWN = ("model", "data", "normalize", "device", "batch_size")
#: engine options not worth a row in the overview (per-block numbers, internal bookkeeping)
_OPTIONS_HIDDEN = ("block_norms", "block_scales", "rank")


def esc(value: object) -> str:
    """HTML-escape ``str(value)`` (quotes included)."""
    return html.escape(str(value), quote=True)


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
    lab = inp.labels[i]
    if inp.class_names is not None and np.issubdtype(type(lab), np.integer):
        if 0 <= int(lab) < len(inp.class_names):
            return inp.class_names[int(lab)]
    return str(lab.item() if isinstance(lab, np.generic) else lab)


# --------------------------------------------------------------------------- figure store
@dataclass
class _Figures:
    """Writes PNGs under ``figures/`` and hands back data URIs."""

    directory: Path
    written: list[Path] = field(default_factory=list)

    def put(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        self.written.append(path)
        return uri(data)


def uri(data: bytes) -> str:
    """A ``data:image/png;base64,…`` URI for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _img(src: str, alt: str, pixels: np.ndarray, *, css: str = "", scale: int = 1) -> str:
    h, w = pixels.shape[:2]
    cls = f' class="{css}"' if css else ""
    return f'<img src="{src}" alt="{esc(alt)}" width="{w * scale}" height="{h * scale}"{cls}>'


def _thumb_scale(pixels: np.ndarray) -> int:
    return max(1, F.THUMB_DISPLAY // max(pixels.shape[:2]))


# --------------------------------------------------------------------------- sections
def _overview(result: CMTFResult, figs: _Figures) -> str:
    meta = dict(result.meta or {})
    rows = [
        f"<dt>{esc(key)}</dt><dd>{esc(format_value(meta[key]))}</dd>"
        for key in _META_SHOWN
        if meta.get(key) not in (None, "", [])
    ]
    replaced = {k: v for k, v in (meta.get("nonfinite") or {}).items() if v}
    if replaced:
        rows.append(f"<dt>NaN/Inf set to 0</dt><dd>{esc(format_value(replaced))}</dd>")
    rows.append(f"<dt>rank</dt><dd>{result.rank}</dd>")
    rows.append(f"<dt>samples (N)</dt><dd>{result.n_samples}</dd>")
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
    block_rows = []
    for i, (name, shape, model) in enumerate(
        zip(result.block_names, result.block_shapes, result.block_models, strict=True)
    ):
        fit = float(result.fit.get(name, np.nan))
        block_rows.append(
            f'<tr><td class="num">{i}</td><td class="name">{esc(name)}</td>'
            f"<td>{esc(modules.get(name, ''))}</td>"
            f"<td>{esc(_shape(shape))}</td><td>{esc(model)}</td>"
            f'<td class="num">{_pct(fit)}</td></tr>'
        )
    fits = [float(result.fit.get(n, np.nan)) for n in result.block_names]
    chart = figs.put("overview_fit.png", F.fit_chart(result.block_names, fits))
    return f"""
<section id="overview">
<h2>Overview</h2>
<dl class="meta">{"".join(rows)}</dl>
<h3>Options</h3>
{options}
<h3>Blocks</h3>
<p class="note">The input first, then the chosen layers in network order. Fit = share of the
(weighted, centred) block explained by the model: 1 − ‖Y − model‖² / ‖Y‖².</p>
<div class="row">
<table class="blocks"><thead><tr><th>#</th><th>block</th><th>layer type</th><th>shape</th>
<th>model</th>
<th>fit</th></tr></thead><tbody>{"".join(block_rows)}</tbody></table>
<figure><img src="{chart}" alt="fit of each block (bar chart)"></figure>
</div>
</section>"""


def _flow(result: CMTFResult, flow: np.ndarray, figs: _Figures) -> str:
    names = result.block_names
    vmax = float(np.nanmax(np.abs(flow))) if flow.size else 0.0
    heat = figs.put("flow.png", F.flow_heatmap(flow, names))
    head = "".join(f'<th class="name">{esc(n)}</th>' for n in names)
    body = []
    for r in range(flow.shape[0]):
        cells = []
        for j in range(flow.shape[1]):
            bg, fg = F.shade(flow[r, j], vmax)
            cells.append(
                f'<td class="num" style="background:{bg};color:{fg}">{flow[r, j]:.3f}</td>'
            )
        body.append(
            f'<tr><th><a href="#component-{r + 1}">C{r + 1}</a></th>{"".join(cells)}'
            f'<td class="num total">{np.nansum(flow[r]):.3f}</td></tr>'
        )
    return f"""
<section id="flow">
<h2>Flow map</h2>
<p class="note">Strength of each component (rows, strongest first) in each block (columns: input,
then layers in network order) — how much of that block the component accounts for, comparable
across blocks. Follow a row to see where an input pattern travels through the network.</p>
<figure><img src="{heat}" alt="flow map: components by blocks heatmap of strengths"></figure>
<table class="flow"><thead><tr><th>component</th>{head}<th>total</th></tr></thead>
<tbody>{"".join(body)}</tbody></table>
</section>"""


@dataclass
class _Shared:
    """Things built once and reused by every component section."""

    inp: _Inputs
    flow: np.ndarray
    mean_all: np.ndarray
    strength: F.StrengthChart
    line_pattern: F.LinePlot | None
    line_mean: F.LinePlot | None
    thumbs: dict[int, tuple[str, np.ndarray]] = field(default_factory=dict)


def _thumb(shared: _Shared, i: int) -> tuple[str, np.ndarray]:
    """(data URI, pixels) of test input ``i``, encoded once however many components use it."""
    if i not in shared.thumbs:
        pix = F.data_to_pixels(shared.inp.images[i], shared.inp.kind)
        pix = F.strip(pix) if shared.inp.kind == "vector" else F.shrink(pix)
        shared.thumbs[i] = (uri(F.png(pix)), pix)
    return shared.thumbs[i]


def _component(result: CMTFResult, r: int, shared: _Shared, figs: _Figures, tag: str) -> str:
    inp = shared.inp
    names = result.block_names
    cname = f"C{r + 1}"
    row = shared.flow[r]
    strongest = int(np.nanargmax(row)) if row.size and np.isfinite(row).any() else 0
    vector = inp.kind == "vector"
    sample_shape = inp.images.shape[1:]

    # (a) input pattern
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
            f"<br>{_img(srip, f'{cname} input pattern (strip)', spix)}"
        )
    else:
        big = F.enlarge(pix)
        src = figs.put(f"component-{tag}_pattern.png", F.png(big))
        pattern_html = _img(src, f"{cname} input pattern", big)
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

    # (c) strength per block
    bars = figs.put(
        f"component-{tag}_strength.png",
        shared.strength.render(row, title=f"{cname} strength per block"),
    )

    # (b) top-k inputs, (d) their mean
    loadings = np.asarray(result.A[:, r], dtype=np.float64)
    top = F.top_indices(loadings, inp.top_k)
    k = len(top)
    sel = inp.images[top].astype(np.float64)
    mean_top = sel.mean(axis=0)
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
        mpix = F.enlarge(F.data_to_pixels(mean_top, inp.kind))
        msrc = figs.put(f"component-{tag}_mean.png", F.png(mpix))
        dpix, dmax, _ = F.pattern_to_pixels(mean_top - shared.mean_all, inp.kind)
        dpix = F.enlarge(dpix)
        dsrc = figs.put(f"component-{tag}_mean_diff.png", F.png(dpix))
        mean_html = (
            f"{_img(msrc, f'{cname} mean of the top {k} inputs', mpix)}"
            f"{_img(dsrc, f'{cname} top-{k} mean minus the mean of all inputs', dpix)}"
            f'<p class="note">left: mean of the top {k}; right: minus the mean of all '
            f"{result.n_samples} inputs (±{dmax:.3g})</p>"
        )

    thumbs, tiles, labels = [], [], []
    for i in top:
        src, tpix = _thumb(shared, int(i))
        lab = _label_text(inp, int(i))
        if lab is not None:
            labels.append(lab)
        scale = 1 if vector else _thumb_scale(tpix)
        alt = f"test input {int(i)}, loading {loadings[i]:.3g}"
        caption = f"#{int(i)}<br>{loadings[i]:.3g}"
        if lab is not None:
            caption += f'<br><span class="lab">{esc(lab)}</span>'
        thumbs.append(
            f'<figure class="thumb">{_img(src, alt, tpix, css="px", scale=scale)}'
            f"<figcaption>{caption}</figcaption></figure>"
        )
        tiles.append(tpix if vector else F.enlarge(tpix, F.THUMB_DISPLAY, F.THUMB_SIDE))
    figs.put(f"component-{tag}_top.png", F.png(F.grid(tiles, ncols=1 if vector else 8)))
    label_note = ""
    if labels:
        counts = Counter(labels).most_common()
        label_note = (
            f'<p class="note">labels among the top {k} (for reading only; not used by the '
            f"factorization): {', '.join(f'{esc(lab)} ×{c}' for lab, c in counts)}</p>"
        )

    return f"""
<section id="component-{r + 1}" class="component" data-index="{r}">
<h3>{cname} <small>total strength {np.nansum(row):.3f} · strongest in
<span class="name">{esc(names[strongest])}</span> ({row[strongest]:.3f})</small>
<a class="up" href="#flow">flow map ↑</a></h3>
<div class="cgrid">
<figure><figcaption>input pattern ({esc(names[0])})</figcaption>{pattern_html}
<p class="note">{scale_note}</p></figure>
<figure><figcaption>strength in each block</figcaption>
<img src="{bars}" alt="{cname} strength in each block (bar chart)"></figure>
<figure><figcaption>mean of the top {k} inputs</figcaption>{mean_html}</figure>
</div>
<h4>Top {k} test inputs by loading (A[:, {r}])</h4>
<div class="thumbs{" strips" if vector else ""}">{"".join(thumbs)}</div>
{label_note}
</section>"""


_CSS = """
:root{--fg:#1b1b1b;--muted:#5f6368;--line:#dadce0;--accent:#1f5fa8}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:#fafafa}
header{padding:18px 28px;background:#fff;border-bottom:1px solid var(--line)}
header h1{margin:0;font-size:22px}
nav{padding:8px 28px;background:#fff;border-bottom:1px solid var(--line);font-size:13px}
nav a{margin-right:10px}
main{padding:0 28px 40px;max-width:1400px}
section{margin-top:22px}
section.component{background:#fff;border:1px solid var(--line);border-radius:6px;padding:4px 16px 12px}
h2{font-size:19px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:16px}h3 small{font-weight:normal;color:var(--muted);font-size:13px;margin-left:8px}
h4{font-size:14px;margin:10px 0 6px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
a.up{float:right;font-size:12px;font-weight:normal}
.note{color:var(--muted);font-size:12px;margin:4px 0}
.name{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
dl.meta dt{font-weight:600}dl.meta dd{margin:0;word-break:break-word}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.flow td.num{min-width:64px}table.flow td.total{font-weight:600}
.row{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
figure{margin:0}figcaption{font-size:12px;color:var(--muted);margin-bottom:4px}
.cgrid{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
.cgrid img{margin-right:6px}
.thumbs{display:flex;flex-wrap:wrap;gap:10px}
.thumbs.strips{flex-direction:column;gap:4px}
.thumbs.strips figure{display:flex;gap:10px;align-items:center}
.thumb figcaption{font-size:11px;text-align:center;margin:2px 0 0;color:var(--fg)}
.thumbs.strips .thumb figcaption{text-align:left}
.thumb .lab{color:var(--accent)}
img.px{image-rendering:pixelated;image-rendering:crisp-edges}
img{max-width:100%;height:auto}
footer{padding:16px 28px;color:var(--muted);font-size:12px}
"""


def render_page(
    result: CMTFResult,
    images: np.ndarray,
    fig_dir: Path,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    top_k: int = 8,
    title: str = "factorlens report",
) -> str:
    """Write every figure into ``fig_dir`` and return the page's HTML text.

    ``images``: the input block as factorized, (N, H, W), (N, C, H, W) or (N, D).
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
        line_pattern=F.LinePlot(d, "pattern") if vector else None,
        line_mean=F.LinePlot(d, "input value") if vector else None,
    )
    width = len(str(result.rank))
    overview = _overview(result, figs)
    flow_html = _flow(result, flow, figs)
    comps = "".join(
        _component(result, r, shared, figs, str(r + 1).zfill(width)) for r in range(result.rank)
    )
    toc = " ".join(f'<a href="#component-{r + 1}">C{r + 1}</a>' for r in range(result.rank))
    t = esc(title)
    meta_json = esc(json.dumps({"rank": result.rank, "blocks": result.block_names}))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="factorlens">
<title>{t}</title>
<style>{_CSS}</style>
</head>
<body data-report="{meta_json}">
<header><h1>{t}</h1>
<p class="note">Joint factorization of the test inputs and the chosen layers' outputs: each
component has an input pattern, a loading for every test input and a strength in every block.
</p></header>
<nav id="toc"><a href="#overview">Overview</a> <a href="#flow">Flow map</a>
<a href="#components">Components</a>: {toc}</nav>
<main>
{overview}
{flow_html}
<section id="components">
<h2>Components</h2>
<p class="note">Strongest first. Each shows its input pattern, its strength in each block, and
the {inp.top_k} test inputs with the largest loadings (with their mean). A component's sign is
only defined together with its loadings: the pattern and the loadings flip together.</p>
{comps}
</section>
</main>
<footer>Made by factorlens. Self-contained: every image is embedded in this file; the same
figures are in the <code>{FIGURES_DIR}/</code> folder next to it.</footer>
</body>
</html>
"""


def _remove_stale(out: Path, fig_dir: Path) -> None:
    """Drop a previous run's page and figures (only files with this module's names)."""
    (out / INDEX_HTML).unlink(missing_ok=True)
    for pattern in ("overview_fit.png", "flow.png", "component-*.png"):
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
) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/figures/*.png``; return the index.html path.

    ``images``: the input block as factorized — (N, H, W) grey, (N, C, H, W) (C = 3 shown as
    RGB), or (N, D). ``labels`` (N,) and ``class_names`` only annotate thumbnails. The page is
    written last and atomically, after any old page is removed, so a crash leaves no page.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FactorlensError(f"{out} exists and is not a directory; choose another --out")
    _check(result, images, labels, class_names, top_k)  # fail before touching anything
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out, fig_dir)
    page = render_page(result, images, fig_dir, labels, class_names, top_k=top_k, title=title)
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
