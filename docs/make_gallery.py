"""Take the screenshots of the documentation's gallery (``docs/_static/gallery/*.png``).

Run by hand when the report's look changes, not by ``make docs`` (which only shows the stored
PNGs)::

    .venv/bin/python docs/make_gallery.py    # about two minutes on 2 cores

The reports are kept in ``docs/_build/gallery/`` (``--work DIR`` for another folder).

It writes the reports with the CLI, the way a user would:

* ``factorlens demo`` — the demo report (DigitsCNN on scikit-learn's digits, R = 10);
* ``factorlens zoo --data digits --kinds steps`` — checkpoints of one training run — and
  ``factorlens quality --out`` on four of them: the checkpoints report (scores, ranks, tracks
  of matched components) and each checkpoint's own report at its estimated rank (with the
  rank evidence);

and photographs them in headless Chromium through Playwright's Python client, as
``tests/test_browser.py`` does: Debian's ``/usr/bin/chromium`` (or ``FACTORLENS_CHROMIUM``),
never Playwright's own browser download. Each PNG is the first screen of a page (or of one
section scrolled to the top), kept under ``MAX_BYTES``: a larger one is re-saved with a
256-colour palette.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GALLERY = HERE / "_static" / "gallery"
CHROMIUM = os.environ.get("FACTORLENS_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
DESKTOP = (1440, 900)
PHONE = (390, 844)
MAX_BYTES = 250_000
MODEL = "src/factorlens/research/models.py:DigitsCNN"
#: the zoo checkpoints of the checkpoints view (steps of one DigitsCNN run)
STEPS = ("step-000010", "step-000040", "step-000120", "step-000300")
#: where the reports are written unless --work says otherwise (ignored by git)
WORK = HERE / "_build" / "gallery"


def _factorlens(*args: str | Path) -> None:
    """Run the factorlens CLI of this interpreter (replacing earlier output); stop on failure.

    It runs in the repository root, so that the reports name the model file and the
    checkpoints as the README does (``src/factorlens/research/models.py:DigitsCNN``).
    """
    words = [str(a) for a in args]
    print("$ factorlens", " ".join(words), flush=True)
    cmd = [sys.executable, "-m", "factorlens", *words, "--overwrite", "--quiet"]
    subprocess.run(cmd, check=True, cwd=ROOT)


def _rel(path: Path) -> Path:
    """Return ``path`` relative to the repository root where it lies inside it."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def build_reports(work: Path) -> dict[str, Path]:
    """Write the demo report and the checkpoints report under ``work``.

    Parameters
    ----------
    work : pathlib.Path
        A folder for the reports (what is there is replaced).

    Returns
    -------
    dict of str to pathlib.Path
        ``index.html`` of each report: ``"demo"``, ``"checkpoints"`` and ``"rank"`` (the
        last checkpoint's own report, with its rank evidence).
    """
    work = _rel(work)
    _factorlens("demo", "--out", work / "demo")
    _factorlens("zoo", "--data", "digits", "--kinds", "steps", "--out", work / "zoo")
    weights = [work / "zoo" / "steps" / f"{step}.pt" for step in STEPS]
    quality = work / "quality"
    _factorlens(
        "quality",
        *("--model", MODEL, "--data", "digits", "--n-samples", "300", "--max-rank", "8"),
        *("--out", quality, *weights),
    )
    last = sorted((ROOT / quality / "checkpoints").glob(f"*{STEPS[-1]}"))[-1]
    return {
        "demo": ROOT / work / "demo" / "index.html",
        "checkpoints": ROOT / quality / "index.html",
        "rank": last / "index.html",
    }


def _save(png: bytes, name: str) -> Path:
    """Write a screenshot to the gallery, palette-compressed when it is over MAX_BYTES."""
    target = GALLERY / name
    if len(png) > MAX_BYTES:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        buf = io.BytesIO()
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            buf, format="PNG", optimize=True
        )
        png = buf.getvalue()
    target.write_bytes(png)
    size = len(png)
    flag = "" if size <= MAX_BYTES else f"  (over {MAX_BYTES} bytes)"
    print(f"  {target.relative_to(HERE.parent)}: {size / 1000:.0f} kB{flag}", flush=True)
    return target


def _page(browser, path: Path, size: tuple[int, int]):
    """Open ``path`` at viewport ``size``; return (context, page) once its script has run."""
    width, height = size
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.goto(path.as_uri())
    page.wait_for_selector('body[data-ready="1"]', state="attached", timeout=20_000)
    return context, page


def _first_screen(page, size: tuple[int, int]) -> bytes:
    """Take a screenshot of the visible screen, exactly ``size`` pixels."""
    width, height = size
    page.wait_for_timeout(200)  # let a scroll or a toggle settle
    return page.screenshot(clip={"x": 0, "y": 0, "width": width, "height": height})


def _scroll_to(page, selector: str) -> None:
    page.eval_on_selector(selector, "e => e.scrollIntoView({block: 'start'})")


def take_screenshots(reports: dict[str, Path]) -> list[Path]:
    """Photograph the reports into the gallery folder; return the PNGs written."""
    from playwright.sync_api import sync_playwright

    GALLERY.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            # the demo: the first screen, a component opened at one layer, one input
            context, page = _page(browser, reports["demo"], DESKTOP)
            written.append(_save(_first_screen(page, DESKTOP), "demo-1440.png"))
            page.click('#flow a[href="#component-3-block-4"]')
            written.append(_save(_first_screen(page, DESKTOP), "demo-component-layer.png"))
            page.click('#flow a[href="#component-1"]')
            _scroll_to(page, "#component-1")
            page.locator("section.component.current .thumbs .thumb a").first.click()
            written.append(_save(_first_screen(page, DESKTOP), "demo-input.png"))
            context.close()
            context, page = _page(browser, reports["demo"], PHONE)
            written.append(_save(_first_screen(page, PHONE), "demo-390.png"))
            context.close()
            # the rank evidence of the last checkpoint
            context, page = _page(browser, reports["rank"], DESKTOP)
            _scroll_to(page, "#rank-evidence")
            written.append(_save(_first_screen(page, DESKTOP), "rank-evidence.png"))
            context.close()
            # three checkpoints of one run: the summary, then the tracks of matched components
            context, page = _page(browser, reports["checkpoints"], DESKTOP)
            written.append(_save(_first_screen(page, DESKTOP), "checkpoints-1440.png"))
            _scroll_to(page, "#trajectory")
            written.append(_save(_first_screen(page, DESKTOP), "checkpoints-tracks.png"))
            context.close()
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    """Build the reports and take the screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=WORK, help="where the reports go")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        print(f"error: no Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    take_screenshots(build_reports(args.work))
    print(f"gallery: {_rel(GALLERY)} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
