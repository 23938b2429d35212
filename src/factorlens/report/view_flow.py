"""The flow map's view model: one row per component, one column per block, stages grouped.

Pure functions of a result (and the :class:`~factorlens.report.view_component.ComponentView`
that draws the thumbnails): plain dicts for ``templates/flow.html.j2``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.comparison import labels_in
from factorlens.report import explorer as X
from factorlens.report import pixels as P
from factorlens.report.assets import scale

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult
    from factorlens.report.view_component import ComponentView


def flow_map(result: CMTFResult, cv: ComponentView) -> dict[str, Any]:
    """Build the flow map: per-row shading, the numbers the strengths themselves.

    Each row is scaled to its strongest block, so weak components read as well as C1.
    """
    names = result.block_names
    flow = cv.flow
    opts = result.options or {}
    floor = opts.get("noise_floor") or opts.get("absent_below") or {}
    cut = [float(floor.get(n, 0.0)) if isinstance(floor, dict) else 0.0 for n in names]
    try:
        present = result.presence()
    except (TypeError, ValueError, AttributeError):  # a hand-edited result: show every number
        present = np.ones(flow.shape, dtype=bool)
    if present.shape != flow.shape:
        present = np.ones(flow.shape, dtype=bool)
    try:
        spare = result.spare_components()
    except (ValueError, TypeError, KeyError):  # a hand-edited result without the fields
        spare = []
    rows = []
    for r in range(flow.shape[0]):
        row = flow[r]
        top = float(np.nanmax(np.abs(row))) if row.size and np.isfinite(row).any() else 0.0
        cells = []
        for j, name in enumerate(names):
            v = float(row[j])
            absent = not present[r, j]
            bg, fg = P.shade(0.0 if absent else v, top)
            tip = f"C{r + 1} in {name}: {v:.3f}" + (
                f" (not above the block's floor {cut[j]:.3g}: absent)" if absent else ""
            )
            cells.append(
                {
                    "href": f"#component-{r + 1}-block-{j}",
                    "text": "absent" if absent else f"{v:.3f}",
                    "bg": bg,
                    "fg": fg,
                    "tip": tip,
                }
            )
        rows.append(
            {
                "r": r,
                "id": r + 1,
                "thumb": cv.pattern(r, small=True),
                "classes": cv.dominant(r),
                "cells": cells,
                "total": f"{np.nansum(row):.3f}",
            }
        )
    heads = [
        {"name": str(n), "floor": _floor_words(c) if c > 0 else None}
        for n, c in zip(names, cut, strict=True)
    ]
    size = "normal" if flow.shape[0] <= 24 else ("compact" if flow.shape[0] <= 60 else "tiny")
    labels = labels_in(result.meta)
    if labels:  # a comparison: the models are the column groups
        groups = X.model_groups([str(n) for n in names], labels)
    else:
        groups = X.stage_groups([str(n) for n in names])
    if groups:
        _group_cells(groups, heads, rows, flow, present)
    return {
        "heads": heads,
        "rows": rows,
        "size": size,
        "spare": list(spare),
        "scale": scale("shade", "0", "row's max"),
        "groups": groups,
        "grouped_by": "model" if labels else "stage",
        "collapsed": bool(groups) and len(names) > COLLAPSE_ABOVE,
    }


#: a flow map of more blocks than this opens with its stages collapsed
COLLAPSE_ABOVE = 40


def _group_cells(
    groups: list[dict], heads: list[dict], rows: list[dict], flow: np.ndarray, present
) -> None:
    """Mark every column with its stage and give each row one summary cell per stage.

    A stage's summary cell shows the component's largest strength among the stage's blocks
    (shaded like the others, relative to the row's strongest block), linked to that block.
    """
    for g, group in enumerate(groups):
        for j in range(group["start"], group["start"] + group["count"]):
            heads[j]["g"] = g
    for row in rows:
        r = row["r"]
        values = flow[r]
        top = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
        summary = []
        for g, group in enumerate(groups):
            span = range(group["start"], group["start"] + group["count"])
            for j in span:
                row["cells"][j]["g"] = g
            live = [j for j in span if present[r, j]]
            best = max(live, key=lambda j: values[j]) if live else group["start"]
            v = float(values[best]) if live else 0.0
            bg, fg = P.shade(v, top)
            summary.append(
                {
                    "g": g,
                    "href": f"#component-{r + 1}-block-{best}",
                    "text": f"{v:.3f}" if live else "absent",
                    "bg": bg,
                    "fg": fg,
                    "tip": (
                        f"C{r + 1} in {group['name']} ({group['count']} blocks): {v:.3f}, "
                        f"strongest in {heads[best]['name']}"
                        if live
                        else f"C{r + 1} in {group['name']}: absent from all {group['count']} blocks"
                    ),
                }
            )
        row["groups"] = summary


def _floor_words(floor: float) -> str:
    """Say a block's noise floor in a strength's own terms (strengths are shown to 2 places)."""
    return f"floor {floor:.2f}" if floor >= 0.005 else "floor ≈ 0"
