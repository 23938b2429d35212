"""The ALS run of a small in-memory fit as one compiled loop.

The rank scan fits seven warm-start chains at every R on blocks compressed to a few dozen
samples and features (50 samples, 30 features a layer, a 28×28 input): 29,000 ALS steps on
2,000 MNIST inputs, each a few hundred kilo-flops. In Python each step was some 60 numpy calls
and about a millisecond, of which the arithmetic was a few percent (issue 27's profile). Here
the whole run of :meth:`factorlens.factorize.als.ALS.run` — the block updates, the shared
factor, the extrapolated step and its safeguard, the loss and the stopping test — is one
numba-compiled function over flat arrays, with the same arithmetic in another order of
summation (results agree to round-off; the tests compare the two runs).

Why by hand: no library runs a coupled matrix–tensor ALS with a group-lasso penalty per block;
numba removes the per-call cost that only matters when every product is small. Large fits
keep the Python loop, whose products run on chunks, on disk, on a GPU or on a cluster.

The layout (:class:`Packed`): every block's scaled, centred data side by side in one
``S`` (``N×W``), block ``b`` in columns ``cols[b]:cols[b+1]`` (a CP block flattened in C order);
every factor matrix of every block stacked in one ``F`` (``rows × R``), mode ``m`` (numbered
across blocks, ``modes[b]:modes[b+1]`` for block ``b``) in rows ``rows[m]:rows[m+1]``, its
size ``dims[m]``. The first mode of a block carries its strengths σ; the others are unit-norm.
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from factorlens.factorize.kernels import group_lasso_sweeps, unit_column_sweeps

#: a fit runs compiled when its stacked data hold at most this many numbers (N × Σ P_b):
#: above it the products dominate and the Python loop, which reads blocks where they are,
#: costs the same
MAX_ENTRIES = 1 << 20

#: how the extrapolation's step ``β`` starts and moves, here and in :meth:`ALS.run`: after a
#: kept step ``β`` grows by BETA_GROW (up to its cap, which grows by BETA_MAX_GROW up to 1),
#: after a refused one the cap becomes ``β`` and ``β`` shrinks by BETA_SHRINK
BETA_START, BETA_MAX_START = 0.5, 1.0
BETA_GROW, BETA_MAX_GROW, BETA_SHRINK = 1.05, 1.01, 1.5


@dataclass
class Packed:
    """The blocks of one fit in the compiled loop's layout (module docstring)."""

    S: np.ndarray  # (N, W) float64: every block's Ỹ side by side
    cols: np.ndarray  # (blocks + 1,) int64: block b's columns
    modes: np.ndarray  # (blocks + 1,) int64: block b's modes
    dims: np.ndarray  # (modes,) int64: each mode's size
    rows: np.ndarray  # (modes + 1,) int64: each mode's rows in the stacked factors
    norm_sq: np.ndarray  # (blocks,) float64: ‖Ỹ_b‖²


def pack(data: list, models: list[str]) -> Packed | None:
    """Return ``data`` (prepared blocks, ``"matrix"`` or ``"cp"`` each) in the compiled layout.

    None unless every block is a numpy array in memory and the stacked data are small
    (:data:`MAX_ENTRIES`).
    """
    n = data[0].n_rows
    width = sum(b.width for b in data)
    if n * width > MAX_ENTRIES:
        return None
    if any(not b.in_memory or b._torch or b._dask is not None for b in data):
        return None
    S = np.empty((n, width))
    cols = np.zeros(len(data) + 1, dtype=np.int64)
    for i, b in enumerate(data):
        cols[i + 1] = cols[i] + b.width
        S[:, cols[i] : cols[i + 1]] = np.asarray(b._data).reshape(n, b.width) * b.scale
    modes = [b.shape[1:] if m == "cp" else (b.width,) for b, m in zip(data, models, strict=True)]
    sizes = [int(d) for shape in modes for d in shape]
    per_block = [len(shape) for shape in modes]
    return Packed(
        S=S,
        cols=cols,
        modes=np.concatenate([[0], np.cumsum(per_block)]).astype(np.int64),
        dims=np.array(sizes, dtype=np.int64),
        rows=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        norm_sq=np.array([b.norm_sq for b in data], dtype=np.float64),
    )


