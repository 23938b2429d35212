"""Compressed blocks for fast repeated fits (the rank scan).

Each wide matrix block ``Ỹ`` (``N×P``) is replaced by ``Ỹ V`` (``N×k``), with ``V`` (``P×k``,
orthonormal) a randomized basis of its leading row space (Halko, Martinsson & Tropp 2011: a
Gaussian sketch and ``power`` subspace iterations, ``2 + 2·power`` passes over the data).

A fit on the compressed block is the fit on the full block with the block's loadings kept in
``span(V)``: for ``B = V B̃`` the loss is ``‖Ỹ V − A Σ B̃ᵀ‖² + ‖Ỹ (I − V Vᵀ)‖²``, so the
compressed block keeps the full block's ``‖Ỹ‖²`` (its fit is the full-data fit of that model)
and its spectrum (the noise floor of ``l1="auto"`` is the full data's). With ``k`` a little
above the largest rank fitted, the lost part is the data's tail, which no R-component model
explains either.

A CP block (``N×d₁×…×d_m``, an input image) is compressed in every mode at least ``2k`` wide
to its leading ``k`` mode directions ``U_j`` (``d_j×k``, the eigenvectors of the mode's Gram
matrix, one pass): ``Ỹ ×_j U_jᵀ`` (Tucker compression; CANDELINC, Carroll, Pruzansky &
Kruskal 1980, and Bro & Andersson 1998 for CP). A CP fit there is the fit with each mode's
factor kept in ``span(U_j)``, and its loss, measured against the full block's ``‖Ỹ‖²``, is the
full-data loss of those factors, as for a matrix block. On a 3×224×224 input each fit of the
rank scan touched 150,528 values a sample; at R ≤ 20 it touches 3×30×30.
"""

from __future__ import annotations

import numpy as np

from factorlens.factorize.blocks import Block, _to_numpy
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
    small = _compressed_copy(block, block.left(basis) / (block.scale or 1.0))
    small.basis = chain(block.basis, basis)  # a sketched block keeps its own basis first
    small.data_basis = block.data_basis
    small.exact_basis = False  # the leading directions only
    return small


def _compressed_copy(block: Block, data: np.ndarray) -> Block:
    """Return ``data`` (``block``'s compressed coordinates, unscaled) as a block of its own.

    The copy keeps what the fit and its noise floor read of the full block: the name, the
    scale, ``sumsq`` (the fit is measured against the whole block), the spectrum, and the
    full shape and means that the mapped-back result reports.
    """
    small = Block(block.name, data)
    small.scale = block.scale
    small.sumsq = block.sumsq
    small.spectrum = block.spectrum
    small.full_shape = block.full_shape
    small.full_mean = (
        block.full_mean if block.basis is not None else (block.mean if block.center else None)
    )
    return small


def compressed_modes(block: Block, rank: int, rng: np.random.Generator) -> Block:
    """``block`` (a CP block) with every mode at least ``2 (rank + OVERSAMPLE)`` wide compressed.

    A mode is compressed to ``k = rank + OVERSAMPLE`` directions only where that at least
    halves it: a 28-pixel MNIST side at ``k = 20`` would save little time and move the fits
    of a real network's input (on a trained MnistCNN the chosen rank of one checkpoint moved
    from 4 to 8 with it), a 224-pixel side shrinks 11×. The copy keeps the name, scale,
    ``norm_sq`` and spectrum of ``block``; ``mode_bases`` holds each mode's ``U_j`` (``None``
    for a mode left whole), which maps the copy's mode factors back (``b_j = U_j b̃_j``).
    ``block`` itself when no mode is that wide. Two passes over the block's chunks (centred
    as fitted, unscaled): the mode Gram matrices, then the projection.
    """
    k = int(rank) + OVERSAMPLE
    dims = block.shape[1:]
    wide = [d >= 2 * k for d in dims]
    if len(dims) < 2 or not any(wide):
        return block
    block_spectrum(block, rng)  # the noise floor must come from the full data
    grams = [np.zeros((d, d)) for d in dims]
    for _, piece in block.sub_chunks():
        y = _to_numpy(piece).reshape(-1, *dims)
        for j, d in enumerate(dims):
            if wide[j]:
                unfolded = np.moveaxis(y, j + 1, 0).reshape(d, -1)
                grams[j] += unfolded @ unfolded.T
    bases = [
        np.linalg.eigh(g)[1][:, ::-1][:, :k].copy() if w else None
        for g, w in zip(grams, wide, strict=True)
    ]
    core = np.empty(
        (block.n_rows, *(d if u is None else k for u, d in zip(bases, dims, strict=True)))
    )
    for start, piece in block.sub_chunks():
        y = _to_numpy(piece).reshape(-1, *dims)
        for j, u in enumerate(bases):
            if u is not None:  # mode j + 1 of y times U_j, kept in place
                y = np.moveaxis(np.tensordot(y, u, axes=([j + 1], [0])), -1, j + 1)
        core[start : start + y.shape[0]] = y
    small = _compressed_copy(block, core)
    small.mode_bases = bases
    return small
