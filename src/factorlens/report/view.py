"""The page's view model: a pure function from a result and its inputs to plain dicts.

:func:`build_page` returns ``(page, assets)``: ``page`` is everything ``templates/page.html.j2``
shows, ``assets`` the PNGs and charts to write under ``figures/``. Nothing here writes a file
or builds markup.

First screen (what a user opens the report for): the flow map — one row per component with a
thumbnail of its input pattern and its dominant classes, one column per block — beside the
current component's pattern, strengths and top inputs. The run's details (model, data, rank
evidence, options) come after the components.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.report import charts
from factorlens.report import explorer as X
from factorlens.report import pixels as P
from factorlens.report.assets import Assets, Inputs, format_value
from factorlens.report.view_compare import comparison_view
from factorlens.report.view_component import ComponentView
from factorlens.report.view_flow import flow_map
from factorlens.rows import in_memory

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult
    from factorlens.report.trajectory import Trajectory

#: the meta keys the details show, in this order (the rest stays in result.json)
META_SHOWN = ("model", "data", "checkpoint", "quality_score", "normalize", "device", "batch_size")
#: engine options not worth a row (per-block numbers, internal bookkeeping)
OPTIONS_HIDDEN = ("block_norms", "block_scales", "rank")
KIND_TEXT = {
    "gray": "grayscale images",
    "rgb": "colour (RGB) images",
    "channels": "multi-channel images",
    "vector": "non-image feature vectors",
}


def check_inputs(
    result: CMTFResult,
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    top_k: int,
    predictions: np.ndarray | None = None,
) -> Inputs:
    """Return the inputs in the result's display shape; a one-line error when they do not fit."""
    n = result.n_samples
    x = images if hasattr(images, "shape") and not in_memory(images) else np.asarray(images)
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
        if not in_memory(x):
            raise FactorlensError(
                f"images on disk have samples of shape {sample}, the input block "
                f"{block[1:]}; pass the input block the result was fitted on"
            )
        x = x.reshape((n, *block[1:]))
    for what, arr in (("labels", labels), ("predictions", predictions)):
        if arr is not None and np.asarray(arr).ravel().shape[0] != n:
            raise FactorlensError(
                f"{what} has {np.asarray(arr).ravel().shape[0]} entries but there are {n} "
                f"samples; pass one entry per test input or none"
            )
    if int(top_k) < 1:
        raise FactorlensError(f"top_k must be at least 1, got {top_k}")
    flow = np.asarray(result.flow)
    if flow.shape != (result.rank, len(result.block_names)):
        raise FactorlensError(
            f"the result's flow map has shape {flow.shape}, expected "
            f"({result.rank}, {len(result.block_names)}); the result is inconsistent — refit it"
        )
    return Inputs(
        images=x,
        kind=P.sample_kind(x.shape[1:]),
        labels=None if labels is None else np.asarray(labels).ravel(),
        class_names=[_short_name(str(c)) for c in class_names] if class_names is not None else None,
        predictions=None if predictions is None else np.asarray(predictions).ravel(),
        top_k=min(int(top_k), n),
    )


#: class names longer than this are shortened on the page (a 5,000-character name
#: overflowed its table cells and menus)
NAME_CHARS = 40


def _short_name(name: str) -> str:
    """Return ``name``, shortened to :data:`NAME_CHARS` characters with "…" when longer."""
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def _shape(shape: Sequence[int]) -> str:
    return " × ".join(str(int(s)) for s in shape)


#: the core consistency chart stops here (100 is ideal; far below 0, the value hardly matters)
CORCONDIA_FLOOR = -100.0


def _rank_evidence(result: CMTFResult, assets: Assets) -> dict[str, Any] | None:
    try:
        scan = X.rank_scan(result.meta)
    except ValueError as exc:
        return {"error": str(exc)}
    if scan is None:
        return None
    ranks = [format_value(r) for r in scan.ranks]
    mark = ranks.index(format_value(scan.chosen)) if scan.chosen is not None else None
    panels: list[dict] = []
    for name, values in scan.criteria.items():
        series = [
            {
                "name": name,
                "values": values,
                "colour": P.BAR_COLOUR,
                "runs": [list(range(len(values)))],
            }
        ]
        chart = charts.points(
            ranks,
            series,
            mark=mark,
            ylabel=name,
            width=300,
            height=96,
            title=f"{name} against the rank R",
            show_x=name == list(scan.criteria)[-1],
            floor=CORCONDIA_FLOOR if name == "corcondia" else None,
        )
        panels.append(assets.chart(f"rank_scan_{len(panels) + 1}.svg", chart))
    table = [
        {
            "rank": ranks[i],
            "chosen": mark == i,
            "values": [format_value(scan.criteria[n][i]) for n in scan.criteria],
        }
        for i in range(len(ranks))
    ]
    plausible = None
    if scan.plausible is not None:
        plausible = [format_value(v) for v in scan.plausible]
    return {
        "error": None,
        "chosen": format_value(scan.chosen) if scan.chosen is not None else None,
        "rule": scan.rule,
        "plausible": plausible,
        "names": list(scan.criteria),
        "panels": panels,
        "table": table,
    }


