"""The report in a real browser (headless Chromium through Playwright), opened from disk.

Needs Debian's ``chromium`` (``/usr/bin/chromium``, or ``FACTORLENS_CHROMIUM``) and the
``playwright`` Python client (its own browser downloads are not used). Without them the tests
skip with the reason — except under CI (``CI`` set), where they fail, so CI cannot silently
skip them. Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from factorlens.factorize.result import CMTFResult
from factorlens.pipeline import (
    checkpoints_report,
    compare_store,
    save_inputs,
    write_checkpoints_report,
)
from factorlens.report import write_report
from factorlens.testing import memory_store, model_pair_blocks, random_result, unit_columns

CHROMIUM = os.environ.get("FACTORLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
R = 6
EVIL = ["<script>alert(1)</script>", '"><img src=x onerror=alert(2)>']


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python client is not installed (pip install playwright)"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set FACTORLENS_CHROMIUM)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator:
    reason = _missing()
    if reason is not None:
        if _in_ci():
            pytest.fail(f"browser test cannot run under CI: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


# --------------------------------------------------------------------------- pages to open
def _digits(n: int = 240) -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.images[:n] / 16.0).astype(np.float32), d.target[:n]


def _result(names: list[str], *, seed: int = 0, A: np.ndarray | None = None, **meta) -> CMTFResult:
    """input 8×8 (cp), conv 4×8×8, relu 4×8×8, fc 16, out 10 — random unit factors."""
    n = 240
    shapes = [(n, 8, 8), (n, 4, 8, 8), (n, 4, 8, 8), (n, 16), (n, 10)]
    return random_result(
        names,
        shapes,
        R,
        seed=seed,
        models={names[0]: "cp"},
        A=A,
        meta={"model": "browser-test net", "modules": {names[1]: "Conv2d"}, **meta},
        loss_history=[1.0, 0.4],
    )


NAMES = ["input", "features.0", "features.1", "classifier.1", "classifier.3"]


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("browser")
    images, labels = _digits()
    classes = [str(i) for i in range(10)]
    scan = {"ranks": [2, 4, 6, 8], "criteria": {"fit": [0.5, 0.7, 0.8, 0.82]}, "chosen": 6}
    main = write_report(
        root / "main", _result(NAMES, rank_scan=scan), images, labels, classes, top_k=6
    )
    evil = write_report(
        root / "evil",
        _result(["input", "features.0", EVIL[0], EVIL[1], "out"]),
        images,
        labels,
        ["<b>zero</b>", *classes[1:]],
        title=EVIL[0],
    )
    resnet = write_report(  # the names of a real network and of real classes
        root / "resnet",
        _result(["input", "layer1.0.conv1", "layer3.0.downsample.1", "layer4.1.conv2", "fc"]),
        images,
        labels,
        CIFAR10,
    )
    # two checkpoints: the second's components are the first's, permuted, plus noise
    first = _result(NAMES, seed=1, checkpoint="epoch 1", rank_scan=scan)
    rng = np.random.default_rng(2)
    A2 = unit_columns(first.A[:, [1, 0, 3, 2, 5, 4]] + 0.02 * rng.standard_normal(first.A.shape))
    second = _result(NAMES, seed=2, A=A2, checkpoint="epoch <2>", quality_score=0.9)
    dirs = []
    for name, res in (("ep1", first), ("ep2", second)):
        res.save(root / name)
        save_inputs(root / name, images, labels, classes)
        dirs.append(root / name)
    traj = write_checkpoints_report(root / "traj", dirs, title="checkpoints") / "index.html"
    # a zoo scored by `quality --no-rank --out`: long absolute paths that share their prefix,
    # two kinds of run, each checkpoint's report in checkpoints/NN-name/ linking back
    zoo = []
    for k, (name, score, acc) in enumerate(ZOO):
        label = f"/home/user/experiments/2026/zoo-cifar/checkpoints/{name}.pt"
        quality = {"accuracy": acc, "score_sd": 0.01 * (k + 1), "warnings": [DOUBT]}
        res = _result(
            NAMES,
            seed=3 + k,
            checkpoint=label,
            quality_score=score,
            quality=quality,
            overview="../../index.html",
        )
        d = root / "zoo" / "checkpoints" / f"{k + 1:02d}-{name}"
        res.save(d)
        save_inputs(d, images, labels, classes)
        write_report(d, res, images, labels, classes)
        zoo.append(d)
    ckpts = checkpoints_report(root / "zoo", zoo, title="zoo")
    # two models with planted shared and unique components, through the real comparison
    blocks, _ = model_pair_blocks(0, N=120, labels=("clean", "noisy"))
    store = memory_store(blocks, {"models": {"clean": "clean.pt", "noisy": "<b>noisy</b>.pt"}})
    compare_store(store, out=root / "compare", rank=7, progress=False)
    return {
        "main": main,
        "evil": evil,
        "traj": traj,
        "zoo": ckpts,
        "resnet": resnet,
        "compare": root / "compare" / "index.html",
    }


DOUBT = "most checkpoints look poor (median estimated accuracy 0.40): <b>shared</b> mistakes"
CIFAR10 = "airplane automobile bird cat deer dog frog horse ship truck".split()

#: (name, score, accuracy): the best score (step-900) is not the first nor the last
ZOO = (
    ("step-100", 0.3, 0.41),
    ("step-300", 0.4, 0.62),
    ("step-900", 0.7, 0.91),
    ("step-2700", 0.69, 0.90),
    ("noise-040", 0.35, 0.55),
    ("noise-080", 0.2, 0.35),
)


class _Watch:
    """Everything that must not happen on the page: console errors, uncaught exceptions,
    failed or external requests, dialogs (an injected alert would open one)."""

    def __init__(self, page) -> None:
        self.problems: list[str] = []
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}")
                if m.type in ("error", "warning")
                else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"request failed: {r.url}"))
        page.on(
            "request",
            lambda r: (
                self.problems.append(f"external request: {r.url}")
                if not r.url.startswith(("file://", "data:"))
                else None
            ),
        )

        def dialog(d) -> None:
            self.problems.append(f"dialog: {d.message}")
            d.dismiss()

        page.on("dialog", dialog)

    def check(self) -> None:
        assert not self.problems, self.problems


def _open(browser, path: Path, *, js: bool = True, size: tuple[int, int] = (1360, 900)):
    width, height = size
    context = browser.new_context(
        viewport={"width": width, "height": height}, java_script_enabled=js
    )
    page = context.new_page()
    watch = _Watch(page)
    page.goto(path.as_uri())
    if js:
        page.wait_for_selector('body[data-ready="1"]', state="attached", timeout=10_000)
    return context, page, watch


def _shown(page) -> list[str]:
    """Ids of the component sections that are actually displayed."""
    return page.eval_on_selector_all(
        "section.component", "els => els.filter(e => e.offsetParent !== null).map(e => e.id)"
    )


def _pattern_src(page) -> str:
    return page.get_attribute("section.component.current .card.input img", "src")


def _screenshot(target, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    target.screenshot(path=str(ARTIFACTS / name))
    assert (ARTIFACTS / name).stat().st_size > 1000


# --------------------------------------------------------------------------- tests
def test_explore_components_and_flow_map(browser, pages) -> None:
    context, page, watch = _open(browser, pages["main"])
    try:
        assert _shown(page) == ["component-1"]
        assert page.text_content("#component-status") == f"C1 of {R}"
        assert page.is_visible("#overview") and page.is_visible("#rank-evidence")
        # every image of the visible component decoded (data: URIs work from file://)
        broken = page.eval_on_selector_all(
            "section.component.current img", "els => els.filter(i => !i.naturalWidth).length"
        )
        assert broken == 0
        _screenshot(page.locator("#flow"), "flow-map.png")

        # a flow-map cell opens that component at that layer
        before = (_pattern_src(page), page.text_content("section.component.current h3"))
        page.click('#flow a[href="#component-4-block-2"]')
        assert _shown(page) == ["component-4"]
        after = (_pattern_src(page), page.text_content("section.component.current h3"))
        assert after[0] != before[0] and after[1] != before[1]
        assert page.get_attribute("#component-4-block-2", "class").split()[-1] == "focus"
        assert page.text_content("#component-status") == f"C4 of {R} · at {NAMES[2]}"
        assert "current" in (page.get_attribute('#flow tr[data-r="3"]', "class") or "")
        box = page.locator("#component-4-block-2").bounding_box()
        assert box is not None and 0 <= box["y"] < 900  # scrolled into view
        assert page.evaluate("location.hash") == "#component-4-block-2"
        _screenshot(page, "component-view.png")

        # arrow keys step through the components, and stop at the ends
        page.keyboard.press("ArrowRight")
        assert _shown(page) == ["component-5"]
        assert page.evaluate("location.hash") == "#component-5"
        page.keyboard.press("ArrowLeft")
        page.keyboard.press("ArrowLeft")
        assert _shown(page) == ["component-3"]
        assert page.input_value("#component-select") == "2"
        page.select_option("#component-select", "0")
        assert _shown(page) == ["component-1"]
        page.keyboard.press("ArrowLeft")  # the selector gave focus back: keys work again
        assert _shown(page) == ["component-1"]
        page.click("#component-next")
        assert _shown(page) == ["component-2"]
        page.select_option("#component-select", str(R - 1))
        assert _shown(page) == [f"component-{R}"]
        page.keyboard.press("ArrowRight")
        assert _shown(page) == [f"component-{R}"]

        # the strength bars inside a component link to its layer cards
        page.click(f'section.component.current svg a[href="#component-{R}-block-4"]')
        assert page.get_attribute(f"#component-{R}-block-4", "class").split()[-1] == "focus"
        # a row header of the flow map opens the component
        page.click('#flow a[href="#component-2"]')
        assert _shown(page) == ["component-2"]
        watch.check()
    finally:
        context.close()


def test_user_strings_render_as_text(browser, pages) -> None:
    context, page, watch = _open(browser, pages["evil"])
    try:
        assert page.title() == EVIL[0]
        blocks = page.inner_text("#overview table.blocks")
        assert EVIL[0] in blocks and EVIL[1] in blocks
        data = page.evaluate("JSON.parse(document.getElementById('report-data').textContent)")
        assert data["blocks"][2:4] == EVIL
        assert page.locator("img[src='x']").count() == 0
        assert page.locator("script").count() == 3
        page.click('#flow a[href="#component-1-block-3"]')
        assert page.text_content("#component-status") == f"C1 of {R} · at {EVIL[1]}"
        assert "<b>zero</b>" in page.inner_text("#overview")  # a class name, shown as text
        watch.check()
    finally:
        context.close()


def test_page_reads_without_javascript(browser, pages) -> None:
    context, page, watch = _open(browser, pages["main"], js=False)
    try:
        assert len(_shown(page)) == R  # every component, one after the other
        assert page.is_visible("#flow table.flow") and page.is_visible("#overview")
        assert not page.is_visible("#component-nav")  # the explorer toolbar needs the script
        page.click('#flow a[href="#component-3-block-1"]')  # plain anchors still work
        assert page.evaluate("location.hash") == "#component-3-block-1"
        watch.check()
    finally:
        context.close()


def test_checkpoints_view(browser, pages) -> None:
    context, page, watch = _open(browser, pages["traj"])
    try:
        assert page.is_visible("#trajectory")
        head = page.inner_text("#trajectory table.tracks thead")
        assert "epoch 1" in head and "epoch <2>" in head
        rows = page.locator("#trajectory table.tracks tbody tr")
        assert rows.count() == R  # the permutation was found: no track broke
        first = page.inner_text("#trajectory table.tracks tbody tr >> nth=0")
        assert "C1" in first and "C2" in first  # epoch 1's C1 is epoch 2's C2
        _screenshot(page.locator("#trajectory"), "checkpoints.png")
        page.click('#trajectory a[href="#component-3"]')
        assert _shown(page) == ["component-3"]
        watch.check()
    finally:
        context.close()


def _box(page, selector: str) -> dict:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box


def _in_view(box: dict, height: int) -> bool:
    return box["y"] >= 0 and box["y"] + box["height"] <= height


def test_first_screen_answers_the_questions(browser, pages) -> None:
    """At 1440×900 the flow map (with a pattern per row) and the first component's pattern and
    top inputs are on the first screen; the run's details come later."""
    context, page, watch = _open(browser, pages["main"], size=(1440, 900))
    try:
        assert _in_view(_box(page, "#flow table.flow"), 900)
        assert page.locator("#flow table.flow img.fthumb").count() == R
        assert _in_view(_box(page, "section.component.current .card.input img"), 900)
        assert _box(page, "section.component.current .thumbs .thumb")["y"] < 900
        assert _box(page, "#overview")["y"] > 900  # metadata below the answers
        _screenshot(page, "demo-1440.png")
        watch.check()
    finally:
        context.close()


