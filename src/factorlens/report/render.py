"""Templates → text: the one place the report's markup is made.

Every page, section and chart is a Jinja2 template under ``report/templates/`` rendered from a
view model of plain dicts, lists and numbers (see :mod:`factorlens.report.view`). Autoescaping
is on for every template, so a user's string (a layer name, a class name, a title) can only
ever appear as text. The page's stylesheet and script are package data under
``report/static/`` and are inlined, so the page stays one self-contained file.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from factorlens.report.charts import number


def json_for_script(obj: Any) -> str:
    r"""Return ``obj`` as JSON safe inside ``<script type="application/json">``.

    ``<``, ``>`` and ``&`` become ``\u003c`` etc., so no ``</script>`` or ``<!--`` can
    appear; JSON.parse undoes it.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@cache
def environment() -> Environment:
    """Return the report's Jinja2 environment (autoescaping everywhere, undefined names fail)."""
    env = Environment(
        loader=PackageLoader("factorlens.report", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["n"] = number
    env.filters["script_json"] = json_for_script
    return env


@cache
def static(name: str) -> str:
    """Return the text of ``report/static/<name>`` (the page's CSS or JS)."""
    return (resources.files("factorlens.report") / "static" / name).read_text(encoding="utf-8")


def render(template: str, /, **context: Any) -> str:
    """Render ``report/templates/<template>`` with ``context``."""
    return environment().get_template(template).render(**context)
