"""Spectra of matrices: singular values and the effective rank (Roy & Vetterli 2007).

Used by the quality scores (the effective rank of the predicted class probabilities) and by
the research baselines (RankMe, layer effective ranks).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from factorlens.errors import FactorlensError


def as_matrix(matrix: Any, what: str) -> np.ndarray:
    """Return ``matrix`` (numpy or torch, (N, ...)) as a finite float64 ``(N, D)`` array."""
    if hasattr(matrix, "detach"):  # a torch tensor (torch is not imported here)
        matrix = matrix.detach().cpu().numpy()
    arr = np.asarray(matrix, dtype=np.float64)
    if arr.ndim < 2:
        raise FactorlensError(f"{what} must be a matrix (N, D), got shape {arr.shape}")
    if arr.size == 0:
        raise FactorlensError(
            f"{what} is empty (shape {arr.shape}); give at least one row and column"
        )
    if not np.isfinite(arr).all():
        raise FactorlensError(f"{what} contains NaN/Inf values; give finite values")
    return arr.reshape(arr.shape[0], -1)


def singular_values(matrix: Any) -> np.ndarray:
    """Singular values of an (N, D) matrix (more axes are flattened into D), float64, descending.

    Computed from the smaller Gram matrix, so a tall or wide matrix costs min(N, D)³.
    """
    a = as_matrix(matrix, "the matrix")
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    evals = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(evals, 0.0, None))


def spectral_entropy_rank(sigma: np.ndarray, eps: float) -> float:
    """Return ``exp(H(p))`` with ``p_k = σ_k / Σσ + eps`` (0 for a zero spectrum at eps = 0)."""
    total = float(sigma.sum())
    if total <= 0.0 or not math.isfinite(total):
        return 0.0 if eps == 0.0 else 1.0
    p = sigma / total + eps
    p = p[p > 0]
    return float(np.exp(-np.sum(p * np.log(p))))


def effective_rank(matrix: Any) -> float:
    """Roy & Vetterli's effective rank: ``exp(H(p))`` with ``p_k = σ_k / Σσ`` (0·log 0 = 0).

    Between 1 and min(N, D) for a non-zero matrix (k for a k×k identity); 0 for the zero matrix.
    The matrix is used as given (no centring).
    """
    return spectral_entropy_rank(singular_values(matrix), 0.0)
