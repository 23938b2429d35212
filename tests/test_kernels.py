"""The compiled column sweeps of an ALS step against plain numpy and against their objective."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from factorlens.factorize import kernels
from factorlens.factorize.linalg import column_updates, unit_column_updates


def _numpy_group_lasso(Z, G, F, penalty, starts, nonneg, sweeps):
    """The sweeps as numpy statements, one column at a time (the code the kernel replaced)."""
    F = F.copy()
    bounds = [*starts[1:], F.shape[0]]
    for _ in range(sweeps):
        for r in range(F.shape[1]):
            g = G[r, r]
            if g <= 1e-300:
                continue
            z = Z[:, r] - F @ G[:, r] + F[:, r] * g
            if nonneg:
                z = np.maximum(z, 0.0)
            for s, (a, b) in enumerate(zip(starts, bounds, strict=True)):
                nz = np.linalg.norm(z[a:b])
                keep = 1.0 - penalty[s, r] / (2.0 * nz) if penalty[s, r] < 2.0 * nz else 0.0
                F[a:b, r] = z[a:b] * keep / g
    return F


def _objective(Z, G, F, penalty, starts):
    bounds = [*starts[1:], F.shape[0]]
    norms = np.stack([np.linalg.norm(F[a:b], axis=0) for a, b in zip(starts, bounds, strict=True)])
    live = norms > 0  # an infinite penalty holds a zero part: it adds nothing
    return np.trace(F.T @ F @ G) - 2 * np.trace(F.T @ Z) + np.sum(penalty[live] * norms[live])


@st.composite
def problems(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    R = draw(st.integers(1, 6))
    widths = draw(st.lists(st.integers(1, 7), min_size=1, max_size=4))
    P = sum(widths)
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    X = rng.standard_normal((R + 3, R))
    G = X.T @ X
    if draw(st.booleans()):  # a component absent from another mode: a zero Gram diagonal
        G[0, :] = G[:, 0] = 0.0
    Z = rng.standard_normal((P, R)) * 3
    F = rng.standard_normal((P, R))
    penalty = rng.uniform(0, 4, (len(widths), R))
    penalty[rng.random(penalty.shape) < 0.2] = np.inf
    penalty[rng.random(penalty.shape) < 0.2] = 0.0
    return Z, G, F, penalty, starts, draw(st.booleans())


@settings(max_examples=60, deadline=None)
@given(problems(), st.integers(1, 3))
def test_group_lasso_sweeps_equal_numpy_and_never_raise_the_objective(problem, sweeps) -> None:
    Z, G, F, penalty, starts, nonneg = problem
    F0 = np.abs(F) if nonneg else F
    got = column_updates(Z, G, F0, penalty, nonneg, sweeps, starts=starts)
    want = _numpy_group_lasso(Z, G, F0, penalty, starts, nonneg, sweeps)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # exact coordinate minimisation: each update lowers the objective or leaves it
    assert _objective(Z, G, got, penalty, starts) <= _objective(Z, G, F0, penalty, starts) + 1e-9
    if nonneg:
        assert (got >= 0).all()
    if G[0, 0] == 0.0:  # out of the objective: left as it was
        np.testing.assert_array_equal(got[:, 0], F0[:, 0])


def test_one_block_takes_a_penalty_per_column() -> None:
    rng = np.random.default_rng(1)
    Z, F = rng.standard_normal((9, 3)), rng.standard_normal((9, 3))
    X = rng.standard_normal((5, 3))
    G = X.T @ X
    pen = np.array([0.0, 1e9, 0.5])  # a huge penalty switches its column off exactly
    got = column_updates(Z, G, F, pen, False, 2)
    want = _numpy_group_lasso(Z, G, F, pen[None, :], np.zeros(1, np.int64), False, 2)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.all(got[:, 1] == 0.0) and np.all(got[:, 0] != 0.0)


def test_without_a_penalty_the_sweeps_converge_to_least_squares() -> None:
    rng = np.random.default_rng(2)
    Z, F = rng.standard_normal((20, 4)), np.zeros((20, 4))
    X = rng.standard_normal((30, 4))
    G = X.T @ X
    got = column_updates(Z, G, F, np.zeros(4), False, 200)
    np.testing.assert_allclose(got, Z @ np.linalg.inv(G), rtol=1e-8)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans(), st.integers(1, 3))
def test_unit_column_sweeps_equal_numpy(seed, nonneg, sweeps) -> None:
    rng = np.random.default_rng(seed)
    N, R = int(rng.integers(2, 15)), int(rng.integers(1, 5))
    M, A = rng.standard_normal((N, R)), rng.standard_normal((N, R))
    if nonneg:
        A, M = np.abs(A), M - 1.0  # some columns' positive part is zero: left as they are
    X = rng.standard_normal((R + 2, R))
    G = X.T @ X
    want = A.copy()
    for _ in range(sweeps):
        for r in range(R):
            z = M[:, r] - want @ G[:, r] + want[:, r] * G[r, r]
            z = np.maximum(z, 0.0) if nonneg else z
            if np.linalg.norm(z) > 1e-300:
                want[:, r] = z / np.linalg.norm(z)
    got = unit_column_updates(M, G, A, nonneg, sweeps)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_the_wrappers_hand_the_kernels_one_signature() -> None:
    """float32 and non-contiguous inputs are converted, so numba compiles once."""
    rng = np.random.default_rng(3)
    Z = rng.standard_normal((6, 8)).astype(np.float32)[:, ::2]  # a strided float32 view
    G = np.eye(4)
    got = column_updates(Z, G, np.zeros((6, 4)), np.zeros(4), False, 1)
    np.testing.assert_allclose(got, Z, rtol=1e-6)
    assert len(kernels.group_lasso_sweeps.signatures) == 1
