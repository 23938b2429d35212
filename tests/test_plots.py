"""The notebook helpers: matplotlib figures (ax in, Axes out) and the Jupyter summary."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

from factorlens.factorize.result import CMTFResult
from factorlens.report.explorer import rank_scan
from factorlens.report.plots import (
    plot_block_fit,
    plot_checkpoints,
    plot_flow,
    plot_loadings,
    plot_rank_scan,
    plot_strengths,
)
from factorlens.testing import random_result

NAMES = ["input", "features.0", "features.1", "classifier.1", "classifier.3"]
SCAN = {
    "ranks": [2, 4, 6, 8],
    "criteria": {"fit": [0.5, 0.7, 0.8, 0.82], "bicv": [0.9, 0.6, 0.5, 0.55]},
    "chosen": 6,
}


def _result(names: list[str] = NAMES, *, rank: int = 6, seed: int = 0) -> CMTFResult:
    """input 8×8 (cp), conv 4×8×8, relu 4×8×8, fc 16, out 10 — random unit factors."""
    n = 60
    shapes = [(n, 8, 8), (n, 4, 8, 8), (n, 4, 8, 8), (n, 16), (n, 10)]
    fit = np.linspace(0.9, 0.4, len(names))
    return random_result(
        names,
        shapes,
        rank,
        seed=seed,
        models={names[0]: "cp"},
        meta={"rank_scan": SCAN},
        block_fit={nm: float(f) for nm, f in zip(names, fit, strict=True)},
        loss_history=[1.0, 0.4],
    )


@pytest.fixture(autouse=True)
def _close() -> object:
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def result() -> CMTFResult:
    return _result()


def _calls(result: CMTFResult):
    return [
        lambda ax: plot_flow(result, ax),
        lambda ax: plot_strengths(result, 1, ax),
        lambda ax: plot_loadings(result, 2, ax),
        lambda ax: plot_block_fit(result, ax),
        lambda ax: plot_rank_scan(SCAN, ax),
        lambda ax: plot_checkpoints(["a", "b"], [0.5, 0.7], [3, 4], ax),
    ]


@pytest.mark.parametrize("k", range(6))
def test_axes_in_axes_out(result: CMTFResult, k: int) -> None:
    call = _calls(result)[k]
    _, given = plt.subplots()
    assert call(given) is given
    plt.figure()
    current = plt.gca()
    assert call(None) is current


def _lines(ax) -> list[Line2D]:
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) >= 2]


def test_flow_per_row_scales_each_row(result: CMTFResult) -> None:
    ax = plot_flow(result, plt.gca(), per_row=True)
    (im,) = [a for a in ax.get_images() if isinstance(a, AxesImage)]
    data = np.asarray(im.get_array())
    assert data.shape == result.flow.shape
    np.testing.assert_allclose(data.max(axis=1), 1.0)
    bar = im.colorbar
    assert bar is not None and "row" in bar.ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"C{i}" for i in range(1, 7)]
    raw = plot_flow(result, plt.figure().gca(), per_row=False)
    np.testing.assert_allclose(np.asarray(raw.get_images()[0].get_array()), result.flow)


def test_strengths_one_bar_per_block(result: CMTFResult) -> None:
    for r in (0, 3):
        ax = plot_strengths(result, r, plt.figure().gca())
        bars = ax.patches
        assert len(bars) == len(NAMES)
        np.testing.assert_allclose([b.get_width() for b in bars], result.flow[r])
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == NAMES
        # network order top to bottom: the input's bar is at the top
        ys = [b.get_y() for b in bars]
        top, bottom = ax.get_ylim()
        assert top > bottom and ys == sorted(ys)
    with pytest.raises(IndexError, match=r"0\.\.5 .*'C1'\.\.'C6'"):
        plot_strengths(result, 6)
    # the report's label names the same component as its 0-based index
    by_label = plot_strengths(result, "C4", plt.figure().gca())
    np.testing.assert_allclose([b.get_width() for b in by_label.patches], result.flow[3])
    assert by_label.get_title().startswith("C4")
    for wrong in ("C0", "C7", "4", 1.5):
        with pytest.raises(IndexError):
            plot_strengths(result, wrong)


def test_loadings_and_fit(result: CMTFResult) -> None:
    ax = plot_loadings(result, 2, bins=15)
    assert len(ax.patches) == 15
    assert sum(p.get_height() for p in ax.patches) == result.n_samples
    ax = plot_block_fit(result, plt.figure().gca())
    np.testing.assert_allclose(
        [b.get_width() for b in ax.patches], [result.block_fit[n] for n in NAMES]
    )
    assert ax.get_xlim() == (0.0, 1.0)


def _integer_ticks(axis) -> bool:
    ticks = axis.get_major_locator()()
    return len(ticks) > 0 and np.allclose(ticks, np.round(ticks))


def test_rank_scan_lines_and_chosen(result: CMTFResult) -> None:
    ax = plot_rank_scan(SCAN)
    lines = _lines(ax)
    assert len(lines) == len(SCAN["criteria"]) + 1
    vline = [ln for ln in lines if ln.get_linestyle() == "--"]
    assert len(vline) == 1 and set(np.asarray(vline[0].get_xdata(), float)) == {6.0}
    np.testing.assert_allclose(lines[0].get_ydata(), SCAN["criteria"]["fit"])
    assert _integer_ticks(ax.xaxis)
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"fit", "bicv"}
    # the meta dict and a parsed RankScan draw the same
    for given in (result.meta, rank_scan(result.meta)):
        assert len(_lines(plot_rank_scan(given, plt.figure().gca()))) == 3
    one = plot_rank_scan(SCAN, plt.figure().gca(), criteria=["bicv"])
    assert len(_lines(one)) == 2 and one.get_ylabel() == "bicv"


def test_checkpoints_join_only_within_a_run() -> None:
    ax = plot_checkpoints(
        ["ep1", "ep2", "$x$"],
        [0.5, 0.6, 0.9],
        [3, 4, 4],
        accuracy=[0.8, None, 0.7],
        runs=["a", "a", "b"],
    )
    lines = _lines(ax)
    assert len(lines) == 1
    np.testing.assert_allclose(lines[0].get_xdata(), [0, 1])
    np.testing.assert_allclose(lines[0].get_ydata(), [0.5, 0.6])
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["ep1", "ep2", r"\$x\$"]
    (twin,) = [a for a in ax.figure.axes if a is not ax]
    assert _integer_ticks(twin.yaxis)
    assert twin.get_ylabel() == "rank R"
    # no runs: no lines at all
    assert _lines(plot_checkpoints(["a", "b"], [0.1, 0.2], [2, 2], plt.figure().gca())) == []


def test_dollar_labels_are_literal() -> None:
    res = _result(["in$put", "$x$", "b", "c", "d"], rank=3)
    for ax in (plot_flow(res), plot_strengths(res, 0, plt.figure().gca())):
        texts = [t.get_text() for t in [*ax.get_xticklabels(), *ax.get_yticklabels()]]
        assert r"\$x\$" in texts and r"in\$put" in texts
    scan = {"ranks": [1, 2], "criteria": {"$a$": [1, 2]}}
    ax = plot_rank_scan(scan, plt.figure().gca())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [r"\$a\$"]


def test_repr_html_escapes_and_summarizes() -> None:
    res = _result(["input", "<b>x</b>", "b", "c", "d"], rank=14)
    page = res._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    for name in ("input", "b", "c", "d"):
        assert f">{name}<" in page
    assert "rank R = 14" in page and "60 samples" in page and "5 blocks" in page
    assert "final loss 0.4" in page
    assert "C12<" in page and "C13<" not in page
    assert "2 more" in page
    assert page.count("background:") == 12 * 5
    # the strongest cell of each row is the darkest, with white text
    assert page.count("color:#ffffff") >= 12
    small = _result(rank=3)._repr_html_()
    assert "more" not in small and "C3<" in small and "rank R = 3" in small
