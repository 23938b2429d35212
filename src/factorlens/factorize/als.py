"""The ALS iterations of one CMTF fit: the block updates, the shared factor, the loss.

:class:`ALS` holds what the iterations need: the prepared blocks, their matrix blocks stacked
into one product (:class:`~factorlens.factorize.stacked.StackedMatrices`), the penalty on each
component's strength per block and the settings of the updates.
:class:`~factorlens.factorize.CMTF` (the estimator) makes one per fit and runs it from each
start, then for the refinement and the refit. Every update is exact for its block of variables
(an ``R×R`` least-squares solve, or column-wise coordinate updates when nonnegativity or the
penalty make the solve inexact), so the loss never increases. The data are touched only
through ``Ỹ_bᵀ A`` and ``Ỹ_b K_b`` (:mod:`factorlens.factorize.blocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from factorlens.factorize import linalg
from factorlens.factorize.blocks import Block
from factorlens.factorize.compiled import (
    BETA_GROW,
    BETA_MAX_GROW,
    BETA_MAX_START,
    BETA_SHRINK,
    BETA_START,
    als_run,
    announce_compile,
    one_blas_thread,
    pack,
    split_factors,
    stacked_factors,
)
from factorlens.factorize.linalg import khatri_rao
from factorlens.factorize.stacked import StackedMatrices
from factorlens.interrupt import check as check_cancelled


@dataclass
class State:
    """Factors during the fit: ``F[b][0]`` absorbs σ (unnormalised), the other modes unit-norm.

    ``A`` is the shared sample factor ``(N, R)`` with unit-norm columns; ``F[b]`` the list of
    block ``b``'s non-shared factors (one for a matrix block, one per mode for a CP block).
    """

    A: np.ndarray
    F: list[list[np.ndarray]]

    def copy(self) -> State:
        """Return a state whose factor lists (not arrays) can be replaced without touching this."""
        return State(self.A, [list(f) for f in self.F])


def refit_penalties(state: State) -> list[np.ndarray]:
    """Return the penalties of a refit: 0 on every live strength, infinite on a zero one."""
    return [np.where(np.linalg.norm(Fb[0], axis=0) > 0, 0.0, np.inf) for Fb in state.F]


def converged(hist: Sequence[float], tol: float) -> bool:
    """Return whether the last relative loss change in ``hist`` is ≤ ``tol``.

    With float32 blocks the loss carries round-off of about 1e-7 of the data norm, so a tiny
    ``tol`` may run to the iteration cap; the factors are then as good as the data products
    allow.
    """
    if len(hist) < 2:
        return False
    prev, cur = hist[-2], hist[-1]
    return abs(prev - cur) <= tol * max(abs(prev), linalg.TINY)


class ALS:
    """The iterations of one fit of ``data`` (prepared blocks, their ``models``).

    Parameters
    ----------
    data : list of Block
        The blocks, input first.
    models : list of str
        ``"matrix"`` or ``"cp"`` per block.
    penalty : list of numpy.ndarray
        Per block, the penalty on each component's strength ``(R,)`` (``inf`` holds it at 0).
    nonneg, inner_sweeps, tol, extrapolate, callback, verbose
        :class:`~factorlens.factorize.CMTF`'s settings of the same names.
    """

    def __init__(
        self,
        data: list[Block],
        models: list[str],
        penalty: list[np.ndarray],
        *,
        nonneg: bool,
        inner_sweeps: int,
        tol: float,
        extrapolate: bool = True,
        callback: Callable[[int, float], Any] | None = None,
        verbose: bool = False,
    ) -> None:
        self.data = data
        self.dims = [b.shape[1:] for b in data]
        # a small in-memory fit runs as one compiled loop (compiled.py), unless a callback
        # must see every iteration; else many matrix blocks make one product (stacked.py)
        self.packed = pack(data, models) if callback is None else None
        self.stack = StackedMatrices.build(data, models) if self.packed is None else None
        self.nonneg, self.sweeps, self.tol = nonneg, inner_sweeps, tol
        self.extrapolate, self.callback, self.verbose = extrapolate, callback, verbose
        self.penalty = penalty

    @property
    def penalty(self) -> list[np.ndarray]:
        """Per block, the penalty on each component's strength, ``(R,)``."""
        return self._penalty

    @penalty.setter
    def penalty(self, penalty: list[np.ndarray]) -> None:
        # whether the updates are plain least squares (no penalty, no constraint): read
        # several times per ALS step, so decided once per penalty (the rank scan's small
        # fits spent 4 % of their time deciding it)
        self._penalty = penalty
        self.exact = not self.nonneg and all(not np.any(p) for p in penalty)

    # ------------------------------------------------------------------------- one sweep
    def update_block(
        self, Tb: np.ndarray, AtA: np.ndarray, Fb: list[np.ndarray], dims: Any, pen: np.ndarray
    ) -> None:
        """Update the non-shared factors of one block in place from ``Tb = Ỹ_bᵀ A``.

        ``pen`` (R,) is the block's penalty on each component's strength.
        """
        if len(Fb) == 1:
            if self.exact:
                Fb[0] = linalg.solve_ls(Tb, AtA)
            else:
                Fb[0] = linalg.column_updates(Tb, AtA, Fb[0], pen, self.nonneg, self.sweeps)
            return
        T = Tb.reshape(*dims, -1)
        for k in range(len(Fb)):
            Z = linalg.mttkrp(T, Fb, k)
            G = AtA * linalg.gram(Fb, skip=k)
            if self.exact:
                Fb[k] = linalg.solve_ls(Z, G)
            else:
                others = np.prod(
                    [np.linalg.norm(f, axis=0) for j, f in enumerate(Fb) if j != k], axis=0
                )
                # an infinite penalty (a strength held at zero) stays infinite: no inf · 0
                pen_k = np.where(np.isinf(pen), np.inf, np.where(np.isinf(pen), 0.0, pen) * others)
                Fb[k] = linalg.column_updates(Z, G, Fb[k], pen_k, self.nonneg, self.sweeps)
            if k > 0:
                n = np.linalg.norm(Fb[k], axis=0)
                ok = n > linalg.TINY
                Fb[k][:, ok] /= n[ok]
                Fb[0][:, ok] *= n[ok]

    def update_A(
        self, A: np.ndarray, M: np.ndarray, G: np.ndarray, F: list[list[np.ndarray]]
    ) -> np.ndarray:
        """Return the new shared factor from ``M = Σ Ỹ_b K_b`` and ``G = Σ K_bᵀ K_b``.

        Its columns are unit-norm; an exact update moves their norms into ``F[b][0]``.
        """
        if self.exact:
            new = linalg.solve_ls(M, G)
            n = np.linalg.norm(new, axis=0)
            ok = n > linalg.TINY
            new[:, ok] /= n[ok]
            new[:, ~ok] = A[:, ~ok]  # a component absent from every block keeps its loadings
            for Fb in F:
                Fb[0][:, ok] *= n[ok]
            return new
        return linalg.unit_column_updates(M, G, A, self.nonneg, self.sweeps)

    def step(self, state: State, T: list[np.ndarray]) -> State:
        """One ALS sweep from ``state``: every block's factors from ``T = Ỹᵀ A``, then ``A``."""
        A, F = state.A, state.copy().F
        AtA = A.T @ A
        st = self.stack
        stacked = set(st.index) if st is not None else set()
        for i, (Tb, Fb, d, pen) in enumerate(zip(T, F, self.dims, self.penalty, strict=True)):
            if i not in stacked:
                self.update_block(Tb, AtA, Fb, d, pen)
        if st is not None:  # the stacked matrix blocks in one update
            new = st.update(
                [T[i] for i in st.index],
                AtA,
                [F[i][0] for i in st.index],
                [self.penalty[i] for i in st.index],
                exact=self.exact,
                nonneg=self.nonneg,
                sweeps=self.sweeps,
            )
            for i, f in zip(st.index, new, strict=True):
                F[i][0] = f
        K = [khatri_rao(Fb) for Fb in F]
        M: Any = sum(  # Σ Ỹ_b K_b of the blocks not stacked (0 when all are)
            b.left(Kb)
            for i, (b, Kb) in enumerate(zip(self.data, K, strict=True))
            if i not in stacked
        )
        if st is not None:
            M = M + st.left([K[i] for i in st.index])
        G = sum(Kb.T @ Kb for Kb in K)
        return State(self.update_A(A, M, G, F), F)

    def extrapolated(self, new: State, old: State, beta: float) -> State:
        """Return ``new + β (new − old)`` for every factor, projected onto the constraints."""
        A = new.A + beta * (new.A - old.A)
        F = [
            [f + beta * (f - g) for f, g in zip(fn, fo, strict=True)]
            for fn, fo in zip(new.F, old.F, strict=True)
        ]
        if self.nonneg:
            np.maximum(A, 0.0, out=A)
            for Fb in F:
                for f in Fb:
                    np.maximum(f, 0.0, out=f)
        n = np.linalg.norm(A, axis=0)
        ok = n > linalg.TINY
        A[:, ok] /= n[ok]
        for Fb in F:
            Fb[0][:, ok] *= n[ok]
            linalg.normalise_modes(Fb)
        return State(A, F)

    # ------------------------------------------------------------------------- the loss
    def rights(self, A: np.ndarray) -> list[np.ndarray]:
        """Return ``Ỹ_bᵀ A`` of every block (the stacked ones from one product)."""
        T: list[Any] = [None] * len(self.data)
        if self.stack is not None:
            for i, t in zip(self.stack.index, self.stack.right(A), strict=True):
                T[i] = t
        return [b.right(A) if t is None else t for b, t in zip(self.data, T, strict=True)]

    def loss(self, state: State, T: list[np.ndarray]) -> tuple[float, list[float]]:
        """Return the objective at ``state`` and each block's squared residual.

        ``‖Ỹ − AKᵀ‖² = ‖Ỹ‖² − 2⟨ỸᵀA, K⟩ + ⟨AᵀA, KᵀK⟩`` from ``T = Ỹᵀ A``: no block is
        reconstructed. The objective adds the penalty on the strengths.
        """
        AtA = state.A.T @ state.A
        per_block: list[float] = [0.0] * len(self.data)
        st = self.stack
        stacked = set(st.index) if st is not None else set()
        sigmas: list[np.ndarray] = [np.empty(0)] * len(self.data)
        if st is not None:
            F0 = [state.F[i][0] for i in st.index]
            losses = st.losses([T[i] for i in st.index], F0, AtA)
            for i, value, sigma in zip(st.index, losses, st.strengths(F0), strict=True):
                per_block[i], sigmas[i] = float(value), sigma
        for i, (b, Fb, Tb) in enumerate(zip(self.data, state.F, T, strict=True)):
            if i in stacked:
                continue
            K = khatri_rao(Fb)
            cross = float(np.einsum("pr,pr->", Tb, K))  # ⟨T, K⟩ without a P×R temporary
            res = b.norm_sq - 2.0 * cross + float(np.sum(AtA * linalg.gram(Fb)))
            per_block[i] = max(res, 0.0)
            sigmas[i] = np.linalg.norm(Fb[0], axis=0)
        penalty = 0.0
        for sigma, pen in zip(sigmas, self.penalty, strict=True):
            live = sigma > 0  # an infinite penalty holds a zero strength: it adds nothing
            penalty += float(np.sum(pen[live] * sigma[live]))
        return sum(per_block) + penalty, per_block

    # ------------------------------------------------------------------------- a run
    def run(self, state: State, iters: int, label: str) -> tuple[State, list[float], list[float]]:
        """Run up to ``iters`` ALS iterations; return state, loss history, per-block losses.

        With ``extrapolate`` each sweep is followed by a step ``x_k + β (x_k − x_{k−1})``
        (Ang & Gillis 2019, extrapolated block coordinate descent) that is kept only when its
        loss is below the last accepted loss; ``β`` grows after a success and shrinks after a
        failure. The accepted losses therefore never increase. A small in-memory fit runs
        the same iterations as one compiled loop (:meth:`run_compiled`).
        """
        if self.packed is not None:
            return self.run_compiled(state, iters, label)
        state = state.copy()
        T = self.rights(state.A)
        loss, blk = self.loss(state, T)
        hist: list[float] = [loss]
        beta, beta_max = BETA_START, BETA_MAX_START
        previous: State | None = None  # the last plain ALS iterate x_{k−1}
        # iters counts losses, the first one before any update: iters - 1 updates at most
        bar = progress_bar(iters - 1, f"CMTF {label}") if self.verbose else None
        try:
            for _ in range(iters - 1):
                check_cancelled()
                plain = self.step(state, T)
                if self.extrapolate and previous is not None:
                    trial = self.extrapolated(plain, previous, beta)
                    # one pass gives Ỹᵀ[A_plain, A_trial]: the GEMM reads each block once for both
                    both = self.rights(np.hstack([plain.A, trial.A]))
                    R = plain.A.shape[1]
                    T_trial = [t[:, R:] for t in both]
                    loss_trial, blk_trial = self.loss(trial, T_trial)
                    if loss_trial < loss:
                        state, T, loss, blk = trial, T_trial, loss_trial, blk_trial
                        beta = min(beta_max, beta * BETA_GROW)
                        beta_max = min(1.0, beta_max * BETA_MAX_GROW)
                    else:
                        beta_max, beta = beta, beta / BETA_SHRINK
                        state, T = plain, [t[:, :R] for t in both]
                        loss, blk = self.loss(state, T)
                else:
                    state = plain
                    T = self.rights(state.A)
                    loss, blk = self.loss(state, T)
                previous = plain
                hist.append(loss)
                if self.callback is not None:
                    self.callback(len(hist) - 1, float(loss))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.5g}")
                if converged(hist, self.tol):
                    break
        finally:
            if bar is not None:
                bar.close()
        return state, hist, blk

    def run_compiled(
        self, state: State, iters: int, label: str
    ) -> tuple[State, list[float], list[float]]:
        """:meth:`run` as one compiled loop on the packed blocks (:mod:`.compiled`).

        With ``verbose`` the run's bar is shown once it is over (the run takes a moment).
        """
        check_cancelled()
        p = self.packed
        assert p is not None
        announce_compile()
        with one_blas_thread:
            A, F, hist, blk = als_run(
                p.S,
                p.cols,
                p.modes,
                p.dims,
                p.rows,
                p.norm_sq,
                np.ascontiguousarray(np.stack(self.penalty), dtype=np.float64),
                np.ascontiguousarray(state.A, dtype=np.float64),
                stacked_factors(state.F),
                int(iters),
                self.exact,
                self.nonneg,
                int(self.sweeps),
                float(self.tol),
                self.extrapolate,
                linalg.TINY,
            )
        if self.verbose:
            bar = progress_bar(iters - 1, f"CMTF {label}")
            bar.update(len(hist) - 1)
            bar.set_postfix(loss=f"{hist[-1]:.5g}")
            bar.close()
        return State(A, split_factors(F, p)), hist.tolist(), blk.tolist()


def progress_bar(total: int, desc: str) -> Any:
    """Return the progress counter of one run of iterations (:func:`factorlens.progress.progress_bar`).

    Parameters
    ----------
    total : int
        The number of steps.
    desc : str
        The label shown before the bar.

    Returns
    -------
    tqdm.tqdm or factorlens.progress.LineProgress
        A bar on a terminal (removed when closed), plain lines in a log; call ``update`` once
        per step and ``close`` at the end.
    """
    from factorlens.progress import progress_bar as bar

    return bar(total, desc)