def test_clicking_a_flow_cell_keeps_the_pattern_visible(browser, pages) -> None:
    context, page, watch = _open(browser, pages["main"], size=(1440, 900))
    try:
        page.click('#flow a[href="#component-3-block-4"]')  # the last layer card
        card = _box(page, "#component-3-block-4")
        pattern = _box(page, "#component-3 .card.input img")
        assert 0 <= card["y"] < 900
        assert _in_view(pattern, 900), pattern  # sticky above the layer cards
        assert card["y"] >= pattern["y"] + pattern["height"]  # not hidden under it
        # browsing the cards from the first one down: the pattern stays while cards remain
        page.click('#flow a[href="#component-3-block-1"]')
        page.mouse.wheel(0, 250)
        page.wait_for_timeout(150)
        section = _box(page, "#component-3")
        assert section["y"] < 0 and section["y"] + section["height"] > 900  # scrolled inside
        assert _in_view(_box(page, "#component-3 .card.input img"), 900)
        watch.check()
    finally:
        context.close()


def test_arrow_keys_leave_one_highlight_in_the_flow_map(browser, pages) -> None:
    context, page, watch = _open(browser, pages["main"], size=(1440, 900))
    try:
        cell = '#flow a[href="#component-3-block-4"]'
        page.click(cell)
        assert (
            page.evaluate(f"getComputedStyle(document.querySelector('{cell}')).outlineStyle")
            != "none"
        )
        page.mouse.move(5, 5)  # away: a hovered cell is outlined by right
        page.keyboard.press("ArrowRight")
        assert _shown(page) == ["component-4"]
        outlined = page.eval_on_selector_all(
            "#flow td.cell a",
            "els => els.filter(e => getComputedStyle(e).outlineStyle !== 'none').length",
        )
        assert outlined == 0  # the clicked cell of C3 no longer looks current
        assert page.locator("#flow tr.current").count() == 1
        watch.check()
    finally:
        context.close()


