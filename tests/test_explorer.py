"""The visual explorer: bottom-k, conv/dense views, rank evidence, checkpoints (trajectory)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import markupsafe
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from factorlens.cli import main
from factorlens.errors import FactorlensError
from factorlens.factorize.result import CMTFResult
from factorlens.pipeline import load_checkpoints, save_inputs, write_checkpoints_report
from factorlens.report import bottom_indices, write_report
from factorlens.report import explorer as X
from factorlens.report.trajectory import (
    Checkpoint,
    build_trajectory,
    check_compatible,
    main_index,
    match_components,
    run_keys,
    runs,
    short_labels,
)
from factorlens.testing import random_result, random_unit, unit_columns

N = 60


def build(
    blocks: list[tuple[str, tuple[int, ...], str]],
    rank: int = 3,
    *,
    n: int = N,
    seed: int = 0,
    A: np.ndarray | None = None,
    meta: dict | None = None,
) -> CMTFResult:
    """A result with random unit-norm factors. ``blocks``: (name, sample shape, model); a cp
    block gets one factor per sample axis, a matrix block one (prod(shape), R) factor."""
    return random_result(
        [b[0] for b in blocks],
        [(n, *b[1]) for b in blocks],
        rank,
        seed=seed,
        models=[b[2] for b in blocks],
        A=A,
        meta=meta,
    )


def _section(text: str, r: int) -> str:
    return text.split(f'<section id="component-{r + 1}"')[1].split("</section>")[0]


def _svg(path: Path) -> ET.Element:
    """A chart file: parses as XML, with an ``svg`` root in the SVG namespace."""
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg", path.name
    return root


def _thumbs(section: str, which: str) -> str:
    """The "Top" or "Bottom" thumbnails of a component section."""
    part = section.split(f"<h4>{which} ")[1]
    return part.split("<h4>")[0]


def _thumb_image(html_part: str) -> Image.Image:
    """The first test-input thumbnail in ``html_part``, decoded."""
    uri = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="test input \d+', html_part)
    assert uri, "no thumbnail"
    return Image.open(io.BytesIO(base64.b64decode(uri.group(1))))


def _card(text: str, r: int, j: int) -> str:
    """The card of component r at block j: its class attribute, then its content."""
    m = re.search(
        rf'<article class="([^"]*)" id="component-{r + 1}-block-{j}"[^>]*>(.*?)</article>',
        text,
        re.S,
    )
    assert m, f"no card for component {r + 1} at block {j}"
    return f"{m.group(1)}>{m.group(2)}"


# --------------------------------------------------------------------------- bottom-k
@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e6, 1e6, allow_nan=False)),
    st.integers(0, 60),
)
def test_bottom_indices_are_k_smallest(loadings: np.ndarray, k: int) -> None:
    idx = bottom_indices(loadings, k)
    assert idx.dtype == np.int64 and len(idx) == min(k, loadings.size)
    assert len(set(idx.tolist())) == len(idx)
    assert np.array_equal(loadings[idx], np.sort(loadings)[: len(idx)])
    rest = np.delete(loadings, idx)
    if len(idx) and rest.size:
        assert loadings[idx].max() <= rest.min()
        # ties: the lower index is taken first
        last = loadings[idx[-1]]
        left_out = np.setdiff1d(np.flatnonzero(loadings == last), idx)
        if left_out.size:
            assert left_out.min() > idx[loadings[idx] == last].max()


def test_bottom_indices_nan_last_and_shown(tmp_path: Path) -> None:
    assert bottom_indices(np.array([0.1, np.nan, -0.5, np.inf, 0.3]), 4).tolist() == [2, 0, 4, 3]
    res = build([("input", (6, 6), "cp"), ("fc", (7,), "matrix")])
    images = np.random.default_rng(1).uniform(0, 1, (N, 6, 6))
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    for r in range(res.rank):
        sec = _section(text, r)
        bottom = _thumbs(sec, "Bottom")
        shown = [int(m) for m in re.findall(r'alt="test input (\d+),', bottom)]
        assert shown == np.argsort(res.A[:, r], kind="stable")[:3].tolist()
        # the loading printed under each is that input's loading
        for i in shown:
            assert f"#{i}<br>{res.A[i, r]:.3g}" in bottom


# --------------------------------------------------------------------------- conv layers
def _planted_conv(C: int = 6, H: int = 5, W: int = 4) -> np.ndarray:
    """A unit-norm C×H×W map: channel 4 holds 0.8, channel 1 holds -0.6 (signed), in known
    pixels; every other channel is zero."""
    m = np.zeros((C, H, W))
    m[4, 1, 2] = 0.8 * np.sqrt(0.5)
    m[4, 3, 0] = 0.8 * np.sqrt(0.5)
    m[1, 1, 2] = -0.6
    return m


def test_conv_view_from_planted_map() -> None:
    m = _planted_conv()
    v = X.conv_view(m, n_top=3)
    np.testing.assert_allclose(v.channel_strength, [0, 0.6, 0, 0, 0.8, 0], atol=1e-12)
    assert v.top_channels.tolist() == [4, 1, 0]  # strongest first, then ties by index
    np.testing.assert_allclose(v.channel_share[[4, 1]], [0.64, 0.36])
    expected_abs = np.zeros((5, 4))
    expected_abs[1, 2] = 0.8 * np.sqrt(0.5) + 0.6
    expected_abs[3, 0] = 0.8 * np.sqrt(0.5)
    np.testing.assert_allclose(v.abs_map, expected_abs)
    expected_signed = expected_abs.copy()
    expected_signed[1, 2] = 0.8 * np.sqrt(0.5) - 0.6
    np.testing.assert_allclose(v.signed_map, expected_signed)
    assert X.block_view((6, 5, 4)) == "conv" and X.block_view((8,)) == "dense"
    assert X.block_view((3, 7)) == "conv" and X.block_view((2, 3, 4, 5)) == "units"


def test_conv_layer_card_shows_the_planted_channels(tmp_path: Path) -> None:
    res = build([("input", (8, 8), "cp"), ("conv", (6, 5, 4), "matrix"), ("fc", (5,), "matrix")])
    res.factors["conv"][0][:, 1] = _planted_conv().ravel()  # component 2 (r = 1)
    assert np.allclose(res.component_map("conv", 1), _planted_conv())
    images = np.random.default_rng(2).uniform(0, 1, (N, 8, 8))
    text = write_report(tmp_path, res, images, top_k=2).read_text()
    card = _card(text, 1, 1)
    assert "conv" in card.split(">")[0].split()  # the card's class says how it is read
    order = re.findall(
        r"<title>channel (\d+): ([0-9.]+)% of the component \(‖channel‖ = ([0-9.]+)\)", card
    )
    assert [int(c) for c, _, _ in order[:2]] == [4, 1]
    assert [float(p) for _, p, _ in order[:2]] == [64.0, 36.0]
    assert [float(s) for _, _, s in order[:2]] == [0.8, 0.6]
    assert "(top 6 of 6)" in card
    # the top channels' own maps, strongest first
    tiles = re.findall(r"<figcaption>ch (\d+) · (\d+)%</figcaption>", card)
    assert tiles[:2] == [("4", "64"), ("1", "36")] and len(tiles) == 4
    figs = tmp_path / "figures"
    with Image.open(figs / "component-2_block-1-conv_spatial.png") as im:
        im.verify()
    # the spatial map's PNG: only the planted pixels are coloured (the rest is the zero colour)
    with Image.open(figs / "component-2_block-1-conv_spatial.png") as im:
        pix = np.asarray(im.convert("RGB"))
    assert pix.shape[0] % 5 == 0 and pix.shape[1] % 4 == 0  # 5×4 enlarged by a whole factor
    zero = pix[0, 0]
    coloured = np.argwhere((pix != zero).any(axis=2))
    cell = pix.shape[0] // 5
    cells = {(int(y) // cell, int(x) // cell) for y, x in coloured}
    assert cells == {(1, 2), (3, 0)}
    with Image.open(figs / "component-2_block-1-conv_signed.png") as im:
        im.verify()
    chart = _svg(figs / "component-2_block-1-conv_channels.svg")
    ns = "{http://www.w3.org/2000/svg}"
    labels = [el.text for el in chart.iter(f"{ns}text") if el.get("class") == "lab"]
    assert labels[:2] == ["ch 4", "ch 1"]


def test_cp_conv_layer_channel_strength_is_the_channel_factor(tmp_path: Path) -> None:
    res = build([("input", (6, 6), "cp"), ("conv", (5, 4, 4), "cp")])
    v = X.conv_view(res.component_map("conv", 0))
    np.testing.assert_allclose(v.channel_strength, np.abs(res.factors["conv"][0][:, 0]))
    text = write_report(tmp_path, res, np.zeros((N, 6, 6)), top_k=2).read_text()
    card = _card(text, 0, 1)
    first = re.findall(r"<title>channel (\d+):", card)[0]
    assert int(first) == int(np.argmax(np.abs(res.factors["conv"][0][:, 0])))


# --------------------------------------------------------------------------- dense layers
def test_dense_units_are_the_largest_weights(tmp_path: Path) -> None:
    d = 30
    res = build([("input", (6, 6), "cp"), ("fc", (d,), "matrix")], rank=2)
    col = np.zeros(d)
    col[[7, 3, 19, 0]] = [0.7, -0.5, 0.4, -0.3]
    col[[1, 2]] = 0.1  # small, still among the 12 shown, after the big ones
    res.factors["fc"][0][:, 0] = col / np.linalg.norm(col)
    uv = X.unit_view(res.component_map("fc", 0), n_top=4)
    assert uv.indices.tolist() == [7, 3, 19, 0]
    assert uv.labels == ["unit 7", "unit 3", "unit 19", "unit 0"]
    np.testing.assert_allclose(uv.values, col[[7, 3, 19, 0]] / np.linalg.norm(col))
    text = write_report(tmp_path, res, np.zeros((N, 6, 6)), top_k=2).read_text()
    card = _card(text, 0, 1)
    shown = re.findall(r"<title>unit (\d+): ([+-][0-9.]+)</title>", card)
    assert [int(u) for u, _ in shown[:6]] == [7, 3, 19, 0, 1, 2]
    assert shown[1][1].startswith("-")  # the sign is kept (blue bar)
    assert "top 12 of 30 units" in card


def test_last_layer_units_named_after_classes(tmp_path: Path) -> None:
    res = build([("input", (6, 6), "cp"), ("hidden", (9,), "matrix"), ("out", (3,), "matrix")])
    labels = np.arange(N) % 3
    text = write_report(
        tmp_path, res, np.zeros((N, 6, 6)), labels, ["cat", "dog", "<bird>"], top_k=2
    ).read_text()
    out_card = _card(text, 0, 2)
    assert "Units named after the classes" in out_card
    assert "&lt;bird&gt; (2)" in out_card and "<bird>" not in out_card
    assert "Units named after the classes" not in _card(text, 0, 1)  # not the hidden layer


def test_other_shapes_are_listed_by_index(tmp_path: Path) -> None:
    res = build([("input", (6, 6), "cp"), ("seq", (2, 3, 2, 2), "matrix")], rank=2)
    text = write_report(tmp_path, res, np.zeros((N, 6, 6)), top_k=2).read_text()
    card = _card(text, 0, 1)
    assert re.search(r"<title>\(\d, \d, \d, \d\): [+-]", card)


def test_weak_block_is_marked(tmp_path: Path) -> None:
    res = build([("input", (6, 6), "cp"), ("a", (4,), "matrix"), ("b", (4,), "matrix")], rank=2)
    res.weights["b"][0] = 0.001
    text = write_report(tmp_path, res, np.zeros((N, 6, 6)), top_k=2).read_text()
    assert "barely reaches this block" in _card(text, 0, 2)
    assert "barely reaches this block" not in _card(text, 0, 1)


# --------------------------------------------------------------------------- loadings, labels
def test_histogram_counts_every_loading_and_marks_thresholds(tmp_path: Path) -> None:
    counts, edges = X.loading_histogram(np.array([0.0, 0.1, 0.1, 0.5, np.nan]), bins=5)
    assert counts.sum() == 4 and edges[0] == 0.0 and edges[-1] == 0.5
    c1, e1 = X.loading_histogram(np.full(7, 0.2), bins=4)  # constant: still a valid histogram
    assert c1.sum() == 7 and e1[0] < 0.2 < e1[-1]
    res = build([("input", (6, 6), "cp"), ("fc", (4,), "matrix")], rank=2)
    text = write_report(tmp_path, res, np.zeros((N, 6, 6)), top_k=5).read_text()
    sec = _section(text, 0)
    bins = [int(b) for b in re.findall(r": (\d+) inputs</title>", sec)]
    assert sum(bins) == N
    assert "top 5" in sec and "bottom 5" in sec


def test_class_makeup_of_top_inputs(tmp_path: Path) -> None:
    labels = np.array([0] * 10 + [1] * 50)
    shares = X.class_makeup(labels, np.arange(12), ["a", "b"])
    assert [(s.name, s.count) for s in shares] == [("a", 10), ("b", 2)]
    assert shares[0].share == pytest.approx(10 / 12) and shares[0].base == pytest.approx(1 / 6)
    # plant: the 50 largest loadings of C1 belong to class 1
    rng = np.random.default_rng(3)
    A = random_unit(rng, N, 2)
    A[:, 0] = np.where(labels == 1, 1.0 + rng.random(N), -rng.random(N))
    A = unit_columns(A)
    res = build([("input", (6, 6), "cp"), ("fc", (4,), "matrix")], rank=2, A=A)
    text = write_report(tmp_path, res, np.zeros((N, 6, 6)), labels, ["a", "b"]).read_text()
    sec = _section(text, 0)
    assert "classes of the top 50 inputs" in sec
    assert "b: 50 of the top 50 (100%); 83% of all inputs" in sec


# --------------------------------------------------------------------------- overview
def test_rank_evidence_plot_when_present(tmp_path: Path) -> None:
    scan = {
        "ranks": [1, 2, 3, 4],
        "criteria": {"corcondia <x>": [100, 90, 40, 5], "fit": [0.5, 0.7, 0.8, None]},
        "chosen": 3,
    }
    res = build([("input", (6, 6), "cp"), ("fc", (4,), "matrix")], meta={"rank_scan": scan})
    text = write_report(tmp_path / "a", res, np.zeros((N, 6, 6)), top_k=2).read_text()
    assert 'id="rank-evidence"' in text and "corcondia &lt;x&gt;" in text
    assert re.search(r'<tr class="chosen"><td class="num">3</td>', text)
    # one chart per criterion, each marking the chosen rank with a dashed line
    panels = sorted((tmp_path / "a" / "figures").glob("rank_scan*.svg"))
    assert [p.name for p in panels] == ["rank_scan_1.svg", "rank_scan_2.svg"]
    ns = "{http://www.w3.org/2000/svg}"
    for path in panels:
        root = _svg(path)
        assert len([el for el in root.iter(f"{ns}line") if el.get("class") == "chosen"]) == 1
    labels = [el.text for el in _svg(panels[0]).iter(f"{ns}text")]
    assert "corcondia <x>" in labels
    assert len(list(_svg(panels[0]).iter(f"{ns}circle"))) == 4
    assert len(list(_svg(panels[1]).iter(f"{ns}circle"))) == 3  # the missing value is left out
    # absent: no section; malformed: a note, the report is still written
    res.meta = {}
    text = write_report(tmp_path / "b", res, np.zeros((N, 6, 6)), top_k=2).read_text()
    assert "rank-evidence" not in text
    assert not list((tmp_path / "b" / "figures").glob("rank_scan*"))
    res.meta = {"rank_scan": {"ranks": [1, 2], "criteria": {"x": [1.0]}, "chosen": 2}}
    text = write_report(tmp_path / "c", res, np.zeros((N, 6, 6)), top_k=2).read_text()
    assert "cannot be shown" in text and "one value per rank" in text


def test_overview_summarises_model_and_data(tmp_path: Path) -> None:
    res = build(
        [("input", (3, 6, 6), "cp"), ("conv", (4, 3, 3), "matrix"), ("fc", (5,), "matrix")],
        meta={"modules": {"conv": "Conv2d", "fc": "Linear"}, "quality_score": 0.875},
    )
    labels = np.arange(N) % 2
    text = write_report(
        tmp_path, res, np.random.default_rng(0).uniform(0, 1, (N, 3, 6, 6)), labels, ["x", "y"]
    ).read_text()
    ov = text.split('<section id="overview">')[1].split("</section>")[0]
    assert "colour (RGB) images, 3 × 6 × 6" in ov
    assert "2 classes" in ov and "x ×30" in ov
    assert "Conv2d" in ov and f"{N} × 4 × 3 × 3" in ov and ">conv<" in ov
    assert "quality score" in ov and "0.875" in ov


# --------------------------------------------------------------------------- input kinds
def test_colour_input_with_conv_layer(tmp_path: Path) -> None:
    res = build([("input", (3, 8, 8), "cp"), ("conv", (4, 6, 6), "matrix")])
    images = np.random.default_rng(4).uniform(0, 1, (N, 3, 8, 8)).astype(np.float32)
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    assert text.count('class="component"') == 3
    figs = tmp_path / "figures"
    for name in ("component-1_pattern.png", "component-1_mean.png", "component-1_mean_diff.png"):
        with Image.open(figs / name) as im:
            assert im.mode == "RGB"
    sec = _section(text, 0)
    for which in ("Top", "Bottom"):  # the thumbnails are colour images
        assert _thumb_image(_thumbs(sec, which)).mode == "RGB"
    assert "shown as colour" in text


def test_non_image_input_and_1d_conv_layer(tmp_path: Path) -> None:
    res = build([("input", (20,), "matrix"), ("conv1d", (3, 10), "matrix"), ("fc", (4,), "matrix")])
    images = np.random.default_rng(5).uniform(0, 1, (N, 20))
    text = write_report(tmp_path, res, images, labels=np.arange(N) % 2, top_k=4).read_text()
    sec = _section(text, 0)
    for which in ("Top", "Bottom"):  # each input is drawn as a strip
        w, h = _thumb_image(_thumbs(sec, which)).size
        assert w > 5 * h
    assert "non-image feature vectors, 20" in text
    card = _card(text, 0, 1)
    assert "conv" in card.split(">")[0].split()
    assert re.search(r"<title>channel [012]: ", card)
    figs = tmp_path / "figures"
    with Image.open(figs / "component-1_pattern.png") as im:
        assert im.size[0] > 5 * im.size[1]  # the pattern too
    with Image.open(figs / "component-1_block-1-conv1d_spatial.png") as im:
        w, h = im.size
        assert w > 5 * h  # a 1-D spatial map is drawn as a strip


# --------------------------------------------------------------------------- many components
def test_hundred_components_render(tmp_path: Path) -> None:
    R, n = 100, 110
    res = build([("input", (6, 6), "cp"), ("fc", (5,), "matrix")], rank=R, n=n)
    images = np.random.default_rng(6).uniform(0, 1, (n, 6, 6))
    start = time.perf_counter()
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    seconds = time.perf_counter() - start
    assert text.count('class="component"') == R
    assert 'class="flow flow-tiny"' in text  # the heatmap cells shrink
    assert text.count("<option ") == R  # one selector, not 100 long sections to scroll
    for r in (0, 49, 99):
        assert f'href="#component-{r + 1}-block-1"' in text
        assert f'id="component-{r + 1}-block-1"' in text
    assert seconds < 45, f"R=100 took {seconds:.1f} s"
    figs = {p.name for p in (tmp_path / "figures").iterdir()}
    assert "component-100_loadings.svg" in figs and "component-001_strength.svg" in figs
    assert "component-100_pattern.png" in figs and "component-001_pattern.png" in figs
    _svg(tmp_path / "figures" / "component-100_loadings.svg")
    # the flow map: one table row per component, without thumbnails at this size
    flow = text.split('<section id="flow">')[1].split("</section>")[0]
    assert len(re.findall(r'<tr data-r="\d+">', flow)) == R
    assert "fthumb" not in flow


# --------------------------------------------------------------------------- trajectory
def test_matching_finds_a_planted_permutation() -> None:
    rng = np.random.default_rng(7)
    A1 = random_unit(rng, 200, 6)
    perm = np.array([3, 0, 5, 1, 4, 2])
    signs = np.array([1, -1, 1, -1, -1, 1])
    A2 = unit_columns(A1[:, perm] * signs + 0.01 * rng.standard_normal((200, 6)))
    link = match_components(A1, A2)
    assert link.match.tolist() == perm.tolist()
    for k in range(6):
        assert np.sign(link.congruence[perm[k], k]) == signs[k]
        assert link.matched(k) > 0.95


def test_tracks_follow_components_and_new_ones_start(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    blocks = [("input", (5, 5), "cp"), ("fc", (4,), "matrix")]
    A1 = random_unit(rng, N, 2)
    A2 = unit_columns(np.column_stack([-A1[:, 1], A1[:, 0]]) + 0.01 * rng.standard_normal((N, 2)))
    new = rng.standard_normal(N)  # a pattern that appears at the third checkpoint
    A3 = unit_columns(np.column_stack([A2[:, 1], new, A2[:, 0]]))
    cps = [
        Checkpoint(f"ep{i}", build(blocks, rank=a.shape[1], A=a, seed=i))
        for i, a in enumerate((A1, A2, A3))
    ]
    traj = build_trajectory(cps)
    rows = [[None if c is None else (c.component, c.sign) for c in t] for t in traj.tracks]
    assert rows[0] == [(0, 1.0), (1, 1.0), (0, 1.0)]
    assert rows[1] == [(1, 1.0), (0, -1.0), (2, -1.0)]
    assert rows[2] == [None, None, (1, 1.0)]  # appeared: a new track
    assert traj.tracks[2][2].congruence is None


def _save_dir(path: Path, res: CMTFResult, images: np.ndarray, labels=None) -> Path:
    res.save(path)
    save_inputs(path, images, labels, ["c0", "c1"] if labels is not None else None)
    return path


def test_report_command_with_checkpoints(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(9)
    blocks = [("input", (6, 6), "cp"), ("conv", (3, 4, 4), "matrix"), ("fc", (5,), "matrix")]
    images = rng.uniform(0, 1, (N, 6, 6)).astype(np.float32)
    labels = np.arange(N) % 2
    A = random_unit(rng, N, 3)
    d1 = _save_dir(tmp_path / "ep1", build(blocks, A=A[:, [2, 0, 1]], meta={"quality_score": 0.5}),
                   images, labels)  # fmt: skip
    evil = "<script>alert('ck')</script>"
    res2 = build(blocks, rank=4, A=unit_columns(np.column_stack([A, rng.standard_normal(N)])),
                 meta={"checkpoint": evil, "quality_score": 0.75})  # fmt: skip
    d2 = _save_dir(tmp_path / "ep2", res2, images, labels)
    out = tmp_path / "report"
    assert main(["report", str(d1), str(d2), "--out", str(out)]) == 0
    text = (out / "index.html").read_text()
    ids = set(re.findall(r' id="([^"]+)"', text))
    for ref in re.findall(r' (?:href|src)="([^"]+)"', text):  # offline, no dangling links
        assert ref.startswith("data:image/png;base64,") or ref[1:] in ids, ref
    traj = text.split('<section id="trajectory">')[1].split("</section>")[0]
    table = text.split('<section id="checkpoints-summary"')[1].split("</section>")[0]
    assert 'href="#trajectory"' in text and 'href="#checkpoints-summary"' in text
    assert ">ep1<" in table and f'title="{markupsafe.escape(evil)}"' in table
    assert evil not in text and text.lower().count("<script") == 3
    data = text.split('id="report-data">')[1].split("</script>")[0]
    assert json.loads(data)["checkpoints"] == ["ep1", evil]
    assert "0.500" in table and "0.750" in table  # the scores
    # the best-scoring checkpoint (ep2, 0.75) is shown in full, and marked
    rows = re.findall(r'<tr id="checkpoint-(\d+)"( class="main")?>(.*?)</tr>', table, re.S)
    assert [(i, bool(m)) for i, m, _ in rows] == [("1", False), ("2", True)]
    assert "★" in rows[1][2] and "★" not in rows[0][2]
    assert "<a " not in rows[0][2]  # neither directory has a report of its own to link to
    # ep1's component k is A[:, [2, 0, 1]][k]; ep2's first three are A's columns
    assert re.findall(r"<tr><th scope=\"row\">T(\d)</th>", traj) == ["1", "2", "3", "4"]
    t1 = traj.split('<th scope="row">T1</th>')[1].split("</tr>")[0]
    # ep1 C1 -> ep2 C3; the shown checkpoint's component links to its view
    assert '<a href="#component-3">C3</a> · 1.00' in t1 and "C1 · start" in t1
    t4 = traj.split('<th scope="row">T4</th>')[1].split("</tr>")[0]
    assert "—" in t4 and '<a href="#component-4">C4</a> · new (best ' in t4
    ns = "{http://www.w3.org/2000/svg}"
    scores = _svg(out / "figures" / "trajectory_scores.svg")
    tips = [el.text for el in scores.iter(f"{ns}title")]
    assert "ep1: score (label-free) 0.5" in tips
    assert any(t.endswith(": score (label-free) 0.75") for t in tips if t)
    assert sum(1 for el in scores.iter(f"{ns}circle")) == 2
    links = [el.get("href") for el in scores.iter(f"{ns}a")]
    assert links == ["#checkpoint-1", "#checkpoint-2"]
    # neither rank was estimated (no rank scan in their meta): no chart of them
    assert not (out / "figures" / "trajectory_ranks.svg").exists()
    # --main chooses the checkpoint shown in full; out of range or with one result: one line
    assert main(["report", str(d1), str(d2), "--out", str(out), "--overwrite", "--main", "1"]) == 0
    text = (out / "index.html").read_text()
    assert re.search(r'<tr id="checkpoint-1" class="main">', text)
    assert "3 components of a joint factorization" in text  # ep1 has R = 3, ep2 R = 4
    assert main(["report", str(d1), str(d2), "--out", str(out), "--overwrite", "--main", "3"]) == 2
    assert "--main 3 is out of range" in capsys.readouterr().err
    assert main(["report", str(d1), "--out", str(tmp_path / "one"), "--main", "1"]) == 2
    assert "several" in capsys.readouterr().err


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_mismatched_results_are_refused(tmp_path: Path, capsys) -> None:
    images = np.zeros((N, 6, 6), dtype=np.float32)
    base = [("input", (6, 6), "cp"), ("fc", (5,), "matrix")]
    d1 = _save_dir(tmp_path / "a", build(base), images)
    d2 = _save_dir(tmp_path / "b", build([("input", (6, 6), "cp"), ("fc\nx", (5,), "matrix")]),
                   images)  # fmt: skip
    out = tmp_path / "out"
    assert main(["report", str(d1), str(d2), "--out", str(out)]) == 2
    assert "blocks differ" in _one_line_error(capsys)
    d3 = _save_dir(tmp_path / "c", build(base, n=N + 1), np.zeros((N + 1, 6, 6), np.float32))
    assert main(["report", str(d1), str(d3), "--out", str(out)]) == 2
    err = _one_line_error(capsys)
    assert f"{N + 1} samples" in err and f"{N} samples" in err
    d4 = _save_dir(tmp_path / "d", build(base), np.ones((N, 6, 6), np.float32))
    assert main(["report", str(d1), str(d4), "--out", str(out)]) == 2
    assert "different test inputs" in _one_line_error(capsys)
    assert not out.exists()
    with pytest.raises(FactorlensError, match="blocks differ"):
        check_compatible([Checkpoint("x", build(base)), Checkpoint("y", build(base[:1]))])
    assert [c.label for c in load_checkpoints([d1, d1])] == ["a", "a"]


# --------------------------------------------------------------------------- checkpoints helpers
def test_new_track_best_is_the_closest_previous_component() -> None:
    """A component whose one-to-one match is weak starts a track; its "best" is its largest
    |congruence| with any previous component, not with the (weak) match."""
    q = np.linalg.qr(np.random.default_rng(12).standard_normal((N, 3)))[0]
    A1 = q[:, :2]  # p0, p1
    n1 = 0.7 * q[:, 0] + 0.1 * q[:, 1] + np.sqrt(1 - 0.49 - 0.01) * q[:, 2]
    A2 = np.column_stack([-q[:, 0], n1])  # n0 = -p0 (a sign flip), n1 near p0 only
    link = match_components(A1, A2)
    assert link.match.tolist() == [0, 1]  # n1 goes to p1: the one-to-one optimum
    assert link.matched(1) == pytest.approx(0.1)
    blocks = [("input", (5, 5), "cp"), ("fc", (4,), "matrix")]
    cps = [Checkpoint(f"s{i}", build(blocks, rank=2, A=a, seed=i)) for i, a in enumerate((A1, A2))]
    traj = build_trajectory(cps)
    cells = [t[1] for t in traj.tracks]
    assert [(c.component, c.sign) for c in cells[:1]] == [(0, -1.0)]
    assert cells[1] is None and traj.tracks[1][0].component == 1  # p1's track ends
    new = traj.tracks[2]
    assert new[0] is None and new[1].component == 1 and new[1].congruence is None
    assert new[1].best == pytest.approx(0.7)
    assert new[1].best == pytest.approx(float(np.max(np.abs(link.congruence[:, 1]))))
    assert new[1].best > link.matched(1)


def test_short_labels_are_distinct_and_short() -> None:
    labels = ["runs/a/step-300.pt", "runs/b/step-300.pt", "zoo/noise-080.ckpt", "final"]
    assert short_labels(labels) == ["a/step-300", "b/step-300", "noise-080", "final"]
    assert short_labels(["w/model.pt", "w/model.pth", "x.safetensors"]) == [
        "w/model #1",
        "w/model #2",
        "x",
    ]
    same = short_labels(["x/ep1.pt", "x/ep1.pt", "ep2", "x/ep1.pt"])
    assert len(set(same)) == 4 and same[2] == "ep2"
    assert all(s.startswith("x/ep1") and not s.endswith(".pt") for s in same[:2] + same[3:])
    # a number added never repeats a label already there
    tricky = short_labels(["ep1", "ep1", "ep1 #1"])
    assert len(set(tricky)) == 3 and tricky[2] == "ep1 #1"


def test_run_keys_join_only_checkpoints_of_one_run() -> None:
    keys = run_keys(["step-300", "step-900", "noise-080"])
    assert keys == ["step", "step", "noise"]
    assert runs(keys) == [[0, 1], [2]]
    # the same run again after another one is not joined across it
    assert runs(run_keys(["a-1", "b-1", "a-2"])) == [[0], [1], [2]]
    assert runs(run_keys(["epoch_1.5", "epoch_2", "final"])) == [[0, 1], [2]]
    assert runs([]) == []


def test_main_index() -> None:
    base = [("input", (4, 4), "cp"), ("fc", (3,), "matrix")]

    def cp(score) -> Checkpoint:
        meta = {} if score is None else {"quality_score": score}
        return Checkpoint("c", build(base, meta=meta))

    assert main_index([cp(0.2), cp(0.9), cp(0.5)]) == 1  # the best score wins
    assert main_index([cp(0.2), cp(None), cp(0.5)]) == 2  # a score missing: the last
    assert main_index([cp("high"), cp(0.1)]) == 1  # not numeric: the last
    assert main_index([cp(None), cp(None), cp(None)]) == 2
    assert main_index([cp(0.2), cp(0.9), cp(0.5)], main=0) == 0  # asked for: honoured
    assert main_index([cp(0.2), cp(0.9), cp(0.5)], main=-1) == 2
    for bad in (3, -4):
        with pytest.raises(FactorlensError, match="out of range"):
            main_index([cp(0.2), cp(0.9), cp(0.5)], main=bad)


def test_checkpoints_report_links_each_checkpoint_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    blocks = [("input", (6, 6), "cp"), ("fc", (5,), "matrix")]
    images = rng.uniform(0, 1, (N, 6, 6)).astype(np.float32)
    labels = np.arange(N) % 2
    predictions = 1 - labels
    A = random_unit(rng, N, 3)
    dirs = []
    for k, name in enumerate(("runs/step-300", "runs/step-900", "other/noise-080")):
        res = build(blocks, A=A, seed=k, meta={"quality_score": [0.9, 0.5, 0.7][k]})
        d = tmp_path / name
        res.save(d)
        save_inputs(d, images, labels, ["c0", "c1"], predictions if k == 1 else None)
        write_report(d, res, images, labels, ["c0", "c1"], top_k=2)  # its own report
        dirs.append(d)
    out = tmp_path / "reports" / "all"
    assert write_checkpoints_report(out, dirs, main=1) == out
    text = (out / "index.html").read_text()
    traj = text.split('<section id="checkpoints-summary"')[1].split("</section>")[0]
    rows = re.findall(r'<tr id="checkpoint-(\d+)"( class="main")?>(.*?)</tr>', traj, re.S)
    assert [(i, bool(m)) for i, m, _ in rows] == [("1", False), ("2", True), ("3", False)]
    for (_, _, row), d in zip(rows, dirs, strict=True):
        href = re.search(r'<a href="([^"]+)">', row).group(1)
        assert not os.path.isabs(href) and "\\" not in href
        assert (out / href).resolve() == (d / "index.html").resolve()
    # the one shown in full (main=1) brings its predicted classes into the input views
    views = re.findall(r'<div class="input-view" id="input-(\d+)"(.*?)</dl>', text, re.S)
    assert views
    for i, view in views:
        assert f"<dt>predicted class</dt><dd>c{predictions[int(i)]}</dd>" in view
    # lines join checkpoints of one run only: step-300 → step-900, not → noise-080
    ns = "{http://www.w3.org/2000/svg}"
    scores = _svg(out / "figures" / "trajectory_scores.svg")
    assert len([el for el in scores.iter(f"{ns}path") if el.get("class") == "run"]) == 1
    assert len(list(scores.iter(f"{ns}circle"))) == 3
