# The two commands of the README: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= factorlens-demo

.PHONY: demo test lint format bench clean browser docs

# The browser test (tests/test_browser.py) drives Debian's Chromium through Playwright's Python
# client; Playwright's own browser download is never used.
CHROMIUM := /usr/bin/chromium

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/factorlens demo --out $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The Sphinx site in docs/_build/html, built offline with warnings as errors, then the >>>
# examples in the docstrings of these modules (docs/make_gallery.py, run by hand, makes the
# gallery's screenshots; the build only shows them).
DOCTEST_MODULES := src/factorlens/capture.py src/factorlens/data.py src/factorlens/wording.py \
	src/factorlens/report/pixels.py src/factorlens/report/trajectory.py

docs: $(STAMP)
	$(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html
	$(BIN)/pytest -p no:cacheprovider --doctest-modules $(DOCTEST_MODULES)

browser:
	@command -v $(CHROMIUM) >/dev/null 2>&1 || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "warning: could not install chromium; the browser test will skip outside CI"

test: lint browser docs
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_factorize.py

clean:
	rm -rf $(VENV) factorlens-demo .pytest_cache .ruff_cache docs/_build
