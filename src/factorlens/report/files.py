"""The one place the report touches the disk: ``index.html`` and ``figures/``.

:func:`write_report` builds the view model (:func:`factorlens.report.view.build_page`),
renders it (:mod:`factorlens.report.render`) and writes the page and its figures: every image
as PNG, every chart as SVG (the same SVG the page embeds). The page is written last and
atomically, after the previous run's page and figures are removed, so a crash leaves no page
that looks complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.output import atomic_write_text
from factorlens.report.render import render, static
from factorlens.report.view import build_page, check_inputs

if TYPE_CHECKING:
    from factorlens.factorize.result import CMTFResult
    from factorlens.report.trajectory import Trajectory

INDEX_HTML = "index.html"
FIGURES_DIR = "figures"
#: figure names this module writes (a previous run's are removed; the user's own stay)
OWN_FIGURES = (
    "overview_fit.*",
    "flow.*",
    "rank_scan*",
    "component-*",
    "trajectory*",
)


def render_page(page: dict) -> str:
    """Render the page's HTML text from its view model."""
    return render(
        "page.html.j2",
        page=page,
        flow=page["flow"],
        details=page["details"],
        inputs=page["inputs"],
        css=static("report.css"),
        js=static("report.js"),
    )


def _remove_stale(out: Path, fig_dir: Path) -> None:
    (out / INDEX_HTML).unlink(missing_ok=True)
    for pattern in OWN_FIGURES:
        for p in fig_dir.glob(pattern):
            if p.is_file():
                p.unlink()


def write_report(
    out: str | Path,
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
) -> Path:
    """Write ``out/index.html`` and ``out/figures/``.

    Parameters
    ----------
    out : str or pathlib.Path
        The report folder (created when missing); ``out``, as in every writing function.
    result : CMTFResult
        The fitted factorization.
    images : numpy.ndarray
        The input block as factorized — (N, H, W) grey, (N, C, H, W) (C = 3 shown as RGB),
        or (N, D).
    labels : numpy.ndarray, optional
        (N,) true classes; they only annotate.
    class_names : sequence of str, optional
        One name per class; they only annotate.
    predictions : numpy.ndarray, optional
        (N,) predicted classes; they only annotate.
    top_k : int
        Top inputs shown per component.
    title : str
        The page title.
    trajectory : Trajectory, optional
        Several checkpoints (:func:`factorlens.report.trajectory.build_trajectory`): adds the
        checkpoints view; ``result`` is then its checkpoint number ``main``.
    main : int
        With ``trajectory``: the checkpoint ``result`` is, 0-based.
    checkpoint_links : sequence of str or None, optional
        With ``trajectory``: each checkpoint's own report relative to ``out`` (None:
        none).

    Returns
    -------
    pathlib.Path
        The path of ``index.html``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FactorlensError(f"{out} exists and is not a directory; choose another folder")
    check_inputs(result, images, labels, class_names, top_k, predictions)  # before any write
    page, assets = build_page(
        result,
        images,
        labels,
        class_names,
        predictions=predictions,
        top_k=top_k,
        title=title,
        trajectory=trajectory,
        main=main,
        checkpoint_links=checkpoint_links,
    )
    html = render_page(page)
    fig_dir = out / FIGURES_DIR
    fig_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale(out, fig_dir)
    for name, data in assets.pngs.items():
        (fig_dir / name).write_bytes(data)
    for name, chart in assets.charts.items():
        (fig_dir / name).write_text(render("chart.svg.j2", chart=chart), encoding="utf-8")
    atomic_write_text(out / INDEX_HTML, html)
    return out / INDEX_HTML
