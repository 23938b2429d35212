"""Rank criteria for a fitted joint model: core consistency, bi-cross-validation, signatures.

All of them are computed from the engine's prepared blocks (:class:`~factorlens.factorize.
blocks.Block`: unit-norm, optionally centred) so they judge exactly the data that was fitted.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from factorlens.factorize.blocks import Block, _to_numpy
from factorlens.factorize.linalg import khatri_rao
from factorlens.factorize.result import CMTFResult
from factorlens.factorize.sketch import summed
from factorlens.interrupt import check
from factorlens.options import DEFAULT_SEED, EngineOptions


def core_consistency(result: CMTFResult, block: Block, *, normalised: bool = False) -> float:
    """CORCONDIA (Bro & Kiers 2003) of the CP part for ``block``, in percent (≤ 100).

    The component strengths ``σ`` are absorbed into the sample factor and the least-squares
    Tucker core of the (scaled) block with these factors, ``G = Ỹ ×₁ (A diag σ)⁺ ×₂ B⁺ ×₃ C⁺ …``,
    is compared with the superdiagonal identity ``I`` that a CP model implies:
    ``100 · (1 − ‖G − I‖² / R)`` — the definition of Bro & Kiers and of
    ``tlviz.model_evaluation.core_consistency``. ``normalised`` divides by ``‖G‖²`` instead of
    ``R`` (the N-way toolbox's variant, rarely below 0). Near 100: CP structure; low or
    negative (unbounded below): more components than the block supports. A component with no
    strength in this block counts as fully inconsistent (its row of ``G`` is zero). ``nan``
    when the block was fitted as a matrix or carries no component at all.
    """
    i = result.block_names.index(block.name)
    if result.block_models[i] != "cp":
        return float("nan")
    sigma = result.weights[block.name] * np.sqrt(block.norm_sq)
    if not np.any(sigma > 0):
        return float("nan")
    R = result.rank
    # mode 1 with the pseudo-inverse of the weighted sample factor: (Ỹᵀ (A_σ⁺)ᵀ)ᵀ, one pass
    G = block.right(np.linalg.pinv(result.A * sigma).T).T.reshape((R, *block.shape[1:]))
    for k, f in enumerate(result.factors[block.name], start=1):
        G = np.moveaxis(np.tensordot(G, np.linalg.pinv(f), axes=([k], [1])), -1, k)
    ideal = np.zeros((R,) * G.ndim)
    ideal[(np.arange(R),) * G.ndim] = 1.0
    denom = float(np.sum(G**2)) if normalised else float(R)
    return float(100.0 * (1.0 - np.sum((G - ideal) ** 2) / denom))


def joint_signature(result: CMTFResult) -> np.ndarray:
    """Each component's non-sample signature across all blocks: ``(Σ_b P_b, R)``.

    Block ``b`` contributes ``σ_br · k_br`` (its unit-norm non-shared factor, Khatri–Rao product
    for a CP block, times the component's strength), so two fits of the same structure on
    different samples have signatures with congruence near 1.
    """
    parts = [khatri_rao(result.factors[n]) * result.weights[n] for n in result.block_names]
    return np.concatenate(parts, axis=0)


def bi_cross_validation(
    data: list[Block],
    max_rank: int,
    *,
    folds: int = 2,
    random_state: int = DEFAULT_SEED,
    memory_budget: int = EngineOptions.memory_budget,
) -> np.ndarray:
    """Bi-cross-validation error (Owen & Perry 2009) of the weighted concatenation, R = 1..max.

    Rows (samples) and columns (features of all blocks) are split into ``folds`` groups each;
    for every held-out pair ``(I, J)`` the rank-R prediction ``D̂ = C (A_R)⁺ B`` of
    ``D = Z[I, J]`` from the other three quarters is scored. Returns the total squared error
    over all held-out pairs divided by ``‖Z‖²`` for R = 1..max_rank (shape ``(max_rank,)``).
    The joint model is the all-matrix special case here (the input flattened), for which the
    truncated SVD is the exact fit.

    Blocks whose float64 concatenation fits ``memory_budget`` (bytes) are concatenated (read
    once, chunk by chunk, wherever they are) and ``A``'s leading singular triplets are exact:
    With at most :data:`GRAM_MAX_ROWS` samples, blocks that do not fit as one matrix (but one
    at a time) give the same from the samples' Gram matrix of each column fold (exact too).
    Other blocks (on a Dask cluster, or too large) are never concatenated: every quarter is
    reached
    through the blocks' products (:meth:`Block.left`, :meth:`Block.right`, with the rows and
    columns outside it zeroed), and ``A``'s triplets come from a randomized range finder
    (``max_rank + BICV_OVERSAMPLE`` directions, ``BICV_POWER`` subspace iterations), so memory
    holds a few ``N×(max_rank + 20)`` and ``P×(max_rank + 20)`` arrays, never ``N×P``.
    """
    rng = np.random.default_rng(random_state)
    n_rows = data[0].n_rows
    row_fold = rng.permutation(n_rows) % folds
    col_fold = rng.permutation(sum(b.width for b in data)) % folds
    local = all(b._dask is None for b in data)
    if local and 8 * n_rows * len(col_fold) <= memory_budget:
        quarters = _dense_quarters(data, max_rank, row_fold, col_fold, folds)
    elif (
        local
        and n_rows <= GRAM_MAX_ROWS
        and 8 * n_rows * max(folds * n_rows, *(b.width for b in data)) <= memory_budget
    ):
        quarters = _gram_quarters(data, max_rank, row_fold, col_fold, folds)
    else:
        quarters = _streamed_quarters(data, max_rank, row_fold, col_fold, folds, rng)
    errors = np.zeros(max_rank)
    for left, right_gram, cross, d_sq in quarters:
        check()  # in a thread of the rank scan: stop when the scan is cancelled
        # with (A_k)⁺ = V_k diag(1/s) U_kᵀ the rank-r prediction is Σ_{t<r} left_t right_tᵀ; its
        # error ‖D − P_r‖² = ‖D‖² − 2 Σ_t ⟨D, left_t right_tᵀ⟩ + Σ_{t,u} (LᵀL ∘ RᵀR)_tu comes
        # from k×k matrices, without forming P_r
        gram = (left.T @ left) * right_gram
        k = left.shape[1]
        for r in range(max_rank):
            m = min(r + 1, k)
            errors[r] += d_sq - 2.0 * float(cross[:m].sum()) + float(gram[:m, :m].sum())
    total = sum(b.norm_sq for b in data)
    return errors / total if total > 0 else errors


#: bi-CV from the samples' Gram matrices when the blocks do not fit as one matrix and there
#: are at most this many samples (above, the streamed range finder does less work)
GRAM_MAX_ROWS = 1024
#: range-finder directions beyond max_rank, and subspace iterations, of the streamed bi-CV
BICV_OVERSAMPLE = 20
BICV_POWER = 4


def _dense_quarters(data: list[Block], max_rank: int, row_fold, col_fold, folds: int):
    """Yield ``(left, rightᵀright, cross, ‖D‖²)`` per held-out pair from the concatenated blocks.

    ``left = C V_k / s_k`` (``|I|×k``), ``right = (U_kᵀ B)ᵀ`` (``|J|×k``) and
    ``cross_t = ⟨D, left_t right_tᵀ⟩``. The concatenation is written once with its rows and
    columns ordered by fold, so each quarter is a view of it: on 2,000 × 43,386 (MnistCNN's 9
    default layers) picking the quarters out by index copied 2.8 GB, and bi-cross-validation
    took 10–15 s against 2.8 s through views (the same errors to 1e-16).
    """
    Z, row_edges, col_edges = _fold_ordered(data, row_fold, col_fold, folds)
    n, width = Z.shape
    for fi in range(folds):
        r_out = slice(row_edges[fi], row_edges[fi + 1])
        r_in = _outside(r_out, n)
        for fj in range(folds):
            c_out = slice(col_edges[fj], col_edges[fj + 1])
            c_in = _outside(c_out, width)
            A_ = _take(Z, r_in, c_in)
            B_ = _take(Z, r_in, [c_out])
            C_ = _take(Z, [r_out], c_in)
            D_ = Z[r_out, c_out]
            U, s, Vt = top_singular(A_, max_rank)
            k = _kept(s)
            left = (C_ @ Vt[:k].T) / s[:k]
            right = B_.T @ U[:, :k]
            cross = np.einsum("it,it->t", left, D_ @ right)
            yield left, right.T @ right, cross, float(np.einsum("ij,ij->", D_, D_))


def _gram_quarters(data: list[Block], max_rank: int, row_fold, col_fold, folds: int):
    """Yield what :func:`_dense_quarters` does, from the samples' Gram matrix per column fold.

    For few samples and many features (a ResNet's 256 inputs × 1.4 M features, which do not
    fit the budget as one float64 matrix): every block is read once (whole, as float64) and
    adds ``Y_f Y_fᵀ`` (``N×N``) to the Gram matrix of each column fold ``f``; each quarter's
    ``left``, ``rightᵀright``, ``cross`` and ``‖D‖²`` are products of their parts. Exact, as
    the dense path is (its triplets come from the same Gram), in ``N²P`` work where the
    streamed range finder spent about ``1,300 N P`` (71 s of a ResNet-18's rank scan).
    """
    n = len(row_fold)
    grams = np.zeros((folds, n, n))
    lo = 0
    for b in data:
        check()
        y = b.dense()
        here = col_fold[lo : lo + b.width]
        for f in range(folds):
            part = y[:, here == f]
            grams[f] += part @ part.T
        lo += b.width
    total = grams.sum(axis=0)
    for fi in range(folds):
        out, inn = row_fold == fi, row_fold != fi
        for fj in range(folds):
            held = grams[fj]  # the held-out columns; the others fit
            fitted = total - held
            s, U = _leading(fitted[np.ix_(inn, inn)], max_rank)
            k = _kept(s)
            U, s = U[:, :k], s[:k]
            left = fitted[np.ix_(out, inn)] @ U / s**2
            cross = np.einsum("it,it->t", left, held[np.ix_(out, inn)] @ U)
            right_gram = U.T @ held[np.ix_(inn, inn)] @ U
            yield left, right_gram, cross, float(np.trace(held[np.ix_(out, out)]))


def _fold_ordered(
    data: list[Block], row_fold: np.ndarray, col_fold: np.ndarray, folds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the concatenated blocks with rows and columns ordered by fold, and the folds' edges.

    ``Z`` (``N×P``, float64, scaled, centred as fitted) holds fold 0's rows first, then fold
    1's…, each in its original order, and likewise its columns; ``row_edges``/``col_edges``
    (``folds + 1``) bound each fold. Every block is read once, in sub-chunks, and each piece
    of a sub-chunk lands in one contiguous rectangle of ``Z`` (a block's columns of one fold
    are consecutive there).
    """
    counts = [np.bincount(f, minlength=folds) for f in (row_fold, col_fold)]
    row_edges, col_edges = (np.concatenate([[0], np.cumsum(c)]) for c in counts)
    Z = np.empty((len(row_fold), len(col_fold)))
    col_next = col_edges[:-1].copy()
    lo = 0
    for b in data:
        check()
        here = col_fold[lo : lo + b.width]
        columns = []
        for f in range(folds):
            idx = np.flatnonzero(here == f)
            columns.append((idx, slice(col_next[f], col_next[f] + idx.size)))
            col_next[f] += idx.size
        row_next = row_edges[:-1].copy()
        for start, piece in b.sub_chunks():
            y = _to_numpy(piece).reshape(piece.shape[0], -1) * b.scale
            for f in range(folds):
                ridx = np.flatnonzero(row_fold[start : start + y.shape[0]] == f)
                rows = slice(row_next[f], row_next[f] + ridx.size)
                row_next[f] += ridx.size
                picked = y[ridx]
                for cidx, cols in columns:
                    Z[rows, cols] = picked[:, cidx]
        lo += b.width
    return Z, row_edges, col_edges


def _outside(inside: slice, size: int) -> list[slice]:
    """Return the slices of ``range(size)`` outside ``inside`` (none empty)."""
    return [s for s in (slice(0, inside.start), slice(inside.stop, size)) if s.stop > s.start]


def _take(Z: np.ndarray, rows: list[slice], cols: list[slice]) -> np.ndarray:
    """Return ``Z`` at the union of ``rows`` × ``cols``: a view when each is one slice."""
    if len(rows) == 1 and len(cols) == 1:
        return Z[rows[0], cols[0]]
    return np.block([[Z[r, c] for c in cols] for r in rows])


def _kept(s: np.ndarray) -> int:
    """Count the directions above 1e-6 of the largest (a Gram's s resolves 1e-8 of s[0])."""
    return int(np.count_nonzero(s > s[0] * 1e-6)) if s.size else 0


def _streamed_quarters(
    data: list[Block], max_rank: int, row_fold, col_fold, folds: int, rng: np.random.Generator
):
    """Yield what :func:`_dense_quarters` does, through the blocks' products only."""
    edges = np.cumsum([0] + [b.width for b in data])

    def z_left(K: np.ndarray) -> np.ndarray:  # Z K, (N, m)
        return summed(
            b.left(K[lo:hi]) for b, lo, hi in zip(data, edges[:-1], edges[1:], strict=True)
        )

    def z_right(A: np.ndarray) -> np.ndarray:  # Zᵀ A, (P, m)
        return np.concatenate([b.right(A) for b in data], axis=0)

    col_sq = _fold_column_squares(data, row_fold, folds)
    size = max_rank + BICV_OVERSAMPLE
    for fi in range(folds):
        rows_in = (row_fold != fi)[:, None]
        for fj in range(folds):
            cols_in = (col_fold != fj)[:, None]
            # a range of A = Z[rows_in, cols_in]: zeros outside its rows and columns
            Q = np.linalg.qr(z_left(rng.standard_normal((edges[-1], size)) * cols_in) * rows_in)[0]
            for _ in range(BICV_POWER):
                check()
                Q = np.linalg.qr(z_left(z_right(Q) * cols_in) * rows_in)[0]
            # Aᵀ Q = V s Wᵀ, from its k×k Gram: LAPACK's SVD of this P×k matrix took a tenth
            # of a ResNet-18 rank scan (P = 150,528 input features and 40 layers)
            AtQ = z_right(Q) * cols_in
            V, s, Wt = top_singular(AtQ, AtQ.shape[1])
            k = min(max_rank, _kept(s))
            U = Q @ Wt[:k].T  # A's left singular vectors (zero outside rows_in)
            left = z_left(V[:, :k])[~rows_in[:, 0]] / s[:k]
            right = z_right(U) * ~cols_in  # Bᵀ U, zero outside the held-out columns
            cross = np.einsum("it,it->t", left, z_left(right)[~rows_in[:, 0]])
            right = right[~cols_in[:, 0]]
            yield left, right.T @ right, cross, float(col_sq[fi][~cols_in[:, 0]].sum())


def _fold_column_squares(data: list[Block], row_fold: np.ndarray, folds: int) -> np.ndarray:
    """Return ``(folds, P)``: each column's sum of squares of ``Z`` over each row fold.

    One pass over every block's chunks (centred as fitted, scaled), in float64 sub-chunks of
    at most 16 MiB (:meth:`Block.sub_chunks`).
    """
    out = np.zeros((folds, sum(b.width for b in data)))
    lo = 0
    for b in data:
        hi = lo + b.width
        for start, piece in b.sub_chunks():
            y = _to_numpy(piece)
            fold = row_fold[start : start + y.shape[0]]
            for f in range(folds):
                out[f, lo:hi] += np.einsum("ij,ij->j", y[fold == f], y[fold == f])
        out[:, lo:hi] *= b.scale**2
        lo = hi
    return out


def _leading(gram: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``k`` leading singular values a Gram matrix holds, and its eigenvectors.

    The values are the square roots of ``gram``'s eigenvalues, descending; the vectors follow
    them.
    """
    n = gram.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros(0), np.zeros((n, 0))
    # only the k leading pairs (LAPACK's ?syevx): on a 1,000 × 1,000 Gram 0.06 s against
    # 0.18 s for all of them (MNIST bi-CV: four of them)
    values, vectors = scipy.linalg.eigh(gram, subset_by_index=[n - k, n - 1], driver="evx")
    order = np.argsort(values)[::-1]
    return np.sqrt(np.clip(values[order], 0.0, None)), vectors[:, order]


def top_singular(matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the ``k`` leading singular triplets of a matrix.

    They come from the eigendecomposition of the Gram matrix of its shorter side: one GEMM and
    one small ``eigh`` instead of a full SVD of the wide matrix (exact up to round-off, which
    squaring raises to about 1e-8 of the largest singular value).

    Parameters
    ----------
    matrix : numpy.ndarray
        The ``(n, p)`` matrix.
    k : int
        The number of triplets wanted; ``k' = min(k, n, p)`` are returned.

    Returns
    -------
    U : numpy.ndarray
        The left singular vectors, ``(n, k')``.
    s : numpy.ndarray
        The singular values, descending, ``(k',)``.
    Vt : numpy.ndarray
        The right singular vectors as rows, ``(k', p)``.
    """
    n, p = matrix.shape
    k = min(int(k), n, p)
    wide = n <= p
    s, basis = _leading(matrix @ matrix.T if wide else matrix.T @ matrix, k)
    safe = np.where(s > 0, s, 1.0)
    if wide:
        U = basis
        Vt = (U.T @ matrix) / safe[:, None]
    else:
        Vt = basis.T
        U = (matrix @ basis) / safe
    return U, s, Vt
