"""Wide matrix blocks fitted through their exact row-space coordinates (``P ≥ 2N``).

An unconstrained matrix block ``Ỹ`` (``N×P``) enters every ALS update only through ``Ỹᵀ A`` and
``Ỹ V`` with ``V`` in its row space, so it can be replaced by ``C = U Λ^{1/2}`` (``N×r``),
where ``Y Yᵀ = U Λ Uᵀ`` is its Gram matrix (``r`` its rank): ``C Cᵀ = Y Yᵀ``, and the fit on
``C`` is the fit on ``Y`` exactly, with the loadings ``V = Q Ṽ`` for the row-space basis
``Q = Yᵀ U Λ^{-1/2}``. ``Q`` (``P×r``) is never formed: it is applied through the block's own
products (:class:`RowSpaceBasis`), once for the start and once for the final loadings.

What it saves: an ALS iteration then reads ``N×r`` numbers instead of ``N×P``; the Gram
matrix costs ``N²P`` once, about ``N / 4R`` iterations' worth. On 256 ResNet-18 activations
at 224 px (40 layers, 5 M features per input) an iteration fell from seconds to milliseconds.
The start is the uncompressed fit's (the random test matrix is drawn at the full width and
mapped, :func:`factorlens.factorize.initial.test_matrix`), and the noise floor is read from
the full block (:func:`factorlens.factorize.penalty.block_spectrum` follows ``source``), so
the fit is the uncompressed fit, up to float rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from factorlens.factorize.blocks import Block

#: blocks at least this many times wider than they have rows are fitted through their row space
WIDTH_RATIO = 2
#: the most rows whose ``N×N`` Gram matrix is formed (float64: 128 MiB)
MAX_ROWS = 4096
#: eigenvalues below this share of the largest are the Gram matrix's round-off, not its rank
RANK_TOL = 1e-12


class RowSpaceBasis:
    """``Q = Yᵀ M`` (``P×r``) of a block held in full, applied through its products.

    ``Q @ f`` is ``Yᵀ (M f)`` and ``Q.T @ Ω`` is ``Mᵀ (Y Ω)``, for ``Y`` the block's centred,
    unscaled data; ``M = U Λ^{-1/2}`` makes the columns of ``Q`` orthonormal.
    """

    def __init__(self, source: Block, M: np.ndarray) -> None:
        self.source = source
        self.M = M
        self.shape = (source.width, M.shape[1])

    def __matmul__(self, f: np.ndarray) -> np.ndarray:
        return self.source.right(self.M @ f) / (self.source.scale or 1.0)

    @property
    def T(self) -> _Transposed:
        """The transpose, for ``Q.T @ Ω``."""
        return _Transposed(self)


class _Transposed:
    def __init__(self, basis: RowSpaceBasis) -> None:
        self.basis = basis

    def __matmul__(self, omega: np.ndarray) -> np.ndarray:
        b = self.basis
        return b.M.T @ (b.source.left(omega) / (b.source.scale or 1.0))


def gram(block: Block, memory_budget: int = 1024**3) -> np.ndarray:
    """Return ``Y Yᵀ`` (``N×N``, float64) of a block's centred, unscaled data.

    In memory: summed over panels of at most 4,096 features, each product in the data's
    precision, accumulated in float64. On disk: a panel of rows at a time (as many as fit
    ``memory_budget``) against every chunk of rows from it on, so the block is read once per
    panel.
    """
    n = block.n_rows
    G = np.zeros((n, n))
    if block.in_memory:
        data = block._data
        for c in range(0, block.width, 4096):
            panel = data[:, c : c + 4096]
            G += _to_numpy(panel @ panel.T)
        return G
    c = block.chunk_rows  # panels of whole chunks
    step = c * max(1, int(memory_budget) // max(4 * block.width * c, 1))
    for a in range(0, n, step):
        panel = np.concatenate([y for span, y in block.chunks() if a <= span.start < a + step])
        b = a + len(panel)
        for span, y in block.chunks():
            if span.start < a:
                continue
            part = _to_numpy(panel @ y.T)
            G[a:b, span] += part
            if span.start >= b:
                G[span, a:b] += part.T
    return G


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x.astype(np.float64, copy=False)
    return x.detach().to("cpu").double().numpy()


def eligible(block: Block, model: str, nonneg: bool) -> bool:
    """Whether ``block`` is fitted through its row space (a wide, unconstrained matrix block)."""
    return (
        model == "matrix"
        and not nonneg
        and block.basis is None
        and block._dask is None
        and block.n_rows <= MAX_ROWS
        and block.width >= WIDTH_RATIO * block.n_rows
    )


def coordinates(block: Block) -> Block:
    """Return ``block`` as its exact row-space coordinates (see the module docstring).

    The new block keeps the name, scale, ``sumsq``, centring and full shape of ``block``, has
    ``source`` = ``block`` (for its noise floor) and ``basis`` = :class:`RowSpaceBasis`.
    """
    evals, U = np.linalg.eigh(gram(block))
    keep = evals > max(float(evals.max()), 0.0) * RANK_TOL
    if not np.any(keep):  # an all-zero block: one zero coordinate
        keep[-1] = True
    evals, U = np.clip(evals[keep], 0.0, None), U[:, keep]
    root = np.sqrt(evals)
    coords = U * root
    M = U / np.where(root > 0, root, 1.0)
    small = Block(block.name, coords)
    small.scale = block.scale
    small.sumsq = block.sumsq
    small.source = block
    small.basis = [RowSpaceBasis(block, M)]
    small.data_basis = small.exact_basis = True
    small.full_shape = block.full_shape
    small.full_mean = block.mean if block.center else None
    return small


def through_rowspace(data: list[Block], models: list[str], nonneg: bool) -> list[Block]:
    """Return ``data`` with every eligible block replaced by its row-space coordinates."""
    return [
        coordinates(b) if eligible(b, m, nonneg) else b for b, m in zip(data, models, strict=True)
    ]