class OneBlasThread:
    """A context in which the BLAS libraries run on one thread (re-entrant, thread-safe).

    The compiled loop's products are a few dozen kilo-flops: a second BLAS thread only waits
    for them, spinning on the core that the next call (or another chain's thread) needs. On
    the rank scan of 2,000 MNIST inputs the compiled chains took 17.9 s on one BLAS thread
    against 22.9 s on two. The first run in entering sets the limit and the last one out
    restores it, so runs in several threads do not undo each other's limit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._controller: ThreadpoolController | None = None
        self._limit: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                if self._controller is None:  # finding the libraries takes a millisecond
                    self._controller = ThreadpoolController()
                self._limit = self._controller.limit(limits=1, user_api="blas")
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                self._limit.restore_original_limits()
                self._limit = None


#: the one instance every compiled run enters
one_blas_thread = OneBlasThread()


_announced = False


def announce_compile(stream: TextIO | None = None) -> None:
    """Say once per process that the loop is being compiled, when no compiled copy is cached.

    numba compiles :func:`als_run` on its first call after an install (about 30 s on a
    2-core machine) and caches the machine code; later processes load it in a fraction of a
    second. Without the line a first rank scan looks stuck at its first rank.
    """
    global _announced
    if _announced or als_run.signatures:
        return
    _announced = True
    try:  # numba's cache index of the function (private, hence the care)
        index = als_run._cache._cache_file._index_path  # type: ignore[attr-defined]
        cached = Path(index).exists()
    except (AttributeError, TypeError):
        return
    if not cached:
        print(
            "factorlens: compiling the fit's inner loop (once after an install, about 30 s)",
            file=stream or sys.stderr,
            flush=True,
        )


def stacked_factors(F: list[list[np.ndarray]]) -> np.ndarray:
    """Return every block's factor matrices stacked (the compiled layout's ``F``)."""
    return np.ascontiguousarray(np.concatenate([f for Fb in F for f in Fb], axis=0), np.float64)


def split_factors(stacked: np.ndarray, packed: Packed) -> list[list[np.ndarray]]:
    """Return the stacked factors as one list of factor matrices per block."""
    rows, modes = packed.rows, packed.modes
    return [
        [stacked[rows[m] : rows[m + 1]].copy() for m in range(modes[b], modes[b + 1])]
        for b in range(len(modes) - 1)
    ]


# ---------------------------------------------------------------------- the compiled loop
@numba.njit(cache=True, nogil=True)
def _pinv(G: np.ndarray) -> np.ndarray:
    """Return ``G⁺`` of a symmetric PSD ``G`` (R×R), as :func:`~.linalg.solve_ls` does.

    Eigenvalues below ``1e-12`` of the largest are cut.
    """
    evals, evecs = np.linalg.eigh(G)
    top = max(evals.max(), 0.0) * 1e-12
    R = G.shape[0]
    inv = np.zeros((R, R))
    for k in range(R):
        if evals[k] > top:
            for i in range(R):
                vi = evecs[i, k] / evals[k]
                for j in range(R):
                    inv[i, j] += vi * evecs[j, k]
    return inv


@numba.njit(cache=True, nogil=True)
def _gram_skip(F, rows, first, last, skip):
    """Hadamard product of the Gram matrices of modes ``first..last-1`` but ``skip``."""
    R = F.shape[1]
    G = np.ones((R, R))
    for m in range(first, last):
        if m != skip:
            f = F[rows[m] : rows[m + 1]]
            G *= f.T @ f
    return G


@numba.njit(cache=True, nogil=True)
def _contract(X, before, size, after, f):
    """Return ``X`` with one mode contracted against ``f``, column by column.

    ``X`` is ``(before·size·after, R)`` in C order, ``f`` ``(size, R)``; the result
    ``(before·after, R)``.
    """
    R = X.shape[1]
    out = np.zeros((before * after, R))
    for i in range(before):
        for j in range(size):
            for k in range(after):
                src = (i * size + j) * after + k
                dst = i * after + k
                for r in range(R):
                    out[dst, r] += X[src, r] * f[j, r]
    return out


@numba.njit(cache=True, nogil=True)
def _mttkrp(T, F, dims, rows, first, last, k):
    """Return ``T`` times every factor of modes ``first..last-1`` but ``k``: ``(dims[k], R)``.

    ``T`` is a block's ``Ỹᵀ A``, C-ordered over its modes; one mode at a time, the last first.
    """
    X = T
    left = 1  # the size of the modes before the one contracted, among those still there
    for m in range(first, last):
        left *= dims[m]
    for m in range(last - 1, first - 1, -1):
        left //= dims[m]
        if m == k:
            continue
        after = dims[k] if m < k else 1  # only mode k stays behind a contracted one
        X = _contract(X, left, dims[m], after, F[rows[m] : rows[m + 1]])
    return X


@numba.njit(cache=True, nogil=True)
def _khatri_rao(F, dims, rows, first, last, out):
    """Fill ``out`` (``(∏ dims, R)``) with the row-major Khatri–Rao product of the modes."""
    R = out.shape[1]
    K = F[rows[first] : rows[first + 1]].copy()
    for m in range(first + 1, last):
        f = F[rows[m] : rows[m + 1]]
        d = dims[m]
        nxt = np.empty((K.shape[0] * d, R))
        for i in range(K.shape[0]):
            for j in range(d):
                for r in range(R):
                    nxt[i * d + j, r] = K[i, r] * f[j, r]
        K = nxt
    out[:, :] = K


@numba.njit(cache=True, nogil=True)
def _column_norms(X):
    R = X.shape[1]
    out = np.zeros(R)
    for r in range(R):
        out[r] = math.sqrt(np.sum(X[:, r] ** 2))
    return out


@numba.njit(cache=True, nogil=True)
def _unit_mode(F, rows, m, first, tiny):
    """Make mode ``m``'s columns unit-norm, their norms moved into mode ``first``."""
    f = F[rows[m] : rows[m + 1]]
    n = _column_norms(f)
    for r in range(F.shape[1]):
        if n[r] > tiny:
            f[:, r] /= n[r]
            F[rows[first] : rows[first + 1], r] *= n[r]


