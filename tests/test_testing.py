"""factorlens.testing: the helpers the tests build their data and results with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from factorlens.factorize.result import CMTFResult
from factorlens.testing import random_result, random_unit, unit_columns

NAMES = ["input", "conv", "fc"]
SHAPES = [(30, 6, 5), (30, 4, 3, 3), (30, 7)]


def test_unit_columns_and_random_unit() -> None:
    m = np.array([[3.0, 0.0], [4.0, -2.0]])
    np.testing.assert_allclose(unit_columns(m), [[0.6, 0.0], [0.8, -1.0]])
    drawn = random_unit(np.random.default_rng(5), 9, 4)
    np.testing.assert_array_equal(
        drawn, unit_columns(np.random.default_rng(5).standard_normal((9, 4)))
    )
    np.testing.assert_allclose(np.linalg.norm(drawn, axis=0), 1.0)


def test_random_result_is_consistent_and_survives_save_and_load(tmp_path: Path) -> None:
    res = random_result(NAMES, SHAPES, 4, models={"input": "cp"}, meta={"model": "m"})
    assert res.block_models == ["cp", "matrix", "matrix"]
    assert [f.shape for f in res.factors["input"]] == [(6, 4), (5, 4)]
    assert [f.shape for f in res.factors["conv"]] == [(36, 4)]
    assert res.A.shape == (30, 4) and res.flow.shape == (4, 3)
    for f in [res.A, *(f for fs in res.factors.values() for f in fs)]:
        np.testing.assert_allclose(np.linalg.norm(f, axis=0), 1.0)
    assert all(np.all(np.diff(w) <= 0) and np.all(w > 0) for w in res.weights.values())
    assert res.component_map("conv", 1).shape == (4, 3, 3)
    back = CMTFResult.load(res.save(tmp_path / "r"))
    np.testing.assert_array_equal(back.A, res.A)
    assert back.block_models == res.block_models and back.meta == {"model": "m"}


def test_random_result_takes_given_fields_without_changing_the_other_draws() -> None:
    plain = random_result(NAMES, SHAPES, 3, seed=2)
    A = unit_columns(np.ones((30, 3)) + np.eye(30, 3))
    given = random_result(
        NAMES, SHAPES, 3, seed=2, A=A, block_fit={n: 0.5 for n in NAMES}, loss_history=[2.0]
    )
    assert given.A is A and given.block_fit["fc"] == 0.5 and given.loss == 2.0
    for name in NAMES:
        np.testing.assert_array_equal(given.factors[name][0], plain.factors[name][0])
        np.testing.assert_array_equal(given.weights[name], plain.weights[name])
    assert random_result(NAMES, SHAPES, 3, models=["cp", "cp", "matrix"]).block_models == [
        "cp",
        "cp",
        "matrix",
    ]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"block_shapes": SHAPES[:2]}, ValueError, "one shape per block"),
        ({"block_shapes": [(30, 6, 5), (31, 3), (30, 7)]}, ValueError, "one N"),
        ({"rank": 0}, ValueError, "rank must be"),
        ({"models": {"nope": "cp"}}, ValueError, "nope"),
        ({"models": {"fc": "tucker"}}, ValueError, "'tucker'"),
        ({"A": np.ones((30, 2))}, ValueError, r"A must have shape \(30, 3\)"),
        ({"colour": True}, TypeError, "colour"),
    ],
)
def test_random_result_refuses_parts_that_do_not_fit(kwargs, error, match) -> None:
    args = {"block_names": NAMES, "block_shapes": SHAPES, "rank": 3} | kwargs
    with pytest.raises(error, match=match):
        random_result(**args)


def test_importable_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import factorlens.testing as t\n"
        "t.random_result(['a'], [(5, 3)], 2); t.planted_blocks(N=20)\n"
        "assert 'torch' not in {m for m, v in sys.modules.items() if v is not None}\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
