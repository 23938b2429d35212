"""The compiled ALS run (factorize/compiled.py) against the Python loop it stands in for."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

import factorlens.factorize.als as als
import factorlens.factorize.compiled as compiled
from factorlens.factorize import CMTF, factor_match_score
from factorlens.factorize.linalg import khatri_rao, mttkrp
from factorlens.testing import planted_blocks


def _planted(seed: int = 0, N: int = 60, order4: bool = False) -> dict[str, np.ndarray]:
    """A CP input (N×8×7, or N×3×5×4) and three matrix layers sharing 3 components."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((N, 3))
    if order4:
        modes = [rng.standard_normal((d, 3)) for d in (3, 5, 4)]
        x = np.einsum("nr,ir,jr,kr->nijk", A, *modes)
    else:
        x = np.einsum("nr,ir,jr->nij", A, rng.standard_normal((8, 3)), rng.standard_normal((7, 3)))
    return {
        "input": x + 0.1 * rng.standard_normal(x.shape),
        "l1": A @ rng.standard_normal((3, 20)) + 0.1 * rng.standard_normal((N, 20)),
        "l2": np.abs(A) @ rng.random((3, 15)) + 0.1 * rng.standard_normal((N, 15)),
        "l3": A[:, :2] @ rng.standard_normal((2, 12)) + 0.1 * rng.standard_normal((N, 12)),
    }


def _fit(blocks, monkeypatch, *, python: bool, **opts):
    with monkeypatch.context() as m:
        if python:
            m.setattr(compiled, "MAX_ENTRIES", 0)
        return CMTF(4, random_state=1, **opts).fit(blocks).result_


def _all_factors(res) -> list[np.ndarray]:
    return [res.A] + [f for n in res.block_names for f in res.factors[n]]


@pytest.mark.parametrize(
    ("opts", "order4"),
    [
        ({}, False),  # l1 "auto" and its refit (zero and infinite penalties)
        ({"l1_penalty": 0.0}, False),  # exact least-squares updates
        ({"nonneg": True}, False),  # the extrapolated step's products recomputed
        ({"extrapolate": False}, False),
        ({"l1_penalty": 0.05, "refit": "never"}, False),
        ({"init": "random", "n_init": 2}, True),  # a CP block with three modes
        ({"l1_penalty": 0.0}, True),
    ],
)
def test_the_compiled_run_is_the_python_run(monkeypatch, opts, order4) -> None:
    blocks = _planted(order4=order4)
    if opts.get("nonneg"):
        blocks = {k: np.abs(v) for k, v in blocks.items()}
    fast = _fit(blocks, monkeypatch, python=False, **opts)
    slow = _fit(blocks, monkeypatch, python=True, **opts)
    # the same iterations (a stop decided by round-off could move it by one or two)
    assert abs(len(fast.loss_history) - len(slow.loss_history)) <= 2
    assert fast.loss == pytest.approx(slow.loss, rel=1e-9)
    assert float(factor_match_score(_all_factors(fast), _all_factors(slow))) >= 0.999999
    for name in blocks:
        assert fast.block_fit[name] == pytest.approx(slow.block_fit[name], abs=1e-9)
    history = np.asarray(fast.loss_history)
    assert np.all(np.diff(history) <= 1e-12 * history[:-1])  # the safeguard: never up


def test_the_compiled_fit_recovers_planted_components(monkeypatch) -> None:
    runs: list[int] = []
    real = als.als_run
    monkeypatch.setattr(als, "als_run", lambda *a: runs.append(1) or real(*a))
    blocks, truth = planted_blocks(N=100, R=3, noise=0.05, seed=0)
    res = CMTF(3, random_state=0).fit(blocks).result_
    assert runs  # the fit ran compiled
    assert factor_match_score([truth["A"]], [res.A]) > 0.98
    assert factor_match_score(truth["layer1"], res.factors["layer1"]) > 0.98


def test_large_fits_and_reported_iterations_keep_the_python_loop(monkeypatch) -> None:
    """Above MAX_ENTRIES, or with a callback, every iteration runs in Python."""
    calls = []
    monkeypatch.setattr(als, "als_run", lambda *a: calls.append(a) or 1 / 0)
    blocks = _planted()
    seen: list[int] = []
    CMTF(3, random_state=0, callback=lambda i, loss: seen.append(i)).fit(blocks)
    assert seen and not calls
    monkeypatch.setattr(compiled, "MAX_ENTRIES", 60 * 100)  # below 60 × (56 + 47)
    CMTF(3, random_state=0).fit(blocks)
    assert not calls
    monkeypatch.setattr(compiled, "MAX_ENTRIES", 60 * 200)  # and the same fit compiled
    with pytest.raises(ZeroDivisionError):
        CMTF(3, random_state=0).fit(blocks)
    assert calls


@st.composite
def cp_problems(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    dims = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    R = draw(st.integers(1, 4))
    factors = [rng.standard_normal((d, R)) for d in dims]
    T = rng.standard_normal((int(np.prod(dims)), R))
    return dims, factors, T


@settings(max_examples=40, deadline=None)
@given(cp_problems())
def test_the_compiled_products_equal_the_numpy_ones(problem) -> None:
    dims, factors, T = problem
    F = np.ascontiguousarray(np.concatenate(factors, axis=0))
    d = np.array(dims, dtype=np.int64)
    rows = np.concatenate([[0], np.cumsum(dims)]).astype(np.int64)
    out = np.empty((T.shape[0], T.shape[1]))
    compiled._khatri_rao(F, d, rows, 0, len(dims), out)
    np.testing.assert_allclose(out, khatri_rao(factors), rtol=1e-12, atol=1e-12)
    for k in range(len(dims)):
        want = mttkrp(T.reshape(*dims, -1), factors, k)
        got = compiled._mttkrp(T, F, d, rows, 0, len(dims), k)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def _blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_one_blas_thread_is_held_while_any_run_is_in_and_restored_after() -> None:
    before = _blas_threads()
    seen: list[set[int]] = []

    def run() -> None:  # another run enters and leaves while the first is in
        with compiled.one_blas_thread:
            pass

    with compiled.one_blas_thread:
        seen.append(_blas_threads())
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        seen.append(_blas_threads())  # the first run still holds the limit
    assert seen == [{1}, {1}]
    assert _blas_threads() == before


def test_the_first_compile_is_announced_once_and_only_without_a_cache(
    monkeypatch, tmp_path
) -> None:
    import io
    from types import SimpleNamespace

    def fake(index: Path) -> SimpleNamespace:
        cache = SimpleNamespace(_cache_file=SimpleNamespace(_index_path=str(index)))
        return SimpleNamespace(signatures=[], _cache=cache)

    index = tmp_path / "als_run.nbi"
    for exists, said in ((False, True), (True, False)):
        if exists:
            index.write_bytes(b"")
        monkeypatch.setattr(compiled, "als_run", fake(index))
        monkeypatch.setattr(compiled, "_announced", False)
        out = io.StringIO()
        compiled.announce_compile(out)
        compiled.announce_compile(out)  # once per process
        assert out.getvalue().count("compiling") == int(said)