@pytest.mark.parametrize("name", ["main", "resnet"])
def test_the_selector_shows_its_text_whole(browser, pages, name) -> None:
    context, page, watch = _open(browser, pages[name], size=(1440, 900))
    try:
        # each entry's text, in the selector's font, against the room beside its arrow
        room, widths = page.evaluate(
            """() => {
                const s = document.querySelector('#component-select');
                const ctx = document.createElement('canvas').getContext('2d');
                ctx.font = getComputedStyle(s).font;
                return [s.clientWidth - 24, [...s.options].map(o => ctx.measureText(o.text).width)];
            }"""
        )
        assert len(widths) == R and max(widths) <= room, (room, widths)
        texts = page.eval_on_selector_all("#component-select option", "els => els.map(e => e.text)")
        assert all(" · stands out in " in t for t in texts)
        watch.check()
    finally:
        context.close()


def test_per_input_view_opens_and_closes(browser, pages) -> None:
    context, page, watch = _open(browser, pages["main"], size=(1440, 900))
    try:
        thumb = page.locator("section.component.current .thumbs .thumb a").first
        href = thumb.get_attribute("href")
        assert href is not None and href.startswith("#input-")
        thumb.click()
        view = page.locator(href)
        assert view.is_visible()
        text = view.inner_text()
        assert "true class" in text and "predicted class" in text
        assert view.locator("svg.chart a").count() == R  # a loading per component, linked
        page.keyboard.press("Escape")
        page.wait_for_timeout(100)
        assert not view.is_visible()
        assert _shown(page) == ["component-1"]
        # from the per-input view, a component's bar opens that component
        thumb.click()
        view.locator('svg.chart a[href="#component-2"]').click()
        assert _shown(page) == ["component-2"] and not view.is_visible()
        watch.check()
    finally:
        context.close()


