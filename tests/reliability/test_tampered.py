"""Result files edited by hand into impossible values are refused in one line, naming the
field, instead of being rendered ("750.0%", rows of "nan")."""

from __future__ import annotations

import json

import numpy as np
from harness import analyze_args


def _analysed(cli, project):
    out = project["root"] / "out"
    cli.ok(analyze_args(project, out))
    return out


def test_a_fit_above_one_is_refused(cli, project) -> None:
    out = _analysed(cli, project)
    doc = json.loads((out / "result.json").read_text())
    doc["blocks"][1]["fit"] = 7.5
    (out / "result.json").write_text(json.dumps(doc))
    cli.fails(["report", out, "--out", project["root"] / "r"], "blocks[1].fit", "[-1, 1]", rc=1)


def _rewrite_npz(path, change) -> None:
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(path, **arrays)


def test_non_finite_loadings_are_refused(cli, project) -> None:
    out = _analysed(cli, project)
    _rewrite_npz(out / "factors.npz", lambda a: a["A"].fill(np.nan))
    cli.fails(["report", out, "--out", project["root"] / "r"], "'A' holds", "NaN", rc=1)


def test_infinite_or_negative_strengths_are_refused(cli, project) -> None:
    out = _analysed(cli, project)
    _rewrite_npz(out / "factors.npz", lambda a: a["weights/1"].__setitem__(0, np.inf))
    cli.fails(["report", out, "--out", project["root"] / "r"], "'weights/1'", "Inf", rc=1)
    _rewrite_npz(out / "factors.npz", lambda a: a["weights/1"].__setitem__(0, -1.0))
    cli.fails(["report", out, "--out", project["root"] / "r"], "negative strengths", rc=1)
