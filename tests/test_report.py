"""The HTML report: self-contained page, figures, escaping, input kinds, top-k selection."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

import factorlens.report
from factorlens.errors import FactorlensError
from factorlens.factorize.result import CMTFResult
from factorlens.report import top_indices, write_report
from factorlens.report.pixels import pattern_to_pixels
from factorlens.testing import random_result

N, R = 40, 3


def make_result(
    input_shape: tuple[int, ...] = (8, 8),
    layers: tuple[str, ...] = ("conv1", "fc"),
    *,
    input_model: str = "cp",
    seed: int = 0,
) -> CMTFResult:
    """A hand-built result: cp (or matrix) input block plus matrix layer blocks."""
    names = ["input", *layers]
    shapes = [(N, *input_shape)] + [(N, 5 + 3 * i) for i in range(len(layers))]
    fit = {n: float(f) for n, f in zip(names, np.linspace(0.93, 0.41, len(names)), strict=True)}
    return random_result(
        names,
        shapes,
        R,
        seed=seed,
        models={"input": input_model},
        meta={"model": "SmallCNN (demo.py)", "data": "digits test split", "layers": list(layers)},
        block_fit=fit,
        loss_history=[3.0, 1.5, 1.2],
        options={"nonneg": False, "weighting": "equal", "block_norms": {"input": 4.5}},
    )


#: the page's own script elements: (id, type); no other script may appear
OWN_SCRIPTS = [("report-boot", None), ("report-data", "application/json"), ("report-js", None)]


class _Refs(HTMLParser):
    """Collects every src/href attribute value, every element id and every script's id/type."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.scripts: list[tuple[str | None, str | None]] = []
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "script":
            self.scripts.append((a.get("id"), a.get("type")))
        for key, value in attrs:
            if (
                key in ("src", "href", "action", "poster", "srcset", "xlink:href")
                and value is not None
            ):
                self.refs.append(value)
            if key == "id" and value is not None:
                self.ids.append(value)
            if key.startswith("on"):
                self.handlers.append(key)


def _parse(text: str) -> _Refs:
    p = _Refs()
    p.feed(text)
    return p


