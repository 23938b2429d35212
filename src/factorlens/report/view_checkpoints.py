"""View model of the checkpoints section: a table, a score / accuracy chart, ranks, tracks.

Pure: a :class:`~factorlens.report.trajectory.Trajectory` in, plain dicts out (figures into
the page's :class:`~factorlens.report.assets.Assets`). Checkpoints keep the order given; the
charts join points with a line only within one run (``step-300 → step-900``), never across
kinds of run (``step-900 → noise-080``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from factorlens.report import charts
from factorlens.report import pixels as P
from factorlens.report.assets import Assets
from factorlens.report.trajectory import Checkpoint, Trajectory, run_keys, runs, short_labels


def _pattern(cp: Checkpoint, k: int, sign: float, shape: tuple[int, ...], assets: Assets) -> dict:
    res = cp.result
    x = sign * np.asarray(res.component_map(res.block_names[0], k)).reshape(shape)
    kind = P.sample_kind(shape)
    pix, _, _ = P.pattern_to_pixels(x, kind)
    shown = P.strip(pix, width=120, height=10) if kind == "vector" else P.enlarge(pix, 48, 64)
    return assets.image(None, pix, shown, f"{cp.label} C{k + 1} input pattern")


def score_chart(traj: Trajectory, short: list[str], assets: Assets) -> dict | None:
    """Chart the score and the reference accuracy per checkpoint, each in its own panel.

    Two panels, one above the other, so that a score is never read as an accuracy on a shared
    axis; ± bars give the score's sd over the perturbed copies. None when neither was recorded.
    """
    cps = traj.checkpoints
    joined = runs(run_keys(short))
    scores = [c.score if isinstance(c.score, float) else None for c in cps]
    acc = [c.accuracy for c in cps]
    series: list[dict[str, Any]] = []
    if any(s is not None for s in scores):
        sd = [c.score_sd for c in cps]
        series.append(
            {"name": "score (label-free)", "values": scores, "colour": P.POS_COLOUR, "sd": sd}
        )
    if any(a is not None for a in acc):
        series.append(
            {
                "name": "test accuracy (labels, reference)",
                "values": acc,
                "colour": charts.ACC_COLOUR,
                "hollow": True,
            }
        )
    if not series:
        return None
    links = [f"#checkpoint-{i + 1}" for i in range(len(cps))]
    panels = []
    for k, s in enumerate(series):  # the checkpoints' names under the last panel only
        last = k == len(series) - 1
        panels.append(
            charts.points(
                short,
                [{**s, "runs": joined}],
                ylabel=str(s["name"]),
                width=520,
                height=150 if last else 110,
                links=links if last else None,
                show_x=last,
            )
        )
    title = " and ".join(str(s["name"]) for s in series) + " of each checkpoint"
    chart = charts.stack(panels, title)
    return {"chart": assets.chart("trajectory_scores.svg", chart), "legend": charts.legend(series)}


def rank_chart(traj: Trajectory, short: list[str], assets: Assets) -> dict | None:
    """Chart the estimated rank per checkpoint; None unless a rank scan chose one."""
    cps = traj.checkpoints
    if not any(c.rank_estimated for c in cps):
        return None  # a fixed --rank is not a finding: no chart of it
    ranks = [float(c.result.rank) if c.rank_estimated else None for c in cps]
    series = [{"name": "rank R", "values": ranks, "colour": P.BAR_COLOUR}]
    chart = charts.points(
        short,
        [{**series[0], "runs": runs(run_keys(short))}],
        integer=True,
        ylabel="rank R (estimated)",
        width=440,
        height=170,
        links=[f"#checkpoint-{i + 1}" for i in range(len(cps))],
        title="estimated rank of each checkpoint",
    )
    return {"chart": assets.chart("trajectory_ranks.svg", chart), "legend": []}


def _score_text(c: Checkpoint) -> str:
    """``0.912 ± 0.010``; the score alone without its sd; ``—`` without a score."""
    score, sd = c.score, c.score_sd
    if score is None:
        return "—"
    if not isinstance(score, float):
        return str(score)
    return f"{score:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def checkpoints_view(
    traj: Trajectory,
    sample_shape: Sequence[int],
    assets: Assets,
    links: Sequence[str | None] | None = None,
    main: int = 0,
) -> dict[str, Any]:
    """Build everything ``templates/checkpoints.html.j2`` shows.

    ``links[i]``: checkpoint i's own report, relative to the page (None: none); ``main``: the
    checkpoint shown in full.
    """
    shape = tuple(int(s) for s in sample_shape)
    cps = traj.checkpoints
    short = short_labels(traj.labels)
    with_acc = any(c.accuracy is not None for c in cps)
    rows = []
    for i, c in enumerate(cps):
        fits = [float(v) for v in c.result.block_fit.values()]
        if i == 0:
            agree = "first"
        else:
            link = traj.links[i - 1]
            vals = [link.matched(k) for k in range(len(link.match)) if link.match[k] >= 0]
            agree = f"{np.mean(vals):.2f}" if vals else "—"
        rows.append(
            {
                "i": i + 1,
                "short": short[i],
                "label": c.label,
                "main": i == main,
                "href": None if links is None else links[i],
                "directory": c.source.name if c.source is not None else "",
                "rank": c.result.rank if c.rank_estimated else f"{c.result.rank} (fixed)",
                "score": _score_text(c),
                "accuracy": None if c.accuracy is None else f"{c.accuracy:.4f}",
                "fit": f"{100 * float(np.mean(fits)):.1f}%" if fits else "n/a",
                "agree": agree,
            }
        )
    tracks = []
    for t, track in enumerate(traj.tracks):
        cells: list[dict[str, object] | None] = []
        for i, cell in enumerate(track):
            if cell is None:
                cells.append(None)
                continue
            if cell.congruence is None:
                bg, fg = "#ffffff", "#111111"
                note = "start" if i == 0 else f"new (best {cell.best:.2f})"
            else:
                bg, fg = P.shade(cell.congruence, 1.0)
                note = f"{cell.congruence:.2f}"
            cells.append(
                {
                    "img": _pattern(cps[i], cell.component, cell.sign, shape, assets),
                    "name": f"C{cell.component + 1}",
                    "note": note,
                    "bg": bg,
                    "fg": fg,
                    "href": f"#component-{cell.component + 1}" if i == main else None,
                    "flipped": cell.sign < 0,
                }
            )
        tracks.append({"name": f"T{t + 1}", "cells": cells})
    return {
        "n": len(cps),
        "main": short[main],
        "rows": rows,
        "with_acc": with_acc,
        "with_rank": any(c.rank_estimated for c in cps),
        "warnings": list(dict.fromkeys(w for c in cps for w in c.warnings)),
        "scores": score_chart(traj, short, assets),
        "ranks": rank_chart(traj, short, assets),
        "short": short,
        "tracks": tracks,
        "min_congruence": f"{traj.min_congruence:.2f}",
    }
