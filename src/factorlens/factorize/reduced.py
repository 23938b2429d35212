"""Wide blocks held as their coordinates in a feature basis: ``Y ≈ C Qᵀ``, fitted exactly so.

A layer with far more features than inputs (``P ≫ N``: a ResNet-50 stage at 224 px has
800,000 features per input) enters an unconstrained matrix-block fit only through its row
space. :mod:`factorlens.sketched` streams such a layer past a sketch and keeps

* ``basis`` ``Q`` (``P×k``, orthonormal columns): a randomized basis of the layer's leading
  row space (Halko, Martinsson & Tropp 2011), or its whole row space when ``N ≤ k``;
* ``coords`` ``C = Y Q`` (``N×k``): every input's exact coordinates in that basis;
* each input's squared norm ``‖y_n‖²`` (so the block's energy, and a split half's, is exact);
* a random sample of the layer's columns, for the noise floor of ``l1_penalty="auto"``;
* optionally the column sums (centring).

A fit on ``C`` is the fit on ``Y`` with the block's loadings kept in ``span(Q)``: for
``V = Q Ṽ``, ``‖Y − A Σ Vᵀ‖² = ‖C − A Σ Ṽᵀ‖² + (‖Y‖² − ‖C‖²)`` — the compressed block keeps the
full block's ``‖Y‖²`` (its reported fit is the fit on all of ``Y``), and ``‖C‖² / ‖Y‖²`` is the
share of the layer's energy the basis captures (1 when ``N ≤ k``: then the fit is the exact,
uncompressed fit). :func:`as_block` makes the engine's :class:`~factorlens.factorize.blocks.Block`
of it; :func:`expand_result` maps a fit's loadings back to the full features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from factorlens.errors import FactorlensError


@dataclass
class ReducedBlock:
    """A block ``(N, …)`` kept as coordinates in a feature basis (see the module docstring).

    Attributes
    ----------
    shape : tuple of int
        The full block's shape ``(N, …)``.
    coords : numpy.ndarray
        ``(N, k)`` float32: ``Y Q``, the inputs' coordinates in ``basis``.
    basis : numpy.ndarray
        ``(P, k)``, orthonormal columns; ``P = prod(shape[1:])``. float32, or float16 for a
        truncated sketch (its error, about 1e-3 of a loading, is far below the truncation's).
    row_sumsq : numpy.ndarray
        ``(N,)`` float64: ``‖y_n‖²`` of every input.
    columns : numpy.ndarray
        ``(N, m)`` float32: the columns ``column_index`` of ``Y`` (a random sample).
    column_index : numpy.ndarray
        ``(m,)`` int64, sorted: which features ``columns`` holds.
    column_sums : numpy.ndarray or None
        ``(P,)`` float64 sums over inputs, when recorded (needed for centring).
    exact : bool
        ``basis`` spans the whole row space (the sketch kept ``k ≥ N`` directions).
    """

    shape: tuple[int, ...]
    coords: np.ndarray
    basis: np.ndarray
    row_sumsq: np.ndarray
    columns: np.ndarray
    column_index: np.ndarray
    column_sums: np.ndarray | None = None
    exact: bool = False

    @property
    def ndim(self) -> int:
        """The full block's number of axes."""
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        """float32, as every captured block."""
        return np.dtype(np.float32)

    @property
    def width(self) -> int:
        """``P``, the full block's features per input."""
        return int(np.prod(self.shape[1:]))

    @property
    def sumsq(self) -> float:
        """``‖Y‖²`` of the full block."""
        return float(self.row_sumsq.sum())

    @property
    def captured(self) -> float:
        """The share of ``‖Y‖²`` inside ``span(basis)``: ``‖C‖² / ‖Y‖²`` (1 when exact)."""
        total = self.sumsq
        if total <= 0:
            return 1.0
        return float(
            min(1.0, np.einsum("ij,ij->", self.coords, self.coords, dtype=np.float64) / total)
        )

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, rows: Any) -> ReducedBlock:
        """Return the same block for some inputs only (``rows``: an index array or a slice)."""
        if isinstance(rows, slice):
            rows = np.arange(self.shape[0])[rows]
        rows = np.asarray(rows)
        if rows.ndim != 1:
            raise FactorlensError("a reduced block is indexed by a 1-D array of input rows")
        sums = None
        if self.column_sums is not None:
            raise FactorlensError(
                "a centred, sketched block cannot be split by inputs (its per-input column "
                "sums are not kept); fit it without `center`, or capture the layer whole"
            )
        return ReducedBlock(
            shape=(int(rows.size), *self.shape[1:]),
            coords=self.coords[rows],
            basis=self.basis,
            row_sumsq=self.row_sumsq[rows],
            columns=self.columns[rows],
            column_index=self.column_index,
            column_sums=sums,
            exact=self.exact,
        )

    def is_constant(self) -> bool:
        """Whether every entry is the same number (a dead layer), from what was kept.

        Every sampled column equals that number ``c`` and every input's squared norm is
        ``c² P``.
        """
        if self.columns.size == 0:
            return bool(np.all(self.row_sumsq == 0))
        c = float(self.columns.flat[0])
        expected = c * c * self.width
        return bool(
            np.ptp(self.columns) == 0.0
            and np.allclose(self.row_sumsq, expected, rtol=1e-5, atol=1e-30)
        )

    def mean(self) -> np.ndarray:
        """``(P,)`` the per-feature mean over inputs (needs ``column_sums``)."""
        if self.column_sums is None:
            raise FactorlensError(
                "this sketched block kept no column sums, so it cannot be centred; capture "
                "it again with centring asked for"
            )
        return self.column_sums / max(int(self.shape[0]), 1)