@pytest.mark.parametrize("name", ["main", "zoo"])
def test_phone_width_has_no_horizontal_overflow(browser, pages, name) -> None:
    context, page, watch = _open(browser, pages[name], size=(390, 844))
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # block names never break mid-word: each header cell's name is one line
        heights = page.eval_on_selector_all(
            "#flow th.name",
            "els => els.map(e => e.firstChild.parentElement.getClientRects().length)",
        )
        assert heights and all(h == 1 for h in heights)
        assert (
            page.evaluate(
                "getComputedStyle(document.querySelector('section.component.current .chead')).position"
            )
            != "sticky"
        )  # nothing tall sticks on a phone
        _screenshot(page, f"{name}-390.png")
        watch.check()
    finally:
        context.close()


def _text_sizes(page, selector: str) -> list[float]:
    """Rendered font sizes (CSS px) of the text in ``selector``: HTML text and SVG text, whose
    size shrinks with its chart's scale."""
    return page.eval_on_selector_all(
        f"{selector} :is(th, td, small, figcaption, h2, text)",
        """els => els.filter(e => e.getClientRects().length).map(e => {
            const size = parseFloat(getComputedStyle(e).fontSize);
            const svg = e.closest('svg');
            return svg ? size * svg.getScreenCTM().a : size;
        })""",
    )


