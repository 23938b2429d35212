"""The ACMTF penalty chosen from the data: each block's noise floor for a component strength.

A component that a block does not hold still gets a small strength there when the block is
noisy: the fit aligns it with the noise. How large that strength can get is a property of the
noise, so the penalty is set per block from it rather than as one constant:

* the per-entry noise level ``σ̂`` of the block (matricized ``N × P``, scaled as fitted) is
  estimated from its singular values, ``σ̂ = s_med / √(n · μ_β)`` (Gavish & Donoho 2014,
  unknown noise; ``μ_β`` the median of the Marchenko–Pastur law with aspect ratio
  ``β = m/n ≤ 1``) — here the median of the values below the R largest, matched to the
  Marchenko–Pastur quantile at its position, so that the signal the model fits is not taken
  for noise;
* the block's threshold is their optimal hard threshold for singular values,
  ``τ = λ*(β) · √n · σ̂`` — above it a direction is signal, below it indistinguishable from
  noise;
* the engine's column update subtracts ``β_b / 2`` from a component's strength, so
  ``β_b = 2τ`` sets exactly the strengths below the noise floor to zero.

Why by hand: no library estimates a Gavish–Donoho threshold (scikit-learn and TensorLy do
not); it is a few lines once the Marchenko–Pastur median is available. Large blocks are
estimated on a random submatrix of at most ``max_side`` rows and columns (the per-entry noise
level does not depend on the size), so the cost stays one small eigendecomposition per block.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import integrate, optimize

from factorlens.factorize.blocks import Block

#: largest side of the submatrix whose singular values estimate a block's noise level
MAX_SIDE = 2048
#: fewest singular values beyond the fitted rank from which a noise level is estimated
MIN_TAIL = 8


@lru_cache(maxsize=1024)
def marchenko_pastur_quantile(beta: float, p: float = 0.5) -> float:
    """Return quantile ``p`` of the Marchenko–Pastur distribution with ratio ``beta``.

    The distribution (unit variance) is the eigenvalue distribution of ``XXᵀ/n`` for an
    ``m × n`` noise matrix.

    Parameters
    ----------
    beta : float
        The aspect ratio ``m/n`` ∈ (0, 1].
    p : float
        The quantile's level (0.5: the median).

    Returns
    -------
    float
        The eigenvalue below which a share ``p`` of the distribution lies.
    """
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * beta * x)

    def below(x: float) -> float:
        return integrate.quad(density, lo, x, limit=200)[0] - p

    return float(optimize.brentq(below, lo, hi, xtol=1e-10))


def optimal_threshold_coefficient(beta: float) -> float:
    """Return Gavish & Donoho's ``λ*(β)``, the optimal hard threshold for singular values.

    The threshold is in units of ``√n σ`` (4/√3 ≈ 2.309 for a square matrix).

    Parameters
    ----------
    beta : float
        The aspect ratio ``β = m/n ≤ 1`` of the matrix.

    Returns
    -------
    float
        The coefficient ``λ*(β)``.
    """
    return math.sqrt(2 * (beta + 1) + 8 * beta / (beta + 1 + math.sqrt(beta**2 + 14 * beta + 1)))


def noise_threshold(
    block: Block,
    rank: int = 0,
    rng: np.random.Generator | None = None,
    max_side: int = MAX_SIDE,
) -> float:
    """Return the noise floor of a component's strength in ``block``.

    The floor is in the block's scaled units (the units of ``σ`` in the engine; divide by
    ``√block.norm_sq`` for a relative strength).

    The noise level is read off the singular values below the ``rank`` largest (those the
    model fits): their median is matched to the Marchenko–Pastur quantile at the same
    position, so a block whose signal fills half its spectrum is not mistaken for noise.
    ``0.0`` (no penalty) for a block without variance or with fewer than
    :data:`MIN_TAIL` singular values beyond ``rank`` (a 10-class output at R = 10: nothing
    there to tell noise from signal). Rows and columns beyond ``max_side`` are sampled at
    random (seeded by ``rng``); the per-entry noise level is estimated on the sample and the
    threshold computed for the full ``N × P`` shape. The spectrum is computed once per block
    (:func:`block_spectrum`); each rank then costs a median.

    Parameters
    ----------
    block : Block
        The block, scaled as fitted.
    rank : int
        The number of components the model fits: the ``rank`` largest singular values are
        left out of the noise estimate.
    rng : numpy.random.Generator, optional
        Draws the sample of rows and columns (``None``: seed 0).
    max_side : int
        The most rows and columns the spectrum is computed on.

    Returns
    -------
    float
        The threshold ``τ`` in the block's scaled units, ``0.0`` for no penalty.
    """
    if block.norm_sq <= 0:
        return 0.0
    s, (m, n), (N, P) = block_spectrum(block, rng, max_side)
    if min(N, P) - rank < MIN_TAIL:
        return 0.0
    tail = s[: max(m - rank, 0)]
    if tail.size < MIN_TAIL:
        return 0.0
    position = 0.5 * tail.size / m  # the tail's median, as a quantile of all m
    q = marchenko_pastur_quantile(round(m / n, 6), round(position, 6))
    sigma = float(np.median(tail)) / math.sqrt(n * q)
    m_full, n_full = sorted((N, P))
    return optimal_threshold_coefficient(m_full / n_full) * math.sqrt(n_full) * sigma * block.scale


def block_spectrum(
    block: Block, rng: np.random.Generator | None = None, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Return the singular values of ``block``, the sample's shape and the block's shape.

    The singular values (ascending, unscaled) are those of a random sample of at most
    ``max_side`` rows and columns of the block. Cached on the block (``block.spectrum``), so
    a block compressed for the rank scan keeps the spectrum and shape of its full data.

    Parameters
    ----------
    block : Block
        The block.
    rng : numpy.random.Generator, optional
        Draws the sample of rows and columns (``None``: seed 0).
    max_side : int
        The most rows and columns of the sample.

    Returns
    -------
    s : numpy.ndarray
        The singular values, ascending, unscaled.
    sample_shape : tuple of int
        The sample's sorted shape ``(m, n)``.
    block_shape : tuple of int
        The block's matricized shape ``(N, P)``.
    """
    if block.spectrum is None and block.source is not None:  # exact coordinates of a block
        block.spectrum = block_spectrum(block.source, rng, max_side)
    if block.spectrum is None:
        rng = rng or np.random.default_rng(0)
        N, P = block.n_rows, block.width
        rows = np.sort(rng.choice(N, max_side, replace=False)) if N > max_side else None
        cols = np.sort(rng.choice(P, max_side, replace=False)) if P > max_side else None
        sub = block.dense(rows, cols) / (block.scale or 1.0)
        gram = sub @ sub.T if sub.shape[0] <= sub.shape[1] else sub.T @ sub
        s = np.sort(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)))
        block.spectrum = (s, tuple(sorted(sub.shape)), (N, P))
    return block.spectrum
