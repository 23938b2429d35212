"""The shared sample mode compressed to a few directions: fits on many rows in a few passes.

For ``N`` far above the rank, every block ``Ỹ_b`` (``N×P_b``, centred and scaled as fitted)
is replaced by ``Qᵀ Ỹ_b`` (``k×P_b``), with ``Q`` (``N×k``, orthonormal) a randomized basis of
the blocks' joint column space: a Gaussian sketch ``Σ_b Ỹ_b Ω_b`` and ``power`` subspace
iterations (Halko, Martinsson & Tropp 2011), ``2 + 2·power`` passes over the data in all. This
is CANDELINC on the one mode all blocks share (Carroll, Pruzansky & Kruskal 1980; Bro &
Andersson 1998): a CP or matrix model with ``A = Q Â`` has

    ``‖Ỹ_b − A Σ_b B_bᵀ‖² = ‖Qᵀ Ỹ_b − Â Σ_b B_bᵀ‖² + ‖(I − Q Qᵀ) Ỹ_b‖²``,

so the fit on the ``k``-row blocks (starts, penalty, refit: all of it) is the full-data fit
of the model restricted to ``span(Q)``, and ``‖Â_r‖ = ‖A_r‖`` keeps the engine's unit-norm
columns. The feature modes are not compressed, so every block factor carries over as it is;
``CMTF(compress_rows=k)`` then refines ``A = Q Â`` with a few ALS iterations on the full data.
Each compressed block keeps the full block's ``‖Ỹ‖²`` (its fit is measured against the whole
block) and the spectrum of a random submatrix of the full block (the noise floor of
``l1_penalty="auto"``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from factorlens.factorize.blocks import Block
from factorlens.factorize.penalty import block_spectrum

#: subspace iterations of the range finder (each one pass of ``Ỹᵀ Q`` and one of ``Ỹ K``)
POWER = 1


def summed(products: Iterable[np.ndarray]) -> np.ndarray:
    """Return the sum of ``products`` (equal shapes), added in place into the first.

    Two arrays are held at a time, not all of them: for per-block ``N×k`` products.
    """
    total = None
    for part in products:
        total = part if total is None else np.add(total, part, out=total)
    if total is None:
        raise ValueError("summed() needs at least one array")
    return total


def sample_basis(data: list[Block], size: int, rng: np.random.Generator, power: int = POWER):
    """Return ``Q`` (``N×size``, orthonormal columns) spanning the blocks' leading columns.

    ``1 + 2·power`` passes over every block; the blocks are weighted as they are fitted.
    """
    Q = np.linalg.qr(summed(b.left(rng.standard_normal((b.width, size))) for b in data))[0]
    for _ in range(power):
        Q = np.linalg.qr(summed(b.left(b.right(Q)) for b in data))[0]
    return Q


def compress_samples(
    data: list[Block],
    size: int,
    rng: np.random.Generator,
    power: int = POWER,
    *,
    spectrum: bool = True,
) -> tuple[np.ndarray, list[Block]]:
    """Return ``(Q, blocks)``: the basis and every block as ``Qᵀ Ỹ_b`` (``size`` rows).

    ``2 + 2·power`` passes over every block. Each compressed block has the original's name,
    natural feature shape, scale, ``sumsq``, spectrum and feature basis, and is held in memory
    (``size × P_b`` float64). ``spectrum``: read each block's singular values first (what
    ``l1_penalty="auto"`` needs of the full data; 40 % of a compressed R = 10 fit on 2,000
    MNIST inputs, so skipped for a fit without it).
    """
    for b in data:
        if spectrum:
            block_spectrum(b, rng)  # the noise floor must come from the full data
    Q = sample_basis(data, size, rng, power)
    small = []
    for b in data:
        scale = b.scale or 1.0
        rows = (b.right(Q).T / scale).reshape(size, *b.shape[1:])  # Qᵀ (Y − 1μᵀ), unscaled
        s = Block(b.name, rows)
        s.scale = b.scale
        s.sumsq = b.sumsq  # the fit is measured against the whole block
        s.spectrum = b.spectrum
        s.basis = b.basis  # a block compressed in its features too keeps its V
        s.mode_bases = b.mode_bases  # and a CP block compressed in its modes, its U_j
        s.full_shape, s.full_mean, s.data_basis = b.full_shape, b.full_mean, b.data_basis
        s.exact_basis = b.exact_basis
        small.append(s)
    return Q, small
