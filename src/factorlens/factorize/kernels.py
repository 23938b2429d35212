"""Compiled inner loops of an ALS step: the coordinate sweeps over a factor's columns.

A penalized or nonnegative update cannot solve for all columns at once: it visits the ``R``
columns one after another, and each column's update reads the columns updated before it. In
numpy that is ``R × sweeps`` rounds of about ten small calls per update. On the small blocks
of the rank scan (50 compressed samples, 30 compressed features) those calls were 58 % of the
scan's time (issue 27's profile: 50 of 86 s), the arithmetic itself a few percent.

Why by hand, with numba: no library offers a group-lasso coordinate sweep over the columns
of a coupled least-squares problem (scikit-learn's ``MultiTaskLasso`` penalizes rows of one
design, not columns of ``F`` in ``tr(Fᵀ F G) − 2 tr(Fᵀ Z)``), and the loop is inherently
sequential in the columns, so only a compiled loop removes the per-call cost. numba compiles
these two functions on their first call and caches the machine code beside this file
(``cache=True``), so a later process only loads it. ``kernel.py_func`` is the same function
run by the Python interpreter, which the tests compare against.

Every array argument is C-contiguous float64 (the wrappers in
:mod:`factorlens.factorize.linalg` make it so): one compiled signature, no recompilation.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _residual(
    Z: np.ndarray, F: np.ndarray, G: np.ndarray, r: int, nonneg: bool, z: np.ndarray
) -> float:
    """Fill ``z`` with ``Z_r − Σ_{t≠r} F_t G_tr`` (``z₊`` with ``nonneg``); return ``‖z‖²``.

    Column ``r``'s right-hand side once the other columns' share is taken out: what both
    sweeps update the column from.
    """
    P, R = F.shape
    sq = 0.0
    for p in range(P):
        acc = Z[p, r]
        for t in range(R):
            if t != r:
                acc -= F[p, t] * G[t, r]
        if nonneg and acc < 0.0:
            acc = 0.0
        z[p] = acc
        sq += acc * acc
    return sq


@numba.njit(cache=True, nogil=True)
def group_lasso_sweeps(
    Z: np.ndarray,
    G: np.ndarray,
    F: np.ndarray,
    penalty: np.ndarray,
    starts: np.ndarray,
    nonneg: bool,
    sweeps: int,
    tiny: float,
) -> np.ndarray:
    """Return ``F`` after ``sweeps`` exact coordinate updates of each of its columns.

    The rows of ``F`` (``(P, R)``) form segments (one per block, ``starts`` their first rows,
    ascending from 0); segment ``s`` of column ``r`` is penalized by ``penalty[s, r]`` on its
    norm. Each update solves ``min tr(Fᵀ F G) − 2 tr(Fᵀ Z) + Σ_{s,r} penalty[s, r] ‖F_sr‖``
    over one column (``F ≥ 0`` with ``nonneg``):
    ``f_r = z₊ / G_rr · max(0, 1 − penalty / (2‖z₊‖))`` per segment, with
    ``z = Z_r − Σ_{t≠r} f_t G_tr``. A column with ``G_rr = 0`` does not enter the objective
    and is left as it is. ``Z``: ``(P, R)``, ``G``: ``(R, R)``, ``penalty``: ``(S, R)``
    (``inf`` holds a segment at zero), ``starts``: ``(S,)`` int64; a Gram diagonal at or
    below ``tiny`` counts as zero.
    """
    F = F.copy()
    P, R = F.shape
    S = starts.shape[0]
    z = np.empty(P)
    for _ in range(sweeps):
        for r in range(R):
            g = G[r, r]
            if g <= tiny:
                continue
            _residual(Z, F, G, r, nonneg, z)
            for s in range(S):
                a = starts[s]
                b = starts[s + 1] if s + 1 < S else P
                sq = 0.0
                for p in range(a, b):
                    sq += z[p] * z[p]
                twice = 2.0 * math.sqrt(sq)
                pen = penalty[s, r]
                # max(0, 1 - pen / 2‖z‖), dividing only when it is above 0 (no overflow)
                scale = (1.0 - pen / twice) / g if pen < twice else 0.0
                for p in range(a, b):
                    F[p, r] = z[p] * scale
    return F


@numba.njit(cache=True, nogil=True)
def unit_column_sweeps(
    M: np.ndarray, G: np.ndarray, A: np.ndarray, nonneg: bool, sweeps: int, tiny: float
) -> np.ndarray:
    """Return ``A`` after ``sweeps`` coordinate updates of its unit-norm columns.

    Each update sets column ``r`` of ``A`` (``(N, R)``) to the unit vector along
    ``z = M_r − Σ_{t≠r} a_t G_tr`` (``z₊`` with ``nonneg``): the best unit column for
    ``tr(Aᵀ A G) − 2 tr(Aᵀ M)`` when the norm goes to the other factors. A ``z`` of norm at most
    ``tiny`` leaves the column as it is. ``M``: ``(N, R)``, ``G``: ``(R, R)``.
    """
    A = A.copy()
    N, R = A.shape
    z = np.empty(N)
    for _ in range(sweeps):
        for r in range(R):
            norm = math.sqrt(_residual(M, A, G, r, nonneg, z))
            if norm > tiny:
                for n in range(N):
                    A[n, r] = z[n] / norm
    return A


__all__ = ["group_lasso_sweeps", "unit_column_sweeps"]
