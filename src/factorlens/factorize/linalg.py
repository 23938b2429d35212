"""Small linear algebra that the engine, the result and the rank criteria share.

Kept apart from :mod:`factorlens.factorize.engine` so that a result (and the criteria read
off it) does not import the fitting code, and the stacked matrix blocks share the engine's
least-squares update without importing the engine. The updates of one ALS step live here:
the Gram matrices, the MTTKRP, the least-squares and the group-lasso column updates, the
rank-one start of a CP block.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

#: below this a norm or a Gram diagonal counts as zero
TINY = 1e-300


def khatri_rao(factors: Sequence[np.ndarray]) -> np.ndarray:
    """Row-major Khatri–Rao product of ``(I_k, R)`` factors: ``(∏ I_k, R)``.

    Rows are ordered like the block's ``shape[1:]`` flattened in C order.
    """
    out = factors[0]
    for f in factors[1:]:
        out = (out[:, None, :] * f[None, :, :]).reshape(-1, out.shape[1])
    return out


def gram(factors: Sequence[np.ndarray], skip: int | None = None) -> np.ndarray:
    """Hadamard product of the Gram matrices of ``factors`` (all but ``skip``)."""
    R = factors[0].shape[1]
    G = np.ones((R, R))
    for k, f in enumerate(factors):
        if k != skip:
            G *= f.T @ f
    return G


def mttkrp(T: np.ndarray, factors: Sequence[np.ndarray], k: int) -> np.ndarray:
    """Contract ``T`` (shape ``(I_1, …, I_m, R)``) with every factor but ``k``: ``(I_k, R)``.

    One mode at a time, the last first, each a two-operand ``einsum`` that keeps ``R`` last:
    no transposed copy of ``T`` (an optimised many-operand ``einsum`` made several, and took
    five times as long on a 3×224×224 input).
    """
    letters = string.ascii_lowercase
    out = T
    for j in range(len(factors) - 1, -1, -1):
        if j == k:
            continue
        axes = letters[: out.ndim - 1]
        kept = axes[:j] + axes[j + 1 :]
        out = np.einsum(f"{axes}z,{axes[j]}z->{kept}z", out, factors[j])
    return out


def solve_ls(Z: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Return ``Z G⁺`` for a symmetric PSD ``G`` (R×R): the least-squares update.

    Minimum-norm when ``G`` is singular. Computed through an eigendecomposition of ``G``:
    LAPACK's lstsq is ~100× slower here because of the thousands of right-hand sides.
    """
    evals, evecs = np.linalg.eigh(G)
    keep = evals > max(evals.max(), 0.0) * 1e-12
    inv = (evecs[:, keep] / evals[keep]) @ evecs[:, keep].T
    return Z @ inv


def column_updates(
    Z: np.ndarray,
    G: np.ndarray,
    F: np.ndarray,
    penalty: np.ndarray,
    nonneg: bool,
    sweeps: int,
    starts: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``F`` after exact coordinate updates of its columns.

    The updates solve, column by column,
    ``min_F  tr(Fᵀ F G) − 2 tr(Fᵀ Z) + Σ_r penalty_r ‖f_r‖``  (optionally ``F ≥ 0``):
    ``f_r = z₊/G_rr · max(0, 1 − penalty_r / (2‖z₊‖))`` with ``z = Z_r − Σ_{s≠r} f_s G_sr``.
    With ``starts`` (the first row of each of ``S`` segments, ascending from 0) the rows are
    the stacked factors of ``S`` blocks and ``penalty`` is ``(S, R)``: each block's part of a
    column is penalized on its own norm. Run by the compiled loop of
    :func:`factorlens.factorize.kernels.group_lasso_sweeps`.

    A column with ``G_rr = 0`` does not enter the objective (another mode of its component is
    zero) and is left as it is: zeroing it too would make a component that the penalty switched
    off in one mode unable ever to come back.
    """
    from factorlens.factorize.kernels import group_lasso_sweeps

    if starts is None:
        starts = np.zeros(1, dtype=np.int64)
        penalty = np.asarray(penalty, dtype=np.float64).reshape(1, -1)
    return group_lasso_sweeps(
        _f64(Z),
        _f64(G),
        _f64(F),
        _f64(penalty),
        np.asarray(starts, np.int64),
        nonneg,
        sweeps,
        TINY,
    )


def unit_column_updates(
    M: np.ndarray, G: np.ndarray, A: np.ndarray, nonneg: bool, sweeps: int
) -> np.ndarray:
    """Return ``A`` after coordinate updates of its unit-norm columns (the shared factor).

    Column ``r`` becomes the unit vector along ``M_r − Σ_{s≠r} a_s G_sr`` (its positive part
    with ``nonneg``); the compiled loop of
    :func:`factorlens.factorize.kernels.unit_column_sweeps`.
    """
    from factorlens.factorize.kernels import unit_column_sweeps

    return unit_column_sweeps(_f64(M), _f64(G), _f64(A), nonneg, sweeps, TINY)


def _f64(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float64 array (the compiled loops' one signature)."""
    return np.ascontiguousarray(x, dtype=np.float64)


def rank_one(t: np.ndarray, n_iter: int = 10) -> list[np.ndarray]:
    """Best rank-one approximation of a small tensor by power iterations; first factor scaled."""
    if t.ndim == 1:
        return [t.copy()]
    vecs = []
    for k in range(1, t.ndim):
        unf = np.moveaxis(t, k, 0).reshape(t.shape[k], -1)
        # the leading left singular vector, from the small side's Gram matrix (an SVD of a
        # 224×672 unfolding took 7× as long)
        u = np.linalg.eigh(unf @ unf.T)[1][:, -1]
        vecs.append(u)
    for _ in range(n_iter if t.ndim > 2 else 1):
        first = t
        for v in reversed(vecs):
            first = first @ v
        if t.ndim == 2:
            break
        for k in range(1, t.ndim):
            x = t
            for j in range(t.ndim - 1, 0, -1):
                if j != k:
                    x = np.tensordot(x, vecs[j - 1], axes=([j], [0]))
            # x now has axes (0, k): contract mode 0 with `first`
            v = first @ x
            n = np.linalg.norm(v)
            vecs[k - 1] = v / n if n > 0 else vecs[k - 1]
    first = t
    for v in reversed(vecs):
        first = first @ v
    return [first, *vecs]


def normalise_modes(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Make every mode but the first unit-norm, pushing the norms into the first."""
    for k in range(1, len(parts)):
        n = np.linalg.norm(parts[k], axis=0)
        ok = n > TINY
        parts[k][:, ok] /= n[ok]
        parts[0][:, ok] *= n[ok]
    return parts


__all__ = [
    "TINY",
    "column_updates",
    "gram",
    "khatri_rao",
    "mttkrp",
    "normalise_modes",
    "rank_one",
    "solve_ls",
    "unit_column_updates",
]
