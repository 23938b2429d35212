"""The starting factors of a CMTF fit: an SVD-based start, random starts, a warm start.

The SVD start takes the leading left singular vectors of the weighted concatenation
``[Ỹ_1 | Ỹ_2 | …]`` by a randomized range finder (Halko, Martinsson & Tropp 2011), through
the blocks' row-chunk products only; every block's factors then follow from one
least-squares solve against that sample factor.
"""

from __future__ import annotations

import numpy as np

from factorlens.factorize import linalg
from factorlens.factorize.als import State
from factorlens.factorize.blocks import Block


def initial_state(
    data: list[Block],
    models: list[str],
    how: str | np.ndarray,
    rng: np.random.Generator,
    rank: int,
    nonneg: bool,
) -> State:
    """Return the starting factors of a fit at ``rank``.

    ``how`` is ``"svd"`` (the leading left singular vectors of the weighted concatenation,
    by a randomized range finder), ``"random"`` (Gaussian, or uniform with ``nonneg``) or a
    given sample factor ``(N, R)`` (a warm start). Every block's factors then come from one
    least-squares solve against it, a CP block's modes from a rank-one fit of each column.
    """
    R, N = rank, data[0].n_rows
    if isinstance(how, np.ndarray):  # a given sample factor (warm start)
        A = np.array(how, dtype=np.float64)
        if nonneg:
            A = np.abs(A)
        A /= np.maximum(np.linalg.norm(A, axis=0), linalg.TINY)
        T = [b.right(A) for b in data]
    elif how == "svd":
        A, T = randomized_svd_factor(data, R, rng)
        if nonneg:
            A = np.abs(A)
            A /= np.maximum(np.linalg.norm(A, axis=0), linalg.TINY)
            T = [b.right(A) for b in data]
    else:
        A = rng.random((N, R)) if nonneg else rng.standard_normal((N, R))
        A /= np.maximum(np.linalg.norm(A, axis=0), linalg.TINY)
        T = [b.right(A) for b in data]
    G = A.T @ A
    F = []
    for b, model, Tb in zip(data, models, T, strict=True):
        V = linalg.solve_ls(Tb, G)
        if nonneg:
            V = np.abs(V)
        if model == "matrix":
            F.append([V])
            continue
        dims = b.shape[1:]
        parts = [np.empty((d, R)) for d in dims]
        for r in range(R):
            ones = linalg.rank_one(V[:, r].reshape(dims))
            for k, v in enumerate(ones):
                parts[k][:, r] = np.abs(v) if nonneg else v
        F.append(linalg.normalise_modes(parts))
    return State(A=A, F=F)


def randomized_svd_factor(
    data: list[Block], R: int, rng: np.random.Generator, oversample: int = 10, power: int = 2
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Return the top-R left singular vectors of ``[Ỹ_1 | Ỹ_2 | …]`` (Halko et al. 2011).

    Only the blocks' row-chunk products are used; also returns ``Ỹ_bᵀ A`` per block (no
    extra pass).
    """
    N = data[0].n_rows
    total = sum(b.width for b in data)
    k = min(R + oversample, N, total)
    Y = sum(b.left(test_matrix(b, rng, k)) for b in data)
    for _ in range(power):
        Q = np.linalg.qr(Y)[0]
        Z = [b.right(Q) for b in data]
        Y = sum(b.left(Zb) for b, Zb in zip(data, Z, strict=True))
    Q = np.linalg.qr(Y)[0]
    Z = [b.right(Q) for b in data]
    S = sum(Zb.T @ Zb for Zb in Z)
    evals, U = np.linalg.eigh(S)
    U = U[:, np.argsort(evals)[::-1][:R]]
    return Q @ U, [Zb @ U for Zb in Z]


def test_matrix(block: Block, rng: np.random.Generator, k: int) -> np.ndarray:
    """Return a Gaussian test matrix for ``block`` (its width × ``k``).

    A block whose basis spans its whole row space (fitted through its row space, or sketched
    with ``k ≥ N``) has its matrix drawn at the full width and mapped into the basis
    (``Qᵀ Ω``): the draws, and so the start, are the uncompressed fit's. (A truncated sketch
    gets a matrix of its own width: ``Qᵀ Ω`` is Gaussian too, and the full width would cost a
    ResNet-50 418 M draws.)
    """
    if not block.exact_basis:
        return rng.standard_normal((block.width, k))
    omega = rng.standard_normal((int(np.prod(block.full_shape[1:])), k))
    for q in block.basis:  # Q₁ first: Ω ↦ Q₂ᵀ (Q₁ᵀ Ω)
        omega = q.T @ omega
    return omega