def test_checkpoints_report_reads_right(browser, pages) -> None:
    context, page, watch = _open(browser, pages["zoo"], size=(1440, 900))
    try:
        # the table with the ★ and the links is on the first screen, under the set's warning
        table = "#checkpoints-summary table.checkpoints"
        assert _in_view(_box(page, table), 900)
        assert page.inner_text("#checkpoints-summary p.warn") == f"warning: {DOUBT}"
        # short, distinct labels instead of a shared absolute-path prefix; ★ on the best score
        labels = page.eval_on_selector_all(
            f"{table} td.name", "els => els.map(e => e.textContent.trim())"
        )
        assert labels == [n + (" ★" if n == "step-900" else "") for n, _, _ in ZOO]
        heads = page.eval_on_selector_all(f"{table} th", "els => els.map(e => e.textContent)")
        assert not any(h.startswith("rank") for h in heads)  # --no-rank: no rank column
        assert any("reference" in h for h in heads)
        assert page.inner_text(f"{table} tr.main td:nth-child(3)") == "0.700 ± 0.030"
        # each row links to that checkpoint's own report, which links back here
        hrefs = page.eval_on_selector_all(f"{table} td.name a", "els => els.map(e => e.href)")
        assert len(hrefs) == len(ZOO)
        for href in hrefs:
            assert href.startswith("file://") and Path(href[len("file://") :]).is_file()
        overview = page.url
        page.goto(hrefs[0])
        page.wait_for_selector('body[data-ready="1"]', state="attached")
        back = page.locator("#toc a.back")
        assert back.get_attribute("href") == "../../index.html"
        back.click()
        page.wait_for_selector('body[data-ready="1"]', state="attached")
        assert page.url == overview
        # one chart beside the table: the score and the accuracy in panels of their own
        charts = page.locator("#checkpoints-summary svg.chart")
        assert charts.count() == 1
        box = _box(page, "#checkpoints-summary svg.chart")
        assert _in_view(box, 900) and box["x"] > _box(page, table)["x"] + 200  # beside it
        ylabels = page.eval_on_selector_all(
            "#checkpoints-summary svg.chart g.axis text.lab", "els => els.map(e => e.textContent)"
        )
        assert "score (label-free)" in ylabels
        assert "test accuracy (labels, reference)" in ylabels
        assert not any("rank" in t for t in ylabels)  # a fixed --rank is not charted
        assert page.locator("#trajectory svg.chart").count() == 0
        runs = page.locator("#checkpoints-summary svg.chart path.run")
        assert runs.count() == 4  # per panel step-100 → step-2700 and noise-040 → noise-080
        assert page.locator("#checkpoints-summary svg.chart circle[fill='#ffffff']").count() == 6
        assert page.locator("#checkpoints-summary svg.chart line.sd").count() == 6
        assert min(_text_sizes(page, "#checkpoints-summary")) >= 11
        _screenshot(page, "checkpoints-1440.png")
        watch.check()
    finally:
        context.close()


