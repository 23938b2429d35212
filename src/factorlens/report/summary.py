"""The compact HTML summary of a result that Jupyter shows (``CMTFResult._repr_html_``).

A one-line header (rank, samples, blocks, final loss), a table of the blocks (name, shape,
model, fit) and the flow map as a small table whose cells are shaded per row on the report's
``Blues`` scale. The context is plain data; all markup is in ``templates/summary.html.j2``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import to_hex

from factorlens.report.render import render

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult

#: flow-map rows shown before "… N more"
MAX_ROWS = 12
_SHADE = colormaps["Blues"]


def _cell(value: float, top: float) -> dict[str, Any]:
    """One flow-map cell: the strength and its colours, shaded relative to its row's max."""
    t = float(np.clip(value / top, 0.0, 1.0)) if top > 0 and math.isfinite(value) else 0.0
    return {
        "value": value,
        "background": to_hex(_SHADE(t)),
        "colour": "#ffffff" if t > 0.55 else "#111111",
    }


def summary_context(result: CMTFResult) -> dict[str, Any]:
    """Return the template's context: plain dicts, lists, strings and numbers."""
    flow = np.asarray(result.flow, dtype=np.float64)
    rows = []
    for r in range(min(result.rank, MAX_ROWS)):
        finite = flow[r][np.isfinite(flow[r])]
        top = float(finite.max()) if finite.size else 0.0
        rows.append({"label": f"C{r + 1}", "cells": [_cell(float(v), top) for v in flow[r]]})
    loss = result.loss if result.loss_history else None
    return {
        "rank": result.rank,
        "n_samples": result.n_samples,
        "n_blocks": len(result.block_names),
        "loss": loss,
        "blocks": [
            {
                "name": name,
                "shape": " × ".join(str(int(d)) for d in shape),
                "model": model,
                "fit_percent": 100.0 * float(result.block_fit[name]),
            }
            for name, shape, model in zip(
                result.block_names, result.block_shapes, result.block_models, strict=True
            )
        ],
        "rows": rows,
        "more": max(0, result.rank - MAX_ROWS),
    }


def summary_html(result: CMTFResult) -> str:
    """Return a compact HTML summary of ``result`` (a fragment, no ``<html>``), for Jupyter."""
    return render("summary.html.j2", **summary_context(result))