def _check_offline(text: str) -> _Refs:
    # the SVG namespace name is an identifier, not an address; nothing else may name one
    bare = text.replace(' xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in bare and "https://" not in bare
    assert "url(" not in text and "@import" not in text  # nothing fetched from CSS
    assert "fetch(" not in text and "XMLHttpRequest" not in text and "import(" not in text
    p = _parse(text)
    assert p.scripts == OWN_SCRIPTS  # only the page's own inline scripts, none with src
    assert not p.handlers  # no inline event handler attributes
    for ref in p.refs:
        assert ref.startswith("data:image/png;base64,") or ref.startswith("#"), ref
    for ref in p.refs:
        if ref.startswith("#"):
            assert ref[1:] in p.ids, f"dangling link {ref}"
    return p


def _check_pngs(out: Path) -> list[Path]:
    pngs = sorted((out / "figures").glob("*.png"))
    assert pngs
    for path in pngs:
        with Image.open(path) as im:
            im.verify()
            assert im.format == "PNG"
    return pngs


SVG_ROOT = "{http://www.w3.org/2000/svg}svg"


def _check_svgs(out: Path) -> list[Path]:
    """Every chart file parses as XML with an ``svg`` root in the SVG namespace."""
    svgs = sorted((out / "figures").glob("*.svg"))
    assert svgs
    for path in svgs:
        assert ET.parse(path).getroot().tag == SVG_ROOT, path.name
    return svgs


def _figures(out: Path) -> set[str]:
    return {p.name for p in _check_pngs(out)} | {p.name for p in _check_svgs(out)}


def _image(uri: str) -> Image.Image:
    """The image of a ``data:image/png;base64,…`` URI."""
    assert uri.startswith("data:image/png;base64,")
    im = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert im.format == "PNG"
    return im


def _thumb_lists(section: str) -> tuple[str, str]:
    """The top and the bottom thumbnails of a component section (in that order)."""
    top = section.split("<h4>Top ")[1].split("<h4>Bottom ")[0]
    bottom = section.split("<h4>Bottom ")[1].split("<h4>")[0]
    return top, bottom


def _luminance(colour: str) -> float:
    r, g, b = (int(colour[k : k + 2], 16) for k in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b


def test_report_page_and_figures(tmp_path: Path) -> None:
    res = make_result()
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 1, (N, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, N)
    path = write_report(
        tmp_path / "rep", res, images, labels, ["zero", "one", "two"], top_k=5, title="My run"
    )
    assert path == tmp_path / "rep" / "index.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    p = _check_offline(text)
    assert not [f for f in (tmp_path / "rep").iterdir() if f.name.endswith(".tmp")]

    for sid in ("overview", "flow", "components"):
        assert sid in p.ids
    comp_ids = [i for i in p.ids if re.fullmatch(r"component-\d+", i)]
    assert comp_ids == [f"component-{r + 1}" for r in range(R)]
    assert text.count('class="component"') == R
    # one card per block in every component, each a link target of its flow-map cell
    for r in range(R):
        assert f'href="#component-{r + 1}"' in text
        for j in range(len(res.block_names)):
            assert f"component-{r + 1}-block-{j}" in p.ids
            assert f'href="#component-{r + 1}-block-{j}"' in text

    for name in res.block_names:
        assert f">{name}<" in text
    for name in res.block_names:
        assert f"{100 * res.block_fit[name]:.1f}%" in text
    assert "SmallCNN (demo.py)" in text and "digits test split" in text
    assert "weighting" in text and "equal" in text
    assert "<title>My run</title>" in text
    assert "8 × 8" in text and f"{N} × 8 × 8" in text
    for r in range(R):
        for j, name in enumerate(res.block_names):
            assert f"{res.flow[r, j]:.3f}" in text, name
    # label names appear for reading
    assert "zero" in text or "one" in text or "two" in text

    uris = re.findall(r'src="(data:image/png;base64,[^"]+)"', text)
    # per component: flow-map thumbnail, pattern, mean, mean diff, 5 top and 5 bottom inputs
    assert len(uris) >= R * (4 + 5 + 5)
    assert text.count('class="thumb"') == R * (5 + 5)
    shown = set()
    for r in range(R):
        shown |= set(np.argsort(-res.A[:, r], kind="stable")[:5].tolist())
        shown |= set(np.argsort(res.A[:, r], kind="stable")[:5].tolist())
    # inline SVG charts: per component strength, loadings histogram, class make-up and the
    # 2 layers; the fit of each block; one loadings chart per test input shown
    assert text.count('class="input-view"') == len(shown)
    assert text.count("<svg ") == R * 5 + 1 + len(shown)

    # the flow map: an HTML table, one row per component with its pattern's thumbnail,
    # shaded per row (the strongest block of every row has the darkest, and the same, shade)
    flow = text.split('<section id="flow">')[1].split("</section>")[0]
    assert '<table class="flow flow-normal">' in flow
    rows = re.findall(r'<tr data-r="(\d+)">(.*?)</tr>', flow, re.S)
    assert [int(r) for r, _ in rows] == list(range(R))
    darkest = set()
    for r, row in rows:
        r = int(r)
        assert len(re.findall(r'<img [^>]*class="px fthumb"', row)) == 1
        thumb = re.search(r'<img src="([^"]+)" alt="C(\d+) input pattern"', row)
        assert thumb and int(thumb.group(2)) == r + 1
        _image(thumb.group(1)).verify()
        shades = re.findall(r'<td class="cell" style="background:(#[0-9a-f]{6});', row)
        assert len(shades) == len(res.block_names)
        lum = [_luminance(c) for c in shades]
        strongest = int(np.argmax(np.abs(res.flow[r])))
        assert int(np.argmin(lum)) == strongest
        assert all(lum[strongest] < v for j, v in enumerate(lum) if j != strongest)
        darkest.add(shades[strongest])
    assert len(darkest) == 1  # each row scaled to its own maximum

    names = _figures(tmp_path / "rep")
    assert "overview_fit.svg" in names
    for r in range(R):
        for part in ("pattern", "mean", "mean_diff"):
            assert f"component-{r + 1}_{part}.png" in names
        for part in ("strength", "loadings", "classes"):
            assert f"component-{r + 1}_{part}.svg" in names
        assert f"component-{r + 1}_block-1-conv1_units.svg" in names
        assert f"component-{r + 1}_block-2-fc_units.svg" in names
    # the chart files are the charts the page embeds
    fit = (tmp_path / "rep" / "figures" / "overview_fit.svg").read_text(encoding="utf-8")
    assert fit.strip() in text


def test_thumbnails_are_top_loadings(tmp_path: Path) -> None:
    res = make_result()
    images = np.random.default_rng(2).uniform(0, 1, (N, 8, 8))
    text = write_report(tmp_path, res, images, top_k=4).read_text()
    for r in range(R):
        sec = text.split(f'<section id="component-{r + 1}"')[1].split("</section>")[0]
        top, bottom = _thumb_lists(sec)
        shown = [int(m) for m in re.findall(r'alt="test input (\d+),', top)]
        assert shown == list(np.argsort(-res.A[:, r], kind="stable")[:4])
        # each thumbnail opens that input's own view
        assert [int(m) for m in re.findall(r'href="#input-(\d+)"', top)] == shown
        shown = [int(m) for m in re.findall(r'alt="test input (\d+),', bottom)]
        assert shown == list(np.argsort(res.A[:, r], kind="stable")[:4])
        assert [int(m) for m in re.findall(r'href="#input-(\d+)"', bottom)] == shown


def test_escaping(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    res = make_result(layers=(evil, "fc$\\nosuchcommand{$"))
    res.meta["data"] = "<b>bold</b> & co"
    labels = np.arange(N) % 2
    path = write_report(
        tmp_path,
        res,
        np.random.default_rng(3).uniform(0, 1, (N, 8, 8)),
        labels,
        ["a&<>b", "<img src=x onerror=alert(2)>"],
        top_k=N,  # every input shown, so every class name appears
        title="<i>title</i>",
    )
    text = path.read_text()
    # the only script elements are the page's own three; the evil name never opens one
    assert text.lower().count("<script") == len(OWN_SCRIPTS)
    assert "<script>alert" not in text.lower() and "alert(1)</script>" not in text
    assert "<b>bold" not in text and "<i>title" not in text and "<img src=x" not in text
    assert html.escape(evil) in text
    assert "a&amp;&lt;&gt;b" in text
    assert "&lt;i&gt;title&lt;/i&gt;" in text
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; co" in text
    p = _check_offline(text)
    assert "b" not in p.tags and "i" not in p.tags
    # inside the inline JSON too: no "</" at all, and it parses back to the exact names
    data_text = text.split('<script type="application/json" id="report-data">')[1]
    data_text = data_text.split("</script>")[0]
    assert "</" not in data_text and "<" not in data_text
    assert json.loads(data_text)["blocks"] == res.block_names
    _check_pngs(tmp_path)
    svgs = _check_svgs(tmp_path)  # the names stay text in the chart files too
    units = [p for p in svgs if p.name.endswith("_units.svg")]
    assert units and all(p.name.startswith("component-") for p in units)
    assert not [p for p in (tmp_path / "figures").iterdir() if "<" in p.name or ">" in p.name]
    # parsed back, the names are exactly the text of the labels and tooltips
    ns = "{http://www.w3.org/2000/svg}"
    fit = ET.parse(tmp_path / "figures" / "overview_fit.svg").getroot()
    assert evil[:17] + "…" in [el.text for el in fit.iter(f"{ns}text")]  # clipped label
    strength = ET.parse(tmp_path / "figures" / "component-1_strength.svg").getroot()
    tips = [el.text or "" for el in strength.iter(f"{ns}title")]
    assert any(t.startswith(f"{evil}: ") for t in tips)
    assert any(t.startswith("fc$\\nosuchcommand{$: ") for t in tips)


def test_a_very_long_class_name_is_shortened_on_the_page(tmp_path: Path) -> None:
    long = "x" * 5000
    path = write_report(
        tmp_path,
        make_result(),
        np.random.default_rng(3).uniform(0, 1, (N, 8, 8)),
        np.arange(N) % 2,
        [long, "b"],
        top_k=N,
    )
    text = path.read_text()
    assert long not in text and "x" * 39 + "…" in text


def test_colour_input(tmp_path: Path) -> None:
    res = make_result((3, 8, 8))
    images = np.random.default_rng(4).uniform(0, 1, (N, 3, 8, 8)).astype(np.float32)
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    _check_offline(text)
    assert text.count('class="component"') == R
    for name in ("component-1_pattern.png", "component-1_mean.png"):
        with Image.open(tmp_path / "figures" / name) as im:
            assert im.mode == "RGB"
    # the top and bottom thumbnails are colour images
    top, bottom = _thumb_lists(text.split('<section id="component-1"')[1])
    thumbs = re.findall(r'<img src="([^"]+)" alt="test input \d+,', top + bottom)
    assert len(thumbs) == 6
    for uri in thumbs:
        assert _image(uri).mode == "RGB"
    _check_pngs(tmp_path)
    _check_svgs(tmp_path)


def test_multichannel_matrix_input(tmp_path: Path) -> None:
    res = make_result((2, 6, 5), input_model="matrix")
    images = np.random.default_rng(5).uniform(0, 1, (N, 2, 6, 5))
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    _check_offline(text)
    assert "one tile per channel (C = 2)" in text
    # two 6×5 tiles side by side: the pattern is wider than high
    with Image.open(tmp_path / "figures" / "component-1_pattern.png") as im:
        assert im.size[0] > 1.5 * im.size[1]
    _check_pngs(tmp_path)
    _check_svgs(tmp_path)


def test_vector_input(tmp_path: Path) -> None:
    res = make_result((20,), input_model="matrix")
    images = np.random.default_rng(6).uniform(0, 1, (N, 20))
    path = write_report(tmp_path, res, images, labels=np.arange(N) % 4, top_k=6)
    text = path.read_text()
    _check_offline(text)
    assert text.count('class="component"') == R
    assert text.count('class="thumb"') == R * 2 * 6
    # numeric labels are named as classes in the flow map ("class 2 40%", not "2 40%")
    mixes = re.findall(r'<span class="cls">([^<]*)</span>', text)
    assert len(mixes) == R and all(
        re.fullmatch(r"class \d \d+%(, class \d \d+%)*", m) for m in mixes
    )
    names = _figures(tmp_path)
    for name in ("component-1_pattern.png", "component-1_mean.png", "component-1_mean_diff.png"):
        assert name in names
        with Image.open(tmp_path / "figures" / name) as im:
            assert im.size[0] > 5 * im.size[1], name  # a 1-D input is drawn as a strip


def test_flattened_images_for_image_block(tmp_path: Path) -> None:
    res = make_result((8, 8))
    images = np.random.default_rng(7).uniform(0, 1, (N, 64))
    text = write_report(tmp_path, res, images, top_k=2).read_text()
    assert text.count('class="component"') == R


def test_rerun_replaces_old_report(tmp_path: Path) -> None:
    images = np.random.default_rng(8).uniform(0, 1, (N, 8, 8))
    write_report(tmp_path, make_result(), images)
    res = make_result()
    for name in res.block_names:  # keep only 2 components
        res.weights[name] = res.weights[name][:2]
        res.factors[name] = [f[:, :2] for f in res.factors[name]]
    res.A = res.A[:, :2]
    write_report(tmp_path, res, images)
    names = {p.name for p in (tmp_path / "figures").iterdir()}
    assert any(n.startswith("component-2") and n.endswith(".png") for n in names)
    assert any(n.startswith("component-2") and n.endswith(".svg") for n in names)
    assert not any(n.startswith("component-3") for n in names)
    assert (tmp_path / "index.html").read_text().count('class="component"') == 2


def test_bad_inputs(tmp_path: Path) -> None:
    res = make_result()
    good = np.zeros((N, 8, 8))
    with pytest.raises(FactorlensError, match="samples"):
        write_report(tmp_path, res, np.zeros((N - 1, 8, 8)))
    with pytest.raises(FactorlensError, match="shape"):
        write_report(tmp_path, res, np.zeros((N, 7, 8)))
    with pytest.raises(FactorlensError, match="labels"):
        write_report(tmp_path, res, good, labels=np.zeros(N + 1))
    with pytest.raises(FactorlensError, match="predictions"):
        write_report(tmp_path, res, good, predictions=np.zeros(N - 1, dtype=int))
    with pytest.raises(FactorlensError, match="top_k"):
        write_report(tmp_path, res, good, top_k=0)
    assert not (tmp_path / "index.html").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FactorlensError, match="not a directory"):
        write_report(blocker, res, good)


def test_crash_leaves_no_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(9).uniform(0, 1, (N, 8, 8))
    write_report(tmp_path, make_result(), images)
    assert (tmp_path / "index.html").exists()
    before = {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    res = make_result()

    def boom(name: str, r: int) -> np.ndarray:
        raise RuntimeError("crash while drawing")

    # a crash while the page is built: nothing was touched, the previous report is intact
    monkeypatch.setattr(res, "component_map", boom)
    with pytest.raises(RuntimeError, match="while drawing"):
        write_report(tmp_path, res, images)
    assert {p.name: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    monkeypatch.undo()

    # a crash while the files are written: no page is left that looks complete
    import factorlens.report.files as files

    real = files.render

    def render(template: str, /, **context):
        if template == "chart.svg.j2":
            raise RuntimeError("crash while writing")
        return real(template, **context)

    monkeypatch.setattr(files, "render", render)
    with pytest.raises(RuntimeError, match="while writing"):
        write_report(tmp_path, make_result(), images)
    assert not (tmp_path / "index.html").exists()
    assert not [f for f in tmp_path.rglob("*") if f.name.endswith(".tmp")]


def test_pattern_colours_centred_at_zero() -> None:
    x = np.array([[-2.0, 0.0], [1.0, 2.0]])
    pix, vmax, signed = pattern_to_pixels(x, "gray")
    assert signed and vmax == 2.0 and pix.shape == (2, 2, 3)
    white = pix[0, 1].astype(int)
    assert (white > 240).all()  # zero is (near-)white
    assert pix[1, 1, 0] > pix[1, 1, 2]  # positive is red
    assert pix[0, 0, 2] > pix[0, 0, 0]  # negative is blue


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float64,
        st.integers(1, 60),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
    ),
    st.integers(0, 70),
)
def test_top_indices_are_k_largest(loadings: np.ndarray, k: int) -> None:
    idx = top_indices(loadings, k)
    n = loadings.size
    assert idx.dtype == np.int64 and len(idx) == min(k, n)
    assert len(set(idx.tolist())) == len(idx)
    chosen = loadings[idx]
    # exactly the k largest values, largest first
    assert np.array_equal(chosen, np.sort(loadings)[::-1][: len(idx)])
    rest = np.delete(loadings, idx)
    if len(idx) and rest.size:
        assert chosen.min() >= rest.max()
    # ties: lower index first, and a left-out tie never has a lower index than a chosen one
    for a, b in itertools.pairwise(idx):
        if loadings[a] == loadings[b]:
            assert a < b
    if len(idx) and rest.size:
        last = chosen[-1]
        left_out = np.setdiff1d(np.flatnonzero(loadings == last), idx)
        if left_out.size:
            assert left_out.min() > idx[loadings[idx] == last].max()


def test_top_indices_nan_last() -> None:
    x = np.array([0.1, np.nan, 0.5, -np.inf, 0.3])
    assert top_indices(x, 4).tolist() == [2, 4, 0, 3]
    assert top_indices(x, 0).tolist() == []


def test_flow_map_marks_strengths_at_the_floor_absent(tmp_path: Path) -> None:
    res = make_result()
    res.weights["fc"][R - 1] = 0.0  # the weakest component, set to zero in fc by the penalty
    res.weights["conv1"][R - 1] = 0.01  # above zero but below conv1's floor
    res.options["absent_below"] = {"input": 0.0, "conv1": 0.02, "fc": 0.02}
    images = np.random.default_rng(2).uniform(0, 1, (N, 8, 8))
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    flow = text.split('<section id="flow">')[1].split("</section>")[0]
    row = flow.split(f'<tr data-r="{R - 1}">')[1].split("</tr>")[0]
    assert row.count(">absent</a>") == 2  # conv1 and fc; the input keeps its number
    assert flow.count('count as absent">floor 0.02<') == 2  # the floor, its tooltip in words

    res.options["absent_below"] = {"input": 0.0, "conv1": 4.7e-9, "fc": 0.02}  # round-off
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    flow = text.split('<section id="flow">')[1].split("</section>")[0]
    assert 'count as absent">floor ≈ 0<' in flow and "e-09" not in flow
    assert "absent" not in flow.split(f'<tr data-r="{R - 2}">')[1].split("</tr>")[0]


# --------------------------------------------------------------------------- per-input view
def _input_view(text: str, i: int) -> str:
    m = re.search(
        rf'<div class="input-view" id="input-{i}"[^>]*>(.*?)</figure>\n</div>', text, re.S
    )
    assert m, f"no view of test input {i}"
    return m.group(1)


def test_every_thumbnail_opens_its_input_view(tmp_path: Path) -> None:
    res = make_result()
    rng = np.random.default_rng(11)
    images = rng.uniform(0, 1, (N, 8, 8))
    labels = rng.integers(0, 3, N)
    predictions = (labels + 1) % 3  # never the true class, so the two cannot be confused
    names = ["zero", "one", "two"]
    text = write_report(
        tmp_path / "a", res, images, labels, names, predictions=predictions, top_k=4
    ).read_text()
    _check_offline(text)
    linked = {int(i) for i in re.findall(r'href="#input-(\d+)"', text)}
    views = [int(i) for i in re.findall(r'class="input-view" id="input-(\d+)"', text)]
    expected = set()
    for r in range(R):
        expected |= set(np.argsort(-res.A[:, r], kind="stable")[:4].tolist())
        expected |= set(np.argsort(res.A[:, r], kind="stable")[:4].tolist())
    assert linked == expected and sorted(views) == sorted(expected)  # one view each
    for i in expected:
        view = _input_view(text, i)
        assert f"<h3>Test input #{i}</h3>" in view
        assert f"<dt>true class</dt><dd>{names[labels[i]]}</dd>" in view
        assert f"<dt>predicted class</dt><dd>{names[predictions[i]]}</dd>" in view
        assert view.count('alt="test input ' + str(i) + '"') == 1  # its image
        # its loading on every component, each bar linking to that component
        for r in range(R):
            assert f"C{r + 1}: loading {res.A[i, r]:+.4f}, above" in view
            assert f'href="#component-{r + 1}"' in view

    # without predictions (nor labels) the view says so
    text = write_report(tmp_path / "b", res, images, top_k=2).read_text()
    views = [int(i) for i in re.findall(r'class="input-view" id="input-(\d+)"', text)]
    assert views
    for i in views:
        view = _input_view(text, i)
        assert "<dt>predicted class</dt><dd>not recorded</dd>" in view
        assert "<dt>true class</dt><dd>no labels given</dd>" in view


# --------------------------------------------------------------------------- code size
def test_report_modules_stay_small() -> None:
    """No module of the report package grows past 400 lines."""
    files = sorted(Path(factorlens.report.__file__).parent.glob("*.py"))
    assert len(files) >= 10  # view, view_component, view_checkpoints, charts, pixels, …
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in files}
    assert max(sizes.values()) <= 400, sizes


def test_a_conv_layers_maps_explain_their_symbols(tmp_path: Path) -> None:
    res = random_result(["input", "conv"], [(N, 8, 8), (N, 4, 6, 6)], 2, models={"input": "cp"})
    images = np.random.default_rng(3).uniform(0, 1, (N, 8, 8))
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    hints = re.findall(r'<abbr class="hint" title="([^"]+)">\?</abbr>', text)
    assert len(hints) == 2 * 2  # "where" and "signed" for each of the 2 components
    assert all(h.startswith("at each position, the sum over channels") for h in hints)


def test_an_outlier_does_not_flatten_an_evidence_chart() -> None:
    from factorlens.report import charts

    values = [100.0, 99.9, -40.0, 20.0, -9e7]  # CORCONDIA: one value far below the rest
    series = [{"name": "corcondia", "values": values, "colour": "#333", "runs": []}]
    chart = charts.points([str(r) for r in range(1, 6)], series, floor=-100.0, height=96)
    items = [el for g in chart["groups"] if g["css"] == "series" for el in g["items"]]
    ys = [float(el["a"]["cy"]) for el in items if el["t"] == "circle"]
    assert len(ys) == 4 and max(ys) - min(ys) > 30  # the four in range spread over the panel
    (below,) = [el for el in items if el["t"] == "path"]
    assert "-9e+07" in below["tip"] and "below the axis" in below["tip"]


def test_the_selector_and_the_panel_name_the_same_block(tmp_path: Path) -> None:
    res = make_result(layers=("conv1", "conv2", "fc"), seed=4)
    images = np.random.default_rng(4).uniform(0, 1, (N, 8, 8))
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    for r in range(R):
        (entry,) = re.findall(rf"C{r + 1} · stands out in ([\w.#]+)", text)
        section = text.split(f'id="component-{r + 1}"')[1].split("</h3>")[0]
        strongest = re.search(r'strongest in <span class="name">([^<]+)</span>', section)[1]
        shown = re.findall(r'stands out in <span class="name">([^<]+)</span>', section)
        # the panel says where the selector's block is: as the strongest, or in the same words
        assert entry == strongest or shown == [entry], (entry, strongest, shown)