@numba.njit(cache=True, nogil=True)
def _unit_shared(A, F, modes, rows, tiny):
    """Make ``A``'s columns unit-norm in place, their norms moved into each block's first mode.

    Return the norms; a column at or below ``tiny`` is left as it is.
    """
    n = _column_norms(A)
    for r in range(A.shape[1]):
        if n[r] > tiny:
            A[:, r] /= n[r]
            for b in range(modes.shape[0] - 1):
                m = modes[b]
                F[rows[m] : rows[m + 1], r] *= n[r]
    return n


@numba.njit(cache=True, nogil=True)
def _update_block(T, AtA, inv, F, pen, dims, rows, first, last, exact, nonneg, sweeps, tiny):
    """Update a block's modes ``first..last-1`` of ``F`` in place from ``T = Ỹ_bᵀ A``.

    ``inv`` is ``(AᵀA)⁺``, the exact update of every one-mode block (computed once).
    """
    R = F.shape[1]
    zero = np.zeros(1, dtype=np.int64)
    for k in range(first, last):
        f = F[rows[k] : rows[k + 1]]
        if exact and last - first == 1:
            f[:, :] = T @ inv
            continue
        Z = T.copy() if last - first == 1 else _mttkrp(T, F, dims, rows, first, last, k)
        G = AtA * _gram_skip(F, rows, first, last, k)
        if exact:
            f[:, :] = Z @ _pinv(G)
        else:
            others = np.ones(R)
            for m in range(first, last):
                if m != k:
                    others *= _column_norms(F[rows[m] : rows[m + 1]])
            pk = np.empty((1, R))
            for r in range(R):
                pk[0, r] = math.inf if math.isinf(pen[r]) else pen[r] * others[r]
            f[:, :] = group_lasso_sweeps(
                Z, G, np.ascontiguousarray(f), pk, zero, nonneg, sweeps, tiny
            )
        if k > first:
            _unit_mode(F, rows, k, first, tiny)


@numba.njit(cache=True, nogil=True)
def _khatri_rao_all(F, cols, modes, dims, rows):
    """``(W, R)``: every block's Khatri–Rao product of its factors, stacked."""
    K = np.empty((cols[-1], F.shape[1]))
    for b in range(cols.shape[0] - 1):
        _khatri_rao(F, dims, rows, modes[b], modes[b + 1], K[cols[b] : cols[b + 1]])
    return K


@numba.njit(cache=True, nogil=True)
def _step(S, A, F, T, pen, cols, modes, dims, rows, exact, nonneg, sweeps, tiny):
    """One ALS sweep: every block's factors from ``T = Sᵀ A``, then ``A``; new ``(A, F)``."""
    AtA = A.T @ A
    inv = _pinv(AtA) if exact else AtA
    F = F.copy()
    for b in range(cols.shape[0] - 1):
        Tb = np.ascontiguousarray(T[cols[b] : cols[b + 1]])
        _update_block(
            Tb,
            AtA,
            inv,
            F,
            pen[b],
            dims,
            rows,
            modes[b],
            modes[b + 1],
            exact,
            nonneg,
            sweeps,
            tiny,
        )
    K = _khatri_rao_all(F, cols, modes, dims, rows)
    M = S @ K
    G = K.T @ K
    if not exact:
        return unit_column_sweeps(M, G, A, nonneg, sweeps, tiny), F
    new = M @ _pinv(G)
    n = _unit_shared(new, F, modes, rows, tiny)
    for r in range(A.shape[1]):
        if n[r] <= tiny:  # a component absent from every block keeps its loadings
            new[:, r] = A[:, r]
    return new, F


