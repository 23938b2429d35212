"""The comparison section's view model: which models carry which component, and CKA beside it.

Pure functions of a joint result of several models (``meta["models"]`` and
``meta["comparison"]``, written by :func:`factorlens.pipeline.compare_store`): plain dicts for
``templates/compare.html.j2``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from factorlens.comparison import component_sharing, labels_in, strength_contrasts
from factorlens.report.assets import format_value

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult
    from factorlens.report.view_component import ComponentView

#: per pair of models, the components with the largest strength contrasts shown
CONTRASTS_SHOWN = 5

KIND_WORDS = {
    "all": "shared by all",
    "some": "shared by some",
    "unique": "unique to one",
    "none": "in no model's layers",
}


def comparison_view(result: CMTFResult, cv: ComponentView) -> dict[str, Any] | None:
    """Build the comparison section, or None for a result of one model."""
    labels = labels_in(result.meta)
    if not labels:
        return None
    sharing = component_sharing(result, labels)
    index = {str(n): j for j, n in enumerate(result.block_names)}
    rows = []
    for r in range(result.rank):
        cells = []
        for label, e in zip(labels, sharing.evidence[r], strict=True):
            layer = e.block.split(".", 1)[1]
            cells.append(
                {
                    "present": e.present,
                    "text": f"{layer} {e.strength:.2f}" if e.present else "absent",
                    "floor": f"floor {e.floor:.2f}" if e.floor >= 0.005 else "floor ≈ 0",
                    "href": f"#component-{r + 1}-block-{index[e.block]}",
                    "tip": (
                        f"C{r + 1} in {label}: strongest in {layer}, strength "
                        f"{e.strength:.3f} against a floor of {e.floor:.3g}"
                        if e.present
                        else f"C{r + 1} is at or below the floor in every layer of {label} "
                        f"(closest: {layer}, {e.strength:.3f} against {e.floor:.3g})"
                    ),
                }
            )
        rows.append(
            {
                "id": r + 1,
                "thumb": cv.pattern(r, small=True),
                "kind": sharing.kinds[r],
                "text": sharing.describe(r),
                "cells": cells,
            }
        )
    counts = sharing.counts()
    comparison = (result.meta or {}).get("comparison") or {}
    models = (result.meta or {}).get("models") or {}
    return {
        "models": [
            {"label": lab, "description": format_value(models.get(lab, ""), 120)} for lab in labels
        ],
        "counts": [
            {"kind": k, "words": KIND_WORDS[k], "n": counts[k]} for k in KIND_WORDS if counts[k]
        ],
        "rows": rows,
        "cka": _cka(result, comparison.get("cka"), sharing, labels),
    }


def _cka(result: CMTFResult, cka: Any, sharing: Any, labels: list[str]) -> dict[str, Any] | None:
    """Return the CKA tables, one per pair of models, with the components that tell them apart."""
    if not isinstance(cka, dict) or not isinstance(cka.get("pairs"), list):
        return None
    pairs = []
    for pair in cka["pairs"]:
        a, b = str(pair.get("a")), str(pair.get("b"))
        if a not in labels or b not in labels:
            continue
        ia, ib = labels.index(a), labels.index(b)
        only_a = [
            r + 1
            for r in range(sharing.carried.shape[0])
            if sharing.carried[r, ia] and not sharing.carried[r, ib]
        ]
        only_b = [
            r + 1
            for r in range(sharing.carried.shape[0])
            if sharing.carried[r, ib] and not sharing.carried[r, ia]
        ]
        pairs.append(
            {
                "a": a,
                "b": b,
                "layers": [
                    {"a": str(x), "b": str(y), "cka": f"{float(v):.3f}"}
                    for x, y, v in pair.get("layers") or []
                ],
                "only_a": only_a,
                "only_b": only_b,
                "contrasts": [
                    {
                        "id": c.component + 1,
                        "text": _contrast_text(c),
                    }
                    for c in strength_contrasts(result, a, b)[:CONTRASTS_SHOWN]
                ],
            }
        )
    sketched = cka.get("sketched") or []
    return {"n": cka.get("n"), "pairs": pairs, "sketched": len(sketched)}


def _contrast_text(c: Any) -> str:
    """Say a strength contrast in words (a zero strength in the other model: "no strength")."""
    if c.ratio == float("inf"):
        return f"in {c.stronger}'s {c.layer}, no strength in {c.weaker}'s {c.other_layer}"
    return (
        f"{c.ratio:.2f}× stronger in {c.stronger}'s {c.layer} than in {c.weaker}'s {c.other_layer}"
    )