def test_checkpoints_report_on_a_phone(browser, pages) -> None:
    context, page, watch = _open(browser, pages["zoo"], size=(390, 844))
    try:
        sizes = _text_sizes(page, "#checkpoints-summary")
        assert sizes and min(sizes) >= 11  # the chart scrolls sideways rather than shrink
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        _screenshot(page, "checkpoints-390.png")
        watch.check()
    finally:
        context.close()


def test_estimated_ranks_are_charted(browser, pages) -> None:
    context, page, watch = _open(browser, pages["traj"], size=(1440, 900))
    try:
        heads = page.eval_on_selector_all(
            "#checkpoints-summary table.checkpoints th", "els => els.map(e => e.textContent)"
        )
        assert "rank" in heads
        ranks = page.eval_on_selector_all(
            "#checkpoints-summary table.checkpoints td:nth-child(4)",
            "els => els.map(e => e.textContent)",
        )
        assert ranks == [str(R), f"{R} (fixed)"]  # only the first checkpoint had a scan
        ticks = page.eval_on_selector_all(
            "#trajectory svg.chart g.axis text.lab", "els => els.map(e => e.textContent)"
        )
        assert "rank R (estimated)" in ticks
        assert [t for t in ticks if t.isdigit()]  # whole numbers only on the rank axis
        assert not [t for t in ticks if "." in t]
        watch.check()
    finally:
        context.close()


def test_comparison_of_models(browser, pages) -> None:
    context, page, watch = _open(browser, pages["compare"])
    try:
        assert page.is_visible("#compare")
        rows = page.locator("table.sharing tbody tr")
        assert rows.count() == 7
        text = page.inner_text("table.sharing")
        assert text.count("shared by all models") == 3
        assert text.count("unique to clean") == 2 and text.count("unique to noisy") == 2
        assert page.inner_text("#compare ul.models").count("<b>noisy</b>.pt") == 1  # as text
        # the flow map groups its columns by model
        heads = page.locator("#flow tr.stages th.stage:not(.gsum) button")
        assert [heads.nth(i).inner_text() for i in range(heads.count())] == [
            "clean ▾",
            "noisy ▾",
        ]
        assert page.locator("table.cka tbody tr").count() == 3  # three matched layers
        # a cell opens that component at the layer named in it
        page.click("table.sharing tbody tr:nth-child(4) td.carried a")
        assert _shown(page)[0] == "component-4"
        _screenshot(page, "compare.png")
        watch.check()
    finally:
        context.close()
