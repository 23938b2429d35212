"""Rich notebook views of results, registered by the package instead of imported by results.

A result class (:class:`~factorlens.factorize.CMTFResult`) sits below :mod:`factorlens.report`,
which renders it; importing the renderer from the result would point an arrow upward and make
a circle (``report`` imports ``factorize``). Instead the package's door
(``factorlens/__init__.py``) registers the renderer here by name, and the result's
``_repr_html_`` asks :func:`html_view` for it. The renderer's module is imported on the first
view only, so ``import factorlens`` stays light. This module imports nothing of factorlens.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: ``module.QualName`` of a class -> ``(module, function)`` that renders it as HTML
_HTML: dict[str, tuple[str, str]] = {}


def register_html(kind: str, module: str, function: str) -> None:
    """Render objects of class ``kind`` (``"package.module.Class"``) with ``module.function``.

    The function takes the object and returns an HTML fragment (``str``); a subclass of
    ``kind`` is rendered by it too, unless it has a renderer of its own.
    """
    _HTML[kind] = (module, function)


def html_view(obj: Any) -> str | None:
    """Return ``obj`` rendered as HTML by its class's renderer, or None without one.

    None tells Jupyter to show the plain ``repr`` instead.
    """
    for cls in type(obj).__mro__:
        found = _HTML.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            module, function = found
            return str(getattr(import_module(module), function)(obj))
    return None
