"""The HTML report: self-contained page, figures, escaping, input kinds, top-k selection."""

from __future__ import annotations

import html
import itertools
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from factorlens.errors import FactorlensError
from factorlens.factorize.result import CMTFResult
from factorlens.report import top_indices, write_report
from factorlens.report.figures import pattern_to_pixels

N, R = 40, 3


def _unit(rng: np.random.Generator, rows: int, r: int = R) -> np.ndarray:
    m = rng.standard_normal((rows, r))
    return m / np.linalg.norm(m, axis=0)


def make_result(
    input_shape: tuple[int, ...] = (8, 8),
    layers: tuple[str, ...] = ("conv1", "fc"),
    *,
    input_model: str = "cp",
    seed: int = 0,
) -> CMTFResult:
    """A hand-built result: cp (or matrix) input block plus matrix layer blocks."""
    rng = np.random.default_rng(seed)
    names = ["input", *layers]
    shapes = [(N, *input_shape)] + [(N, 5 + 3 * i) for i in range(len(layers))]
    models = [input_model] + ["matrix"] * len(layers)
    if input_model == "cp":
        factors = {"input": [_unit(rng, s) for s in input_shape]}
    else:
        factors = {"input": [_unit(rng, int(np.prod(input_shape)))]}
    for name, shape in zip(layers, shapes[1:], strict=True):
        factors[name] = [_unit(rng, shape[1])]
    weights = {n: np.sort(rng.uniform(0.05, 0.9, R))[::-1].copy() for n in names}
    fit = {n: float(f) for n, f in zip(names, np.linspace(0.93, 0.41, len(names)), strict=True)}
    return CMTFResult(
        A=_unit(rng, N),
        block_names=names,
        block_shapes=shapes,
        block_models=models,
        factors=factors,
        weights=weights,
        fit=fit,
        loss_history=[3.0, 1.5, 1.2],
        options={"nonneg": False, "weighting": "equal", "block_norms": {"input": 4.5}},
        meta={"model": "SmallCNN (demo.py)", "data": "digits test split", "layers": list(layers)},
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
    assert "http://" not in text and "https://" not in text
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
        assert f"{100 * res.fit[name]:.1f}%" in text
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
    # fit + per component: pattern, mean, mean diff, 5 top and 5 bottom thumbnails
    assert len(uris) >= 1 + R * (3 + 5 + 5)
    assert text.count('class="thumb"') == R * (5 + 5)
    # inline SVG charts per component: strength, loadings histogram, class make-up, 2 layers
    assert text.count("<svg ") == R * 5

    pngs = _check_pngs(tmp_path / "rep")
    names = {p.name for p in pngs}
    assert {"overview_fit.png", "flow.png"} <= names
    for r in range(R):
        for part in ("pattern", "strength", "mean", "top", "bottom", "loadings"):
            assert f"component-{r + 1}_{part}.png" in names
        assert f"component-{r + 1}_block-1-conv1_units.png" in names
        assert f"component-{r + 1}_block-2-fc_units.png" in names


def test_thumbnails_are_top_loadings(tmp_path: Path) -> None:
    res = make_result()
    images = np.random.default_rng(2).uniform(0, 1, (N, 8, 8))
    text = write_report(tmp_path, res, images, top_k=4).read_text()
    for r in range(R):
        sec = text.split(f'<section id="component-{r + 1}"')[1].split("</section>")[0]
        top = sec.split('<div class="thumbs top">')[1].split("</div>")[0]
        shown = [int(m) for m in re.findall(r'alt="test input (\d+),', top)]
        assert shown == list(np.argsort(-res.A[:, r], kind="stable")[:4])
        bottom = sec.split('<div class="thumbs bottom">')[1].split("</div>")[0]
        shown = [int(m) for m in re.findall(r'alt="test input (\d+),', bottom)]
        assert shown == list(np.argsort(res.A[:, r], kind="stable")[:4])


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
    _check_pngs(tmp_path)  # mathtext-looking layer names do not break the charts


def test_colour_input(tmp_path: Path) -> None:
    res = make_result((3, 8, 8))
    images = np.random.default_rng(4).uniform(0, 1, (N, 3, 8, 8)).astype(np.float32)
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    _check_offline(text)
    assert text.count('class="component"') == R
    with Image.open(tmp_path / "figures" / "component-1_pattern.png") as im:
        assert im.mode == "RGB"
    with Image.open(tmp_path / "figures" / "component-1_top.png") as im:
        assert im.mode == "RGB"
    _check_pngs(tmp_path)


def test_multichannel_matrix_input(tmp_path: Path) -> None:
    res = make_result((2, 6, 5), input_model="matrix")
    images = np.random.default_rng(5).uniform(0, 1, (N, 2, 6, 5))
    text = write_report(tmp_path, res, images, top_k=3).read_text()
    _check_offline(text)
    assert "one tile per channel" in text
    _check_pngs(tmp_path)


def test_vector_input(tmp_path: Path) -> None:
    res = make_result((20,), input_model="matrix")
    images = np.random.default_rng(6).uniform(0, 1, (N, 20))
    path = write_report(tmp_path, res, images, labels=np.arange(N) % 4, top_k=6)
    text = path.read_text()
    _check_offline(text)
    assert text.count('class="component"') == R
    assert text.count('class="thumb"') == R * 2 * 6
    names = {p.name for p in _check_pngs(tmp_path)}
    assert "component-1_pattern_strip.png" in names and "component-1_pattern.png" in names


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
    names = {p.name for p in (tmp_path / "figures").glob("*.png")}
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
    res = make_result()

    def boom(name: str, r: int) -> np.ndarray:
        raise RuntimeError("crash while drawing")

    monkeypatch.setattr(res, "component_map", boom)
    with pytest.raises(RuntimeError):
        write_report(tmp_path, res, images)
    assert not (tmp_path / "index.html").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]


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
    assert flow.count('title="noise floor">&gt; 0.02<') == 2
    assert "absent" not in flow.split(f'<tr data-r="{R - 2}">')[1].split("</tr>")[0]