@numba.njit(cache=True, nogil=True)
def _extrapolated(A1, F1, A0, F0, beta, cols, modes, rows, nonneg, tiny):
    """Return ``new + β (new − old)`` for every factor, projected onto the constraints.

    Also returns the scale that made ``A``'s columns unit-norm (``(R,)``).
    """
    A = A1 + beta * (A1 - A0)
    F = F1 + beta * (F1 - F0)
    if nonneg:
        A = np.maximum(A, 0.0)
        F = np.maximum(F, 0.0)
    n = _unit_shared(A, F, modes, rows, tiny)
    scale = np.ones(A.shape[1])
    for r in range(A.shape[1]):
        if n[r] > tiny:
            scale[r] = 1.0 / n[r]
    for b in range(cols.shape[0] - 1):
        for m in range(modes[b] + 1, modes[b + 1]):
            _unit_mode(F, rows, m, modes[b], tiny)
    return A, F, scale


@numba.njit(cache=True, nogil=True)
def _loss(A, F, T, pen, norm_sq, cols, modes, dims, rows, blk):
    """Return the objective at ``(A, F)`` from ``T = Sᵀ A``; each block's residual in ``blk``."""
    AtA = A.T @ A
    K = _khatri_rao_all(F, cols, modes, dims, rows)
    total = 0.0
    for b in range(cols.shape[0] - 1):
        cross = np.sum(T[cols[b] : cols[b + 1]] * K[cols[b] : cols[b + 1]])
        model = np.sum(AtA * _gram_skip(F, rows, modes[b], modes[b + 1], -1))
        blk[b] = max(norm_sq[b] - 2.0 * cross + model, 0.0)
        total += blk[b]
        sigma = _column_norms(F[rows[modes[b]] : rows[modes[b] + 1]])
        for r in range(A.shape[1]):
            if sigma[r] > 0.0:  # an infinite penalty holds a zero strength: it adds nothing
                total += pen[b, r] * sigma[r]
    return total


@numba.njit(cache=True, nogil=True)
def als_run(
    S,
    cols,
    modes,
    dims,
    rows,
    norm_sq,
    pen,
    A,
    F,
    iters,
    exact,
    nonneg,
    sweeps,
    tol,
    extrapolate,
    tiny,
):
    """Run up to ``iters`` ALS iterations from ``(A, F)`` (as :meth:`ALS.run`).

    Returns the final ``A`` ``(N, R)``, the stacked factors ``F``, the loss history and each
    block's squared residual. One product with the data a sweep: the extrapolated point's
    ``Sᵀ A`` is the same combination of the last two sweeps' products (unless ``nonneg``
    clips it).
    """
    nb = cols.shape[0] - 1
    St = np.ascontiguousarray(S.T)
    T = St @ A
    blk = np.zeros(nb)
    loss = _loss(A, F, T, pen, norm_sq, cols, modes, dims, rows, blk)
    hist = np.empty(max(iters, 1))
    hist[0] = loss
    count = 1
    beta, beta_max = BETA_START, BETA_MAX_START
    have_previous = False
    A_prev, F_prev, T_prev = A, F, T
    blk_trial = np.zeros(nb)
    for _ in range(iters - 1):
        A_plain, F_plain = _step(
            S, A, F, T, pen, cols, modes, dims, rows, exact, nonneg, sweeps, tiny
        )
        T_plain = St @ A_plain
        if extrapolate and have_previous:
            A_trial, F_trial, scale = _extrapolated(
                A_plain, F_plain, A_prev, F_prev, beta, cols, modes, rows, nonneg, tiny
            )
            if nonneg:
                T_trial = St @ A_trial
            else:
                T_trial = ((1.0 + beta) * T_plain - beta * T_prev) * scale
            loss_trial = _loss(
                A_trial, F_trial, T_trial, pen, norm_sq, cols, modes, dims, rows, blk_trial
            )
            if loss_trial < loss:
                A, F, T, loss = A_trial, F_trial, T_trial, loss_trial
                blk[:] = blk_trial
                beta = min(beta_max, beta * BETA_GROW)
                beta_max = min(1.0, beta_max * BETA_MAX_GROW)
            else:
                beta_max, beta = beta, beta / BETA_SHRINK
                A, F, T = A_plain, F_plain, T_plain
                loss = _loss(A, F, T, pen, norm_sq, cols, modes, dims, rows, blk)
        else:
            A, F, T = A_plain, F_plain, T_plain
            loss = _loss(A, F, T, pen, norm_sq, cols, modes, dims, rows, blk)
        A_prev, F_prev, T_prev, have_previous = A_plain, F_plain, T_plain, True
        hist[count] = loss
        count += 1
        prev = hist[count - 2]
        if abs(prev - loss) <= tol * max(abs(prev), tiny):
            break
    return A, F, hist[:count].copy(), blk


__all__ = [
    "BETA_GROW",
    "BETA_MAX_GROW",
    "BETA_MAX_START",
    "BETA_SHRINK",
    "BETA_START",
    "MAX_ENTRIES",
    "OneBlasThread",
    "Packed",
    "als_run",
    "announce_compile",
    "one_blas_thread",
    "pack",
    "split_factors",
    "stacked_factors",
]
