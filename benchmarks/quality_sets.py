"""Adversarial checkpoint sets for ``bench_quality.py``: the sets a consensus can be fooled by.

Built from one zoo's distinct checkpoints by fixed rules, written down before any of them was
scored (2026-12-07). ``best`` is the checkpoint of highest test accuracy; ``median`` the one at
the zoo's median accuracy (the lower middle one); ``worst k`` the k of lowest accuracy:

* ``copies``     — best + 4 copies of ``median`` (the same outputs under other names);
* ``snapshots``  — best + the last 4 snapshots of the steps run that are >= 0.1 below it in
  accuracy (one poor run at neighbouring steps; fewer when the run has fewer);
* ``best_worst`` — best + the 5 worst;
* ``poor_only``  — the 6 worst (their best is the one to find);
* ``pair``       — best + ``median``;
* ``alone``      — best by itself.

Each set is scored as ``factorlens quality`` would (mode ``auto``). A set is *handled* when the
checkpoint of highest accuracy in it has the highest score (a copy of it counts as it), or
when a warning was printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from factorlens.quality import QualityReport, score_together

#: (name, rule) in the order the table prints them
SET_NAMES = ("copies", "snapshots", "best_worst", "poor_only", "pair", "alone")


def build_sets(rows: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Indices into ``rows`` (a zoo's distinct checkpoints) of every adversarial set.

    ``rows[i]`` has ``test_accuracy``, ``kind`` and ``steps``; an index may repeat (a copy).
    """
    acc = np.array([r["test_accuracy"] for r in rows])
    order = np.argsort(acc, kind="stable")  # worst first
    best = int(order[-1])
    median = int(order[(len(order) - 1) // 2])
    steps = sorted(
        (i for i, r in enumerate(rows) if r["kind"] == "steps" and acc[i] <= acc[best] - 0.1),
        key=lambda i: rows[i]["steps"],
    )
    sets = {
        "copies": [best, *[median] * 4],
        "snapshots": [best, *steps[-4:]],
        "best_worst": [best, *[int(i) for i in order[:5] if i != best]],
        "poor_only": [int(i) for i in order[:6]],
        "pair": [best, median],
        "alone": [best],
    }
    return {k: v for k, v in sets.items() if len(v) >= 1}


def score_set(
    index: list[int],
    reports: Sequence[QualityReport],
    outputs: Sequence[np.ndarray],
    accuracies: Sequence[float],
) -> dict[str, Any]:
    """Score one set as ``quality`` would; return whether it was handled, and why."""
    from dataclasses import replace

    names = [f"{reports[i].checkpoint}#{n}" for n, i in enumerate(index)]  # copies: new names
    picked = [replace(reports[i], checkpoint=name) for i, name in zip(index, names, strict=True)]
    scored = score_together(picked, [outputs[i] for i in index], "auto")
    acc = np.array([accuracies[i] for i in index])
    scores = np.array([r.score for r in scored])
    top = acc == acc.max()
    best_first = bool(scores[top].max() >= scores.max())
    warned = bool(scored[0].warnings)
    return {
        "checkpoints": names,
        "accuracy": acc.tolist(),
        "scores": scores.tolist(),
        "mode": scored[0].mode,
        "best_first": best_first,
        "warnings": list(scored[0].warnings),
        "ok": best_first or warned,
    }


def run_sets(
    rows: Sequence[dict[str, Any]],
    reports: Sequence[QualityReport],
    outputs: Sequence[np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Every adversarial set of one zoo, scored."""
    accuracies = [r["test_accuracy"] for r in rows]
    return {
        name: score_set(index, reports, outputs, accuracies)
        for name, index in build_sets(rows).items()
    }
