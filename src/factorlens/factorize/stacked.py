"""Many small matrix blocks fitted side by side: one product and one update for all of them.

A ResNet-50 has 105 layers. Sketched or fitted through their row spaces, each is a small
``N×k`` matrix, and an ALS iteration spent its time in Python: per block, per iteration, two
products, ``R`` column updates of ``3`` sweeps, a loss: thousands of small numpy calls (about
a millisecond a block). :class:`StackedMatrices` holds every such block of a fit as one
``N×ΣP`` matrix ``S = [s₁Y₁ | s₂Y₂ | …]`` (scaled and centred as fitted) and does the same
arithmetic for all of them at once:

* ``Ỹ_bᵀ A`` of every block is one product ``Sᵀ A``, split by rows;
* ``Σ_b Ỹ_b K_b`` is ``S [K₁; K₂; …]``;
* the column updates (exact solves, or the coordinate updates of the penalty and of
  nonnegativity, one compiled loop) run on the stacked factors, each block's part of a
  column a segment of rows, so the ACMTF penalty still acts per block;
* each block's loss terms are segment sums too.

The arithmetic is the per-block arithmetic of :mod:`factorlens.factorize.engine`, in another
order of summation; results agree to round-off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from factorlens.factorize.blocks import Block
from factorlens.factorize.linalg import column_updates, solve_ls

#: a fit stacks its matrix blocks when it has at least this many of them
MIN_BLOCKS = 3
#: and when their stacked copy holds at most this many bytes
MAX_BYTES = 512 * 1024**2


def stackable(block: Block, model: str) -> bool:
    """Whether ``block`` can join a stack: an in-memory numpy matrix block."""
    return model == "matrix" and block.in_memory and not block._torch and block._dask is None


class StackedMatrices:
    """The matrix blocks ``index`` of a fit, side by side (see the module docstring).

    Parameters
    ----------
    blocks : sequence of Block
        Every block of the fit.
    index : sequence of int
        The positions of the stacked ones (in-memory numpy matrix blocks).
    """

    def __init__(self, blocks: Sequence[Block], index: Sequence[int]) -> None:
        self.index = list(index)
        parts = [blocks[i] for i in self.index]
        widths = np.array([b.width for b in parts])
        self.starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.intp)
        self.stops = self.starts + widths
        self.widths = widths
        dtype = np.float64 if any(b.dtype == np.float64 for b in parts) else np.float32
        S = np.empty((parts[0].n_rows, int(widths.sum())), dtype=dtype)
        for b, a, z in zip(parts, self.starts, self.stops, strict=True):
            S[:, a:z] = b._data * b.scale
        self.S = S
        self.norm_sq = np.array([b.norm_sq for b in parts])

    @classmethod
    def build(cls, blocks: Sequence[Block], models: Sequence[str]) -> StackedMatrices | None:
        """Return the stack of ``blocks``' stackable blocks, or None when it would not pay."""
        index = [i for i, (b, m) in enumerate(zip(blocks, models, strict=True)) if stackable(b, m)]
        size = sum(blocks[i].n_rows * blocks[i].width for i in index) * 8
        if len(index) < MIN_BLOCKS or size > MAX_BYTES:
            return None
        return cls(blocks, index)

    # ------------------------------------------------------------------ products
    def _split(self, stacked: np.ndarray) -> list[np.ndarray]:
        return [stacked[a:z] for a, z in zip(self.starts, self.stops, strict=True)]

    def right(self, A: np.ndarray) -> list[np.ndarray]:
        """Return ``Ỹ_bᵀ A`` of every stacked block (views of one ``(ΣP, k)`` float64 array)."""
        out = self.S.T @ np.ascontiguousarray(A, dtype=self.S.dtype)
        return self._split(np.asarray(out, dtype=np.float64))

    def left(self, K: Sequence[np.ndarray]) -> np.ndarray:
        """Return ``Σ_b Ỹ_b K_b`` over the stacked blocks (``K_b``: ``(P_b, k)``)."""
        stacked = np.concatenate(list(K), axis=0).astype(self.S.dtype, copy=False)
        return np.asarray(self.S @ stacked, dtype=np.float64)

    # ------------------------------------------------------------------ updates
    def update(
        self,
        T: Sequence[np.ndarray],
        AtA: np.ndarray,
        F: Sequence[np.ndarray],
        penalties: Sequence[np.ndarray],
        *,
        exact: bool,
        nonneg: bool,
        sweeps: int,
    ) -> list[np.ndarray]:
        """Return every stacked block's updated factor from ``T_b = Ỹ_bᵀ A`` (see the engine).

        ``exact``: the least-squares solve ``T_b (AᵀA)⁺``; otherwise ``sweeps`` coordinate
        sweeps over the columns, each block's penalty ``penalties[b]`` (``(R,)``) on the norm
        of its own part of a column.
        """
        Z = np.concatenate(list(T), axis=0)
        if exact:
            return self._split(solve_ls(Z, AtA))
        Fs = np.concatenate(list(F), axis=0)
        pen = np.stack(list(penalties))  # (blocks, R)
        Fs = column_updates(Z, AtA, Fs, pen, nonneg, sweeps, starts=self.starts)
        return self._split(Fs)

    # ------------------------------------------------------------------ loss
    def losses(
        self, T: Sequence[np.ndarray], K: Sequence[np.ndarray], AtA: np.ndarray
    ) -> np.ndarray:
        """Return every stacked block's ``‖Ỹ_b − A K_bᵀ‖²`` (``(blocks,)``), none below 0."""
        Ts = np.concatenate(list(T), axis=0)
        Ks = np.concatenate(list(K), axis=0)
        cross = np.add.reduceat(np.einsum("pr,pr->p", Ts, Ks), self.starts)
        model = np.add.reduceat(np.einsum("pr,pr->p", Ks @ AtA, Ks), self.starts)
        return np.maximum(self.norm_sq - 2.0 * cross + model, 0.0)

    def strengths(self, F: Sequence[np.ndarray]) -> np.ndarray:
        """Return every stacked block's column norms ``(blocks, R)`` (the strengths σ)."""
        Fs = np.concatenate(list(F), axis=0)
        return np.sqrt(np.add.reduceat(Fs * Fs, self.starts, axis=0))


__all__ = ["MAX_BYTES", "MIN_BLOCKS", "StackedMatrices", "stackable"]