def _details(result: CMTFResult, inp: Inputs, assets: Assets) -> dict[str, Any]:
    """Build the run's details: meta, blocks with their fit, data, rank evidence, options."""
    meta = dict(result.meta or {})
    rows = [
        (key.replace("_", " "), format_value(meta[key]))
        for key in META_SHOWN
        if meta.get(key) not in (None, "", [])
    ]
    replaced = {k: v for k, v in (meta.get("nonfinite") or {}).items() if v}
    if replaced:
        rows.append(("NaN/Inf set to 0", format_value(replaced)))
    rows.append(("rank (components)", str(result.rank)))
    if result.loss_history:
        rows.append(
            ("final loss", f"{result.loss:.6g} after {len(result.loss_history)} iterations")
        )
    modules = meta.get("modules") or {}
    modules = modules if isinstance(modules, dict) else {}
    raw_sketch = meta.get("sketch")
    sketch: dict[str, Any] = raw_sketch if isinstance(raw_sketch, dict) else {}
    captured = result.captured_energy()
    blocks, fits = [], []
    for i, (name, shape, model) in enumerate(
        zip(result.block_names, result.block_shapes, result.block_models, strict=True)
    ):
        fit = float(result.block_fit.get(name, np.nan))
        fits.append(fit)
        blocks.append(
            {
                "i": i,
                "name": str(name),
                "module": str(modules.get(name, "")),
                "shape": _shape(shape),
                "view": "input" if i == 0 else X.block_view(shape[1:]),
                "model": str(model),
                "fit": f"{100 * fit:.1f}%" if np.isfinite(fit) else "n/a",
                "captured": f"{100 * captured[name]:.1f}%" if name in captured else "whole",
            }
        )
    fit_chart = charts.hbars(
        [100 * f if np.isfinite(f) else 0.0 for f in fits],
        [str(n) for n in result.block_names],
        vmax=100.0,
        fmt="{:.1f}%",
        width=320,
        label_width=110,
        title="fit of each block (%)",
    )
    labels = None
    if inp.labels is not None:
        counts: dict[str, int] = {}
        for v in inp.labels:
            t = X.label_text(v, inp.class_names)
            counts[t] = counts.get(t, 0) + 1
        shown = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        text = ", ".join(f"{name} ×{c}" for name, c in shown[:30])
        labels = {"n": len(counts), "text": text, "more": max(0, len(shown) - 30)}
    opts = result.options or {}
    options = [
        (str(k), format_value(v))
        for k, v in opts.items()
        if k not in OPTIONS_HIDDEN and v not in ([], {})
    ]
    return {
        "meta": rows,
        "blocks": blocks,
        "fit_chart": assets.chart("overview_fit.svg", fit_chart),
        "n": result.n_samples,
        "kind": KIND_TEXT.get(inp.kind, inp.kind),
        "sample": _shape(inp.images.shape[1:]),
        "labels": labels,
        "rank": _rank_evidence(result, assets),
        "options": options,
        "sketch": {
            "n": len(captured),
            "size": format_value(sketch.get("size")),
            "low": f"{100 * min(captured.values()):.1f}%",
            "high": f"{100 * max(captured.values()):.1f}%",
        }
        if captured
        else None,
    }


#: a selector entry's length that the selector shows whole at 1440 px (its block clipped)
NAV_CHARS, NAV_BLOCK = 64, 28


def _nav(result: CMTFResult, cv: ComponentView) -> list[str]:
    """Return the selector entries: what tells components apart.

    That is the dominant classes and where each stands out most relative to the other
    components, not where the strongest block is.
    """
    out = []
    for r in range(result.rank):
        text = f"C{r + 1} · stands out in {format_value(cv.distinctive(r), NAV_BLOCK)}"
        for k, c in enumerate(cv.dominant(r)):  # a second class only while the text fits
            part = ("," if k else " ·") + f" {c['name']} {c['share']}"
            if k and len(text) + len(part) > NAV_CHARS:
                break
            text += part
        out.append(text)
    return out


def build_page(
    result: CMTFResult,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    *,
    predictions: np.ndarray | None = None,
    top_k: int = 8,
    title: str = "factorlens report",
    trajectory: Trajectory | None = None,
    main: int = 0,
    checkpoint_links: Sequence[str | None] | None = None,
) -> tuple[dict[str, Any], Assets]:
    """Build the page's view model and the figures it needs.

    ``images``: the input block as factorized, (N, H, W), (N, C, H, W) or (N, D); ``labels`` /
    ``predictions`` (N,) true / predicted classes, for reading only. ``trajectory``: several
    checkpoints (adds the checkpoints view; ``result`` is its main one), with
    ``checkpoint_links`` per checkpoint the relative link to its own report (or None).
    """
    inp = check_inputs(result, images, labels, class_names, top_k, predictions)
    assets = Assets()
    cv = ComponentView(result, inp, assets)
    flow = flow_map(result, cv)
    compare = comparison_view(result, cv)
    components = [cv.section(r) for r in range(result.rank)]
    checkpoints = None
    if trajectory is not None:
        from factorlens.report.view_checkpoints import checkpoints_view

        checkpoints = checkpoints_view(
            trajectory, inp.images.shape[1:], assets, checkpoint_links, main
        )
    overview = (result.meta or {}).get("overview")  # a checkpoint's page: back to all of them
    if trajectory is not None or not (
        isinstance(overview, str) and re.fullmatch(r"(\.\./)+index\.html", overview)
    ):
        overview = None
    page = {
        "title": title,
        "overview": overview,
        "summary": {
            "rank": result.rank,
            "n": result.n_samples,
            "blocks": len(result.block_names),
            "model": format_value((result.meta or {}).get("model") or "", 80),
        },
        "flow": flow,
        "compare": compare,
        "nav": _nav(result, cv),
        "components": components,
        "top_k": inp.top_k,
        "inputs": cv.input_views(),
        "details": _details(result, inp, assets),
        "checkpoints": checkpoints,
        "data": {
            "rank": result.rank,
            "blocks": [str(n) for n in result.block_names],
            "checkpoints": [c.label for c in trajectory.checkpoints] if trajectory else [],
        },
    }
    return page, assets
