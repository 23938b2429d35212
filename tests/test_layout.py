"""The package's layout follows its data flow: no module reaches back up to one that imports it.

Every import counts, at the top of a module, inside a function (imported late) or under
``TYPE_CHECKING``: a late import hides a circle from Python, not from a reader. A package's
``__init__`` only re-exports, so it is not a node of its own (importing ``factorlens.report``
means importing the modules it re-exports from); the package root ``factorlens/__init__.py``
is the API's door, above everything, and may name any module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import factorlens

ROOT = Path(factorlens.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("factorlens", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The factorlens modules that the file at ``path`` (module ``name``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found.update(c for c in candidates if c in modules and c != name)
    return found


def _graph() -> tuple[dict[str, set[str]], set[str]]:
    """Module -> the modules it imports; and the package ``__init__`` modules."""
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(files)
    packages = {n for n, p in files.items() if p.name == "__init__.py"}
    edges = {n: _imports(p, n, modules) for n, p in files.items()}
    return edges, packages


def _reaches(edges: dict[str, set[str]], start: str, skip: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges[todo.pop()] - skip - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_module_imports_one_that_imports_it_back() -> None:
    edges, packages = _graph()
    circles = sorted(
        f"{a} -> {b} -> ... -> {a}"
        for a in sorted(set(edges) - packages)
        for b in sorted(edges[a] - packages)
        if a in _reaches(edges, b, packages) and a < b
    )
    assert not circles, "\n".join(circles)


def test_the_graph_sees_a_late_import() -> None:
    # the test above would be vacuous if function-level imports were missed
    edges, _ = _graph()
    assert "factorlens.factorize.kernels" in edges["factorlens.factorize.linalg"]
    assert "factorlens.report.summary" not in edges["factorlens.factorize.result"]
    assert "factorlens.views" in edges["factorlens.factorize.result"]


def test_errors_import_nothing_of_factorlens() -> None:
    edges, _ = _graph()
    assert edges["factorlens.errors"] == set()
    assert edges["factorlens.views"] == set()


def test_a_view_is_found_by_class_name_and_through_subclasses(monkeypatch) -> None:
    from factorlens import views

    class Plain:
        pass

    class Child(Plain):
        pass

    assert views._HTML["factorlens.factorize.result.CMTFResult"] == (
        "factorlens.report.summary",
        "summary_html",
    )
    assert views.html_view(Plain()) is None  # Jupyter then shows the plain repr
    monkeypatch.setitem(views._HTML, f"{__name__}.{Plain.__qualname__}", ("builtins", "ascii"))
    assert views.html_view(Child()).startswith("<")  # ascii(obj): the parent's renderer
