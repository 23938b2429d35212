"""Comparing factorizations: congruence and the factor match score (FMS)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from factorlens.errors import FactorlensError


def congruence(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Cosines between the columns of ``X (I, R1)`` and ``Y (I, R2)``: ``(R1, R2)``."""
    if X.shape[0] != Y.shape[0]:
        raise FactorlensError(f"factors have different lengths: {X.shape[0]} and {Y.shape[0]}")
    nx = np.linalg.norm(X, axis=0)
    ny = np.linalg.norm(Y, axis=0)
    nx[nx == 0] = 1.0
    ny[ny == 0] = 1.0
    return (X / nx).T @ (Y / ny)


def pair_congruences(A: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Return the signed congruence of every pair of components over both their modes.

    Entry ``(r, q)`` is ``cos(a_r, a_q) · cos(k_r, k_q)``. Near +1: the same rank-one term
    twice; near −1: two terms that cancel (the two-factor degeneracy).

    Parameters
    ----------
    A : numpy.ndarray
        Sample loadings, ``(N, R)``.
    K : numpy.ndarray
        A block's non-shared factor, ``(P, R)``.

    Returns
    -------
    numpy.ndarray
        The signed congruences, ``(R, R)``.
    """
    return congruence(A, A) * congruence(K, K)


def matched_congruences(
    factors_a: Sequence[np.ndarray],
    factors_b: Sequence[np.ndarray],
    *,
    absolute: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-component match of two factorizations with the same modes: ``(scores, perm)``.

    ``scores[r]`` (shape ``(R1,)``) is the product over modes of the congruences between
    component ``r`` of ``a`` and its partner ``perm[r]`` in ``b``; the one-to-one matching
    maximises the total (Hungarian algorithm). Their mean is the factor match score, their
    minimum the match of the worst component (one spurious component shows there, not in
    the mean).
    """
    if len(factors_a) != len(factors_b):
        raise FactorlensError("the factorizations have different numbers of modes")
    R1 = factors_a[0].shape[1]
    R2 = factors_b[0].shape[1]
    if R2 < R1:
        raise FactorlensError(f"cannot match {R1} components to only {R2}")
    C = np.ones((R1, R2))
    for fa, fb in zip(factors_a, factors_b, strict=True):
        c = congruence(fa, fb)
        C *= np.abs(c) if absolute else c
    rows, cols = linear_sum_assignment(-C)
    order = np.argsort(rows)
    return C[rows, cols][order], cols[order]


def factor_match_score(
    factors_a: Sequence[np.ndarray],
    factors_b: Sequence[np.ndarray],
    *,
    absolute: bool = True,
    return_permutation: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Factor match score of two factorizations with the same modes.

    For every pair of components the product over modes of the congruences of their columns;
    components are matched one-to-one by the Hungarian algorithm to maximise the total, and the
    score is the mean over the components of the first factorization (1 = identical up to
    scaling and permutation). ``absolute`` ignores signs (each mode's sign is arbitrary).
    Weights are not compared. Returns the score, and optionally ``perm`` with
    ``b[:, perm[r]]`` matched to ``a[:, r]``.
    """
    scores, perm = matched_congruences(factors_a, factors_b, absolute=absolute)
    score = float(scores.mean())
    if return_permutation:
        return score, perm
    return score