def as_block(name: str, reduced: ReducedBlock, *, center: bool = False, **kwargs: Any):
    """Return the engine's :class:`~factorlens.factorize.blocks.Block` for ``reduced``.

    The block's data are the coordinates (``N×k``, centred with ``center``), its ``sumsq`` the
    full block's, its ``spectrum`` that of the sampled columns, its ``basis`` ``Q`` and its
    ``full_shape`` the block's own; ``kwargs`` go to ``Block`` (device, backend).
    """
    from factorlens.factorize.blocks import Block

    coords = reduced.coords
    sumsq = reduced.sumsq
    columns = reduced.columns
    if center:
        mu = reduced.mean()
        coords = coords - coords.mean(axis=0, dtype=np.float64).astype(coords.dtype)
        sumsq = max(sumsq - reduced.shape[0] * float(mu @ mu), 0.0)
        columns = columns - mu[reduced.column_index].astype(columns.dtype)
    block = Block(name, coords, **kwargs)
    block.sumsq = sumsq
    block.full_shape = tuple(int(s) for s in reduced.shape)
    block.basis = [reduced.basis]
    block.data_basis = True
    block.exact_basis = reduced.exact
    if center:
        block.full_mean = reduced.mean()  # the full features' means, for the result
    block.spectrum = sample_spectrum(columns, (block.n_rows, reduced.width))
    return block


def sample_spectrum(
    sample: np.ndarray, full: tuple[int, int], max_rows: int = 2048, seed: int = 0
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Return ``(singular values ascending, sample's sorted shape, full (N, P))``.

    The form :func:`factorlens.factorize.penalty.block_spectrum` caches: the singular values
    of a random submatrix of at most ``max_rows`` rows of ``sample`` (sampled columns).
    """
    sub = np.asarray(sample, dtype=np.float64)
    if sub.shape[0] > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(sub.shape[0], max_rows, replace=False))
        sub = sub[rows]
    gram = sub @ sub.T if sub.shape[0] <= sub.shape[1] else sub.T @ sub
    s = np.sort(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)))
    return s, (min(sub.shape), max(sub.shape)), (int(full[0]), int(full[1]))


def map_back(basis: Sequence[np.ndarray] | np.ndarray | None, f: np.ndarray) -> np.ndarray:
    """Return loadings ``f`` (``k×R``) in the full features: ``Q₁ (Q₂ (… f))``.

    ``basis`` is one matrix or a chain of them (a sketched block compressed again by the rank
    scan keeps both); ``None`` returns ``f``.
    """
    if basis is None:
        return f
    chain = [basis] if isinstance(basis, np.ndarray) else list(basis)
    for q in reversed(chain):
        if isinstance(q, np.ndarray) and q.dtype == np.float16:  # a truncated sketch's basis
            f = q.astype(np.float32) @ f.astype(np.float32)  # no float64 copy of a P×k basis
        else:
            f = q @ f
    return f


def chain(outer: Any, inner: np.ndarray) -> Any:
    """Return the basis of a block with basis ``outer`` compressed again by ``inner``.

    ``inner`` itself for a block fitted as it was, else the chain ``[…outer, inner]``.
    """
    if outer is None:
        return inner
    return [*([outer] if isinstance(outer, np.ndarray) else list(outer)), inner]


def expand_result(
    result: Any,
    blocks: Sequence[Any],
    samples: np.ndarray | None = None,
    *,
    to_sketch: bool = False,
) -> Any:
    """Map a fit on compressed blocks back to the full blocks, in place; return it.

    Every block with a ``basis`` gets its loadings as ``B = Q B̃`` (unit norm kept: ``Q`` has
    orthonormal columns) in float32 when the block is wide, its full shape and means; with the
    samples compressed to ``samples`` (``Q``, ``N×k``) the sample factor becomes ``Q Â``.
    ``to_sketch`` stops a sketched layer at its sketch's coordinates (``N×k``, the basis all
    fits on that layer share, so congruences between them are those of the full loadings).
    """
    if samples is not None:
        result.A = samples @ result.A
        result.block_shapes = [(samples.shape[0], *s[1:]) for s in result.block_shapes]
    for i, b in enumerate(blocks):
        modes = getattr(b, "mode_bases", None)
        if modes is not None:  # a CP block compressed in its modes: b_j = U_j b̃_j
            result.factors[b.name] = [
                f if u is None else u @ f
                for u, f in zip(modes, result.factors[b.name], strict=True)
            ]
            result.block_shapes[i] = tuple(b.full_shape)
            if b.full_mean is not None:
                result.means[b.name] = np.asarray(b.full_mean).reshape(b.full_shape[1:])
            continue
        basis = getattr(b, "basis", None)
        if basis is None:
            continue
        steps = list(basis) if isinstance(basis, list | tuple) else [basis]
        if to_sketch and b.data_basis:
            shape: tuple[int, ...] = (int(b.n_rows), int(steps[0].shape[1]))
            steps = steps[1:]
        else:
            shape = tuple(b.full_shape)
            if b.full_mean is not None:
                result.means[b.name] = np.asarray(b.full_mean).reshape(shape[1:])
        full = map_back(steps or None, result.factors[b.name][0])
        if full.shape[0] * full.shape[1] > 1 << 20:  # wide: half the memory, float32 precision
            full = full.astype(np.float32)
        result.factors[b.name] = [full, *result.factors[b.name][1:]]
        result.block_shapes[i] = shape
    return result
