"""Compressed blocks for fast repeated fits (the rank scan).

Each wide matrix block ``Ỹ`` (``N×P``) is replaced by ``Ỹ V`` (``N×k``), with ``V`` (``P×k``,
orthonormal) a randomized basis of its leading row space (Halko, Martinsson & Tropp 2011: a
Gaussian sketch and ``power`` subspace iterations, ``2 + 2·power`` passes over the data).

A fit on the compressed block is the fit on the full block with the block's loadings kept in
``span(V)``: for ``B = V B̃`` the loss is ``‖Ỹ V − A Σ B̃ᵀ‖² + ‖Ỹ (I − V Vᵀ)‖²``, so the
compressed block keeps the full block's ``‖Ỹ‖²`` (its fit is the full-data fit of that model)
and its spectrum (the noise floor of ``l1="auto"`` is the full data's). With ``k`` a little
above the largest rank fitted, the lost part is the data's tail, which no R-component model
explains either. CP blocks (natural-shape tensors) are left as they are.
"""

from __future__ import annotations

import numpy as np

from factorlens.factorize.blocks import Block
from factorlens.factorize.penalty import block_spectrum
from factorlens.factorize.reduced import chain

#: sketch columns beyond the largest rank fitted, and subspace iterations
OVERSAMPLE = 10
POWER = 2


def compressed(block: Block, rank: int, rng: np.random.Generator, power: int = POWER) -> Block:
    """``block`` compressed to ``rank + OVERSAMPLE`` columns (itself when not narrower).

    The copy keeps the name, scale, ``norm_sq`` and spectrum of ``block``; ``basis`` is ``V``,
    which maps the copy's loadings back (``B = V B̃``).
    """
    k = int(rank) + OVERSAMPLE
    if k >= block.width:
        return block
    block_spectrum(block, rng)  # the noise floor must come from the full data
    basis = np.linalg.qr(block.right(rng.standard_normal((block.n_rows, k))))[0]
    for _ in range(power):
        basis = np.linalg.qr(block.right(block.left(basis)))[0]
    scale = block.scale or 1.0
    small = Block(block.name, block.left(basis) / scale)
    small.scale = block.scale
    small.sumsq = block.sumsq  # the fit is measured against the whole block
    small.spectrum = block.spectrum
    small.basis = chain(block.basis, basis)  # a sketched block keeps its own basis first
    small.full_shape, small.data_basis = block.full_shape, block.data_basis
    small.exact_basis = False  # the leading directions only
    small.full_mean = (
        block.full_mean if block.basis is not None else (block.mean if block.center else None)
    )
    return small
