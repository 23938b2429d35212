"""Coupled matrix–tensor factorization (CMTF) by alternating least squares, ACMTF-style.

Model (Acar et al. 2011, 2014), with one shared sample factor ``A`` (``N×R``, unit-norm columns)::

    min  Σ_b ‖Ỹ_b − A diag(σ_b) K_bᵀ‖²  +  Σ_b β_b Σ_r σ_br

* ``Ỹ_b`` is block ``b`` flattened to ``N×P_b``, optionally centred, scaled by ``s_b`` (the block
  weighting; default: unit Frobenius norm per block, so every block counts equally).
* ``K_b`` is the non-shared factor with unit-norm columns: ``V_b`` (``P_b×R``) for a matrix block,
  the Khatri–Rao product of the mode factors for a CP block (``N×H×W`` → ``[B, C]``).
* ``σ_br ≥ 0`` is component ``r``'s strength in block ``b``; the L1 penalty ``β_b`` (ACMTF; by
  default set per block from its noise floor, :mod:`factorlens.factorize.penalty`) drives the
  strength of a component that a block does not hold to exactly zero. The table ``σ`` is the
  flow map.

Every update is exact for its block of variables (a small ``R×R`` least-squares solve, or
column-wise coordinate updates when nonnegativity or the penalty make the solve inexact), so the
objective never increases (with float32 data: up to the round-off of the float32 products,
about 1e-7 of the data norm). The data are touched only through ``Ỹ_bᵀ A`` and ``Ỹ_b K_b``
(:mod:`factorlens.factorize.blocks`), two GEMMs per block per iteration; the loss uses
``‖Ỹ − AKᵀ‖² = ‖Ỹ‖² − 2⟨ỸᵀA, K⟩ + ⟨AᵀA, KᵀK⟩`` and never reconstructs a block.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.factorize import linalg
from factorlens.factorize.als import ALS, State, converged, refit_penalties
from factorlens.factorize.blocks import (
    Block,
    block_weights,
    check_blocks,
)
from factorlens.factorize.diagnostics import cancelling_pair, degenerate_pair
from factorlens.factorize.initial import initial_state
from factorlens.factorize.reduced import ReducedBlock, as_block, expand_result
from factorlens.factorize.result import CMTFResult
from factorlens.factorize.rowspace import through_rowspace
from factorlens.options import EngineOptions, check_combination, check_fields
from factorlens.pages import small_pages
from factorlens.rows import holds_reals

#: the defaults of every parameter but the rank (one place: the options dataclass)
_E = EngineOptions()

#: ALS iterations on the full data after a fit on compressed samples (``compress_rows``)
REFINE_ITER = 5


# ------------------------------------------------------------------------------ the estimator
class CMTF:
    """Joint factorization of the input and layer blocks with one shared sample factor.

    Every default comes from :class:`factorlens.options.EngineOptions`, which the CLI's flags
    are built from too.

    Parameters
    ----------
    rank : int
        Number of components R (1 ≤ R ≤ N).
    nonneg : bool
        Constrain every factor (and so every loading and pattern) to be ≥ 0.
    l1_penalty : float or str
        ACMTF penalty β on the component strengths σ. A number is one β for every block
        (blocks are unit-norm by default, so β is relative to a block's norm; 0 gives plain
        CMTF). ``"auto"`` sets each block's β from its noise floor
        (:mod:`factorlens.factorize.penalty`: a component weaker than the block's
        Gavish–Donoho threshold is set to exactly zero there), then refits the strengths
        without the penalty on the components that remain (see ``refit``; where the refit
        is skipped or undone the strengths stay shrunk by the block's floor).
    weighting : str or dict of str to float
        ``"unit"`` (each block scaled to unit Frobenius norm), ``"none"``, or a dict of
        per-block relative weights on top of unit norm.
    center : bool
        Subtract each block's per-feature mean over samples first (not with ``nonneg``).
    tensor_blocks : sequence of str, optional
        Names of blocks fitted with a CP model on their natural shape; ``None`` means the
        first block (the input) when it has ≥ 2 feature axes, all others as matrices.
    init : str or numpy.ndarray
        ``"svd"`` (randomized SVD of the weighted concatenation), ``"random"``, or an
        ``(N, R)`` array used as the starting sample factor (a warm start).
    n_init : int
        Number of starts (the first from ``init``, the rest random); each runs
        ``screen_iter`` iterations and the best is continued to convergence.
    screen_iter : int
        Iterations each start runs before the best one is chosen (with ``n_init`` > 1).
    n_iter_max : int
        Iteration cap (TensorLy's name).
    tol : float
        Relative loss change at which the fit stops, in ``[0, 1)``; 0 runs every one of
        ``n_iter_max`` iterations.
    inner_sweeps : int
        Coordinate sweeps per block update when an exact solve does not apply.
    refit : str
        With ``l1_penalty="auto"``, refit the strengths that the penalty kept without it:
        ``"guarded"`` (default) undoes the refit when it makes two components cancel each
        other (degenerate strengths are no picture to show); ``"always"`` keeps it (the rank
        scan: a degenerate fit there is evidence of too many components, which its
        split halves then show); ``"never"`` keeps the penalized fit.
    extrapolate : bool
        Accelerate ALS with extrapolated steps that are kept only when they lower the
        loss (typically several times fewer iterations; the loss still never increases).
    random_state : int or None
        Seed; the same seed gives the same result.
    device : str
        ``"cpu"`` or a torch device (``"cuda"``) for the data products.
    backend : str, optional
        ``"numpy"`` or ``"torch"`` for the data products; default numpy on the CPU and
        torch on any other device.
    memory_budget : int
        Blocks up to this many bytes are read into memory once; larger on-disk blocks are
        streamed chunk by chunk on every pass (0: every on-disk block is streamed).
    verbose : bool
        Show a progress bar for every run of iterations (plain lines when stderr is not a
        terminal).
    check_fewer : bool
        After the fit, fit R − 1 components too (same settings) and record how much
        each block's fit gains from the R-th component (``options["gain_over_fewer"]``, a
        share of the block). Where no block gains more than one component of noise would
        (its noise floor², see ``noise_floor``), :meth:`CMTFResult.spare_components` says
        the data hold at most R − 1 components. About doubles the fitting time; the rank
        scan, which fits every R anyway, turns it off.
    callback : callable, optional
        Called as ``callback(iteration, loss)`` after every ALS iteration of every run
        (starts, refinement, refit), e.g. to record or plot the loss; its return value is
        ignored.
    compress_rows : int
        For many samples: with ``k`` > 0 and N > 2k, fit first on every block compressed to
        ``k`` sample directions (:mod:`factorlens.factorize.sketch`: a randomized range finder,
        4 passes over the data; every start, the penalty and its refit run on the small
        blocks), then refine with at most :data:`REFINE_ITER` ALS iterations on the full data
        (2 passes each). ``options["compressed_loss"]`` records the loss before the
        refinement. 0 (default) fits on the full data throughout.
    """

    def __init__(
        self,
        rank: int,
        *,
        nonneg: bool = _E.nonneg,
        l1_penalty: float | str = _E.l1_penalty,
        weighting: str | dict[str, float] = _E.weighting,
        center: bool = _E.center,
        tensor_blocks: Sequence[str] | None = _E.tensor_blocks,
        init: str | np.ndarray = _E.init,
        n_init: int = _E.n_init,
        screen_iter: int = _E.screen_iter,
        n_iter_max: int = _E.n_iter_max,
        tol: float = _E.tol,
        inner_sweeps: int = _E.inner_sweeps,
        refit: str = _E.refit,
        extrapolate: bool = _E.extrapolate,
        random_state: int | None = _E.random_state,
        device: str = _E.device,
        backend: str | None = _E.backend,
        memory_budget: int = _E.memory_budget,
        verbose: bool = _E.verbose,
        check_fewer: bool = _E.check_fewer,
        callback: Callable[[int, float], Any] | None = _E.callback,
        compress_rows: int = _E.compress_rows,
    ) -> None:
        self.rank = rank
        self.nonneg = nonneg
        self.l1_penalty = l1_penalty
        self.weighting = weighting
        self.center = center
        self.tensor_blocks = tensor_blocks
        self.init = init
        self.n_init = n_init
        self.screen_iter = screen_iter
        self.n_iter_max = n_iter_max
        self.tol = tol
        self.inner_sweeps = inner_sweeps
        self.refit = refit
        self.extrapolate = extrapolate
        self.random_state = random_state
        self.device = device
        self.backend = backend
        self.memory_budget = memory_budget
        self.verbose = verbose
        self.check_fewer = check_fewer
        self.callback = callback
        self.compress_rows = compress_rows

    # ------------------------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the constructor's parameters as a dict.

        This is scikit-learn's estimator contract, so ``sklearn.base.clone`` works.

        Parameters
        ----------
        deep : bool
            Accepted for that contract (there are no nested estimators).

        Returns
        -------
        dict of str to Any
            Each constructor parameter's name and current value.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> CMTF:
        """Set constructor parameters by name; an unknown name is a one-line error."""
        known = set(self._param_names())
        for name, value in params.items():
            if name not in known:
                raise FactorlensError(
                    f"CMTF has no parameter {name!r}; its parameters are: "
                    + ", ".join(sorted(known))
                )
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        """Show ``rank`` and every parameter that differs from its default."""
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if k == "rank" or not _same(v, defaults.get(k))
        ]
        return f"CMTF({', '.join(changed)})"

    # ------------------------------------------------------------------------- public API
    @small_pages()
    def fit(self, blocks: Any, y: Any = None) -> CMTF:
        """Fit the model to ``blocks``.

        Sets ``result_`` (a :class:`CMTFResult`), ``A_``, ``flow_``, ``fit_``.

        Parameters
        ----------
        blocks : mapping or activation store
            A mapping name → array ``(N, …)`` (input first) or an activation store.
        y : Any
            Ignored; accepted for scikit-learn's ``fit(X, y)`` signature.

        Returns
        -------
        CMTF
            The fitted estimator itself.
        """
        data = self.prepare(blocks)
        models = self._block_models([b.name for b in data], [b.shape for b in data])
        work = through_rowspace(data, models, self.nonneg)  # wide blocks: exact coordinates
        self.fit_blocks(work)
        if any(b.basis is not None for b in work):  # loadings back in the full features
            expand_result(self.result_, work)
        return self

    def prepare(self, blocks: Any) -> list[Block]:
        """Validate ``blocks`` and wrap them for the engine (one pass for their statistics).

        The prepared list can be fitted many times (:meth:`fit_blocks`), e.g. across ranks.
        A sketched layer (:class:`~factorlens.factorize.reduced.ReducedBlock`) becomes a block
        of its coordinates; the fit's loadings stay in its basis until :meth:`fit` maps them
        back (:func:`~factorlens.factorize.reduced.expand_result`).
        """
        self._check_params()
        names, arrays = _as_named_arrays(blocks)
        self._validate(names, arrays)
        data = [
            as_block(n, a, center=self.center, device=self.device, backend=self.backend)
            if isinstance(a, ReducedBlock)
            else Block(
                n,
                a,
                center=self.center,
                chunk_rows=_chunk_rows(a),
                device=self.device,
                backend=self.backend,
                memory_budget=self.memory_budget,
            )
            for n, a in zip(names, arrays, strict=True)
        ]
        if all(b.constant for b in data):
            raise FactorlensError(
                "every block is constant across the inputs"
                + (" (after centring)" if self.center else "")
                + ", so there is nothing to factorize; check the data (all inputs the same?) "
                "and the layers (outputs all zero?)"
            )
        for b, s in zip(data, block_weights(data, self.weighting), strict=True):
            b.scale = s
        return data

    @small_pages()
    def fit_blocks(self, data: list[Block]) -> CMTF:
        """Fit to blocks returned by :meth:`prepare` (same weighting and centring)."""
        self._check_params()
        names = [b.name for b in data]
        self._validate_rank(data[0].n_rows, sum(b.width for b in data))
        if self._compressing(data):
            return self._fit_compressed(data)
        scales = [b.scale for b in data]
        models = self._block_models(names, [b.shape for b in data])
        rng = np.random.default_rng(self.random_state)
        als = self._iterations(data, models, self._penalties(data, rng))
        self._pen = als.penalty
        self._refitted = False  # strengths unshrunk: refitted without the penalty

        starts = [self.init] + ["random"] * (self.n_init - 1)
        best: tuple[float, State, list[float], list[float]] | None = None
        for k, how in enumerate(starts):
            state = initial_state(data, models, how, rng, self.rank, self.nonneg)
            iters = self.n_iter_max if len(starts) == 1 else min(self.screen_iter, self.n_iter_max)
            state, hist, blk = als.run(state, iters, label=f"start {k + 1}")
            if best is None or hist[-1] < best[0]:
                best = (hist[-1], state, hist, blk)
        assert best is not None
        _, state, hist, blk = best
        stages: list[list[Any]] = [["fit", 0]]  # [what, its first entry in the history]
        if len(starts) > 1 and len(hist) < self.n_iter_max and not converged(hist, self.tol):
            state, more, blk = als.run(state, self.n_iter_max - len(hist), label="refine")
            stages.append(["refine", len(hist)])
            hist = hist + more[1:]  # more[0] is the loss the refine started from
        if self.l1_penalty == "auto" and self.refit != "never" and not degenerate_pair(state):
            # relaxed lasso: the penalty chose which strengths are zero; refit the others
            # without it (zeros held by an infinite penalty), so strengths are not shrunk.
            # Skipped when two live components share their loadings, and undone when the
            # refit makes two components cancel: without the penalty such strengths diverge
            # in opposite directions (a degenerate pair), which the penalty prevents.
            als.penalty = refit_penalties(state)
            refit, more, refit_blk = als.run(state, self.n_iter_max, label="refit")
            if self.refit == "always" or not cancelling_pair(refit):
                stages.append(["refit", len(hist)])  # another objective: no penalty
                state, blk, hist = refit, refit_blk, hist + more[1:]
                self._refitted = True
            als.penalty = self._pen  # the chosen penalties: the result's noise floors
        self._state = state
        self.result_ = self._result(data, models, state, hist, blk, scales)
        self.result_.options["loss_stages"] = stages
        if self.check_fewer and self.rank >= 2:
            self.result_.options["gain_over_fewer"] = self._gain_over_fewer(data)
        return self._publish(hist)

    @classmethod
    def from_options(cls, rank: int, options: Any) -> CMTF:
        """Return ``CMTF(rank, ...)`` with every setting of an :class:`~factorlens.options.EngineOptions`."""
        from factorlens.options import as_params

        return cls(rank, **as_params(options))

    def _publish(self, hist: list[float]) -> CMTF:
        """Set the fitted attributes from ``result_``."""
        self.A_ = self.result_.A
        self.flow_ = self.result_.flow
        self.fit_ = self.result_.block_fit
        self.n_iter_ = len(hist)
        return self

    # ------------------------------------------------------------------- compressed samples
    def _compressing(self, data: list[Block]) -> bool:
        k = self.compress_rows  # an integer >= 0: checked with the other settings
        if k and k < self.rank:
            raise FactorlensError(
                f"`compress_rows` ({k}) is below the rank {self.rank}; give at least the rank "
                "(a few times it is better) or 0 to fit on all rows"
            )
        if k and isinstance(self.init, np.ndarray):
            raise FactorlensError(
                "a warm start (`init` as an array) cannot be combined with `compress_rows`; "
                "drop one of them"
            )
        return bool(k) and data[0].n_rows > 2 * k

    def _fit_compressed(self, data: list[Block]) -> CMTF:
        """Fit on the blocks compressed to ``compress_rows`` sample directions, then refine.

        A CP block is compressed in its wide modes too (an image's 224-pixel sides to
        ``rank + 10`` directions, :func:`~factorlens.factorize.compress.compressed_modes`):
        the compressed fit's iterations then touch ``k × 3 × 20 × 20`` values of a ResNet's
        input instead of ``k × 3 × 224 × 224``. Its mode factors are mapped back
        (``b_j = U_j b̃_j``) before the refinement on all rows and full sides, whose loss is
        the result's.
        """
        from factorlens.factorize.compress import compressed_modes
        from factorlens.factorize.sketch import compress_samples

        rng = np.random.default_rng(self.random_state)
        auto = isinstance(self.l1_penalty, str)  # "auto": the floors need the spectra
        Q, small = compress_samples(data, int(self.compress_rows), rng, spectrum=auto)
        names = [b.name for b in data]
        models = self._block_models(names, [b.shape for b in data])
        small = [
            compressed_modes(b, self.rank, rng) if m == "cp" else b
            for b, m in zip(small, models, strict=True)
        ]
        inner = CMTF(**{**self.get_params(), "compress_rows": 0, "check_fewer": False})
        inner.fit_blocks(small)
        penalty = inner._pen
        if inner._refitted:  # refine as the refit ran: the kept strengths unpenalized
            penalty = refit_penalties(inner._state)
        self._refitted = inner._refitted
        F = [list(f) for f in inner._state.F]
        for b, Fb in zip(small, F, strict=True):  # CP modes back to their full sides
            for j, u in enumerate(getattr(b, "mode_bases", None) or []):
                if u is not None:
                    Fb[j] = u @ Fb[j]
        start = State(A=Q @ inner._state.A, F=F)
        als = self._iterations(data, models, penalty)
        state, more, blk = als.run(start, REFINE_ITER + 1, label="refine")
        self._pen = inner._pen
        hist = inner.result_.loss_history + more[1:]
        stages = [[f"{what} (compressed)", at] for what, at in inner.result_.options["loss_stages"]]
        stages.append(["refine on all rows", len(inner.result_.loss_history)])
        self._state = state
        self.result_ = self._result(data, models, state, hist, blk, [b.scale for b in data])
        self.result_.options["compressed_loss"] = float(more[0])
        self.result_.options["loss_stages"] = stages
        if self.check_fewer and self.rank >= 2:  # both fits on the compressed blocks
            fewer = CMTF(**{**inner.get_params(), "rank": self.rank - 1}).fit_blocks(small)
            self.result_.options["gain_over_fewer"] = {
                n: float(inner.result_.block_fit[n] - fewer.result_.block_fit[n]) for n in names
            }
        return self._publish(hist)

    def _gain_over_fewer(self, data: list[Block]) -> dict[str, float]:
        """Return how much each block's fit (share of the block) gains from the R-th component.

        The gain is the fit at R minus a fit at R − 1 with the same settings (negative where
        the fit at R is the worse one).
        """
        fewer = CMTF(**{**self.get_params(), "rank": self.rank - 1, "check_fewer": False})
        if isinstance(self.init, np.ndarray):
            fewer.init = "svd"  # a warm start has R columns
        other = fewer.fit_blocks(data).result_
        return {
            n: float(self.result_.block_fit[n] - other.block_fit[n])
            for n in self.result_.block_names
        }

    def fit_transform(self, blocks: Any, y: Any = None) -> np.ndarray:
        """Fit and return the shared sample factor ``A`` (N, R)."""
        return self.fit(blocks).A_

    # ------------------------------------------------------------------------- validation
    def _validate_rank(self, n: int, total: int) -> None:
        if (
            not isinstance(self.rank, (int, np.integer))
            or isinstance(self.rank, bool)
            or self.rank <= 0
        ):
            raise FactorlensError(f"rank must be a positive integer, got {self.rank!r}")
        limit = min(n, total)
        if self.rank > limit:
            raise FactorlensError(
                f"rank {self.rank} is larger than the data allows (at most {limit}: "
                f"{n} samples, {total} features in all blocks); choose `rank` <= {limit}"
            )
        if isinstance(self.init, np.ndarray) and self.init.shape != (n, self.rank):
            raise FactorlensError(
                f"an initial sample factor must have shape ({n}, {self.rank}), "
                f"got {self.init.shape}"
            )

    def _check_params(self) -> None:
        """One-line errors for settings out of range, by the rules the CLI checks its flags by.

        Run by :meth:`prepare` and :meth:`fit_blocks`, so a setting changed with
        :meth:`set_params` is checked too (scikit-learn checks in ``fit``); the rules are the
        fields' of :class:`~factorlens.options.EngineOptions`. Whether a device is there is
        asked of torch only for a device other than the CPU.
        """
        check_fields(EngineOptions, self.get_params())
        if str(self.device) != "cpu":
            from factorlens.modelio import resolve_device  # torch, only for another device

            resolve_device(str(self.device))  # cuda where there is none: one line

    def _validate(self, names: list[str], arrays: list[Any]) -> None:
        n = check_blocks(names, [tuple(a.shape) for a in arrays])
        self._validate_rank(n, sum(int(np.prod(a.shape[1:])) for a in arrays))
        check_combination(self.nonneg, self.center, self.compress_rows)
        if isinstance(self.weighting, Mapping) and (unknown := set(self.weighting) - set(names)):
            raise FactorlensError(
                f"`weighting` names {sorted(unknown)[0]!r}, which is not a block; the blocks "
                f"are {names}"
            )
        sketched = [nm for nm, a in zip(names, arrays, strict=True) if isinstance(a, ReducedBlock)]
        if sketched and self.nonneg:
            raise FactorlensError(
                f"`nonneg` needs every layer whole, but {len(sketched)} were sketched "
                f"({', '.join(sketched[:3])}{', …' if len(sketched) > 3 else ''}); capture "
                "with `sketch=0` (more memory) or into a store"
            )
        cp = set(self.tensor_blocks or ()) & set(sketched)
        if cp:
            raise FactorlensError(
                f"a CP model needs a layer's natural shape, but {sorted(cp)[0]!r} was sketched; "
                "capture it whole (`sketch=0`, or into a store) or fit it as a matrix"
            )

    def _block_models(self, names: list[str], shapes: list[tuple[int, ...]]) -> list[str]:
        if self.tensor_blocks is not None:
            wanted = list(self.tensor_blocks)
        else:  # default: the input as a CP tensor when it has two or more feature axes
            wanted = [names[0]] if len(shapes[0]) >= 3 else []
        for w in wanted:
            if w not in names:
                raise FactorlensError(f"tensor block {w!r} is not among the blocks: {names}")
            if len(shapes[names.index(w)]) < 3:
                raise FactorlensError(
                    f"block {w!r} has shape {shapes[names.index(w)]}; a CP model needs at least "
                    "two feature axes (N×C×H×W or N×H×W)"
                )
        return ["cp" if n in wanted else "matrix" for n in names]

    # ------------------------------------------------------------------------- the iterations
    def _penalties(self, data: list[Block], rng: np.random.Generator) -> list[np.ndarray]:
        """Return, per block, the penalty on each component's strength, ``(R,)``.

        The penalty is ``l1_penalty`` everywhere, or with ``"auto"`` twice the block's noise floor (the
        column update subtracts half).
        """
        from factorlens.factorize.penalty import noise_threshold

        R = self.rank
        if self.l1_penalty == "auto":
            return [np.full(R, 2.0 * noise_threshold(b, R, rng)) for b in data]
        return [np.full(R, float(self.l1_penalty)) for _ in data]

    def _iterations(self, data: list[Block], models: list[str], penalty: list[np.ndarray]) -> ALS:
        """Return the ALS iterations of a fit of ``data`` with this estimator's settings."""
        return ALS(
            data,
            models,
            penalty,
            nonneg=self.nonneg,
            inner_sweeps=self.inner_sweeps,
            tol=self.tol,
            extrapolate=self.extrapolate,
            callback=self.callback,
            verbose=self.verbose,
        )

    # ------------------------------------------------------------------------- the result
    def _result(self, data, models, state, hist, blk, scales) -> CMTFResult:
        A = state.A.copy()
        R = A.shape[1]
        names = [b.name for b in data]
        strength = {}
        unit: dict[str, list[np.ndarray]] = {}
        for b, Fb in zip(data, state.F, strict=True):
            sigma = np.linalg.norm(Fb[0], axis=0)
            f0 = Fb[0] / np.where(sigma > linalg.TINY, sigma, 1.0)
            if np.any(sigma <= linalg.TINY):
                f0 = _absent_directions(b, A, Fb, f0, sigma <= linalg.TINY)
            unit[b.name] = [f0] + [f.copy() for f in Fb[1:]]
            norm = math.sqrt(b.norm_sq)
            strength[b.name] = sigma / norm if norm > 0 else np.zeros(R)
        A, unit, strength = _canonical(A, unit, strength)
        fit = {}
        degenerate = []
        for b, loss_b in zip(data, blk, strict=True):
            if b.norm_sq > 0:
                fit[b.name] = float(min(1.0, max(0.0, 1.0 - loss_b / b.norm_sq)))
            else:
                fit[b.name] = 0.0
            if b.norm_sq <= 0 or b.constant:
                degenerate.append(b.name)
        floors = {
            b.name: float(pen[0] / 2.0 / math.sqrt(b.norm_sq)) if b.norm_sq > 0 else 0.0
            for b, pen in zip(data, self._pen, strict=True)
        }
        options = {
            "rank": R,
            "nonneg": self.nonneg,
            "l1_penalty": self.l1_penalty,
            # the penalty sets a strength to exactly zero where the block's data give it no
            # more than this (relative to the block's norm): the block's floor
            "noise_floor": floors,
            # a reported strength at or below this means absent: the floor when the strengths
            # were refitted without the penalty, 0 when they are the penalized (shrunk) ones,
            # which the penalty already zeroed below the floor
            "absent_below": floors if self._refitted else dict.fromkeys(floors, 0.0),
            "weighting": self.weighting,
            "center": self.center,
            "init": self.init if isinstance(self.init, str) else "given",
            "n_init": self.n_init,
            "n_iter_max": self.n_iter_max,
            "tol": self.tol,
            "extrapolate": self.extrapolate,
            "refit": self.refit,
            "random_state": self.random_state,
            "compress_rows": int(self.compress_rows),
            "n_iter": len(hist),
            "converged": converged(hist, self.tol),
            "block_norms": {b.name: math.sqrt(b.sumsq) for b in data},
            "block_scales": dict(zip(names, scales, strict=True)),
            "degenerate_blocks": degenerate,
        }
        means = {b.name: b.mean.reshape(b.shape[1:]) for b in data if self.center}
        # (a compressed block's means are its coordinates'; expand_result puts the features')
        return CMTFResult(
            A=A,
            block_names=names,
            block_shapes=[b.shape for b in data],
            block_models=models,
            factors=unit,
            weights=strength,
            block_fit=fit,
            loss_history=hist,
            options=options,
            means=means,
        )


def _canonical(
    A: np.ndarray, unit: dict[str, list[np.ndarray]], strength: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, list[np.ndarray]], dict[str, np.ndarray]]:
    """Return the factors with fixed signs and the components ordered by total strength.

    Signs: ``A``'s columns sum to >= 0; in each block every mode but the last points to its
    largest entry, the last mode carries the sign. ``A`` (N, R) and the factors are changed
    in place before the reordering.
    """
    R = A.shape[1]
    flip = np.where(A.sum(axis=0) < 0, -1.0, 1.0)
    A *= flip
    for facs in unit.values():
        facs[-1] *= flip
        for k in range(len(facs) - 1):
            idx = np.abs(facs[k]).argmax(axis=0)
            s = np.where(facs[k][idx, np.arange(R)] < 0, -1.0, 1.0)
            facs[k] *= s
            facs[-1] *= s
    order = np.argsort(-sum(strength.values()), kind="stable")
    unit = {n: [f[:, order] for f in fs] for n, fs in unit.items()}
    return A[:, order], unit, {n: s[order] for n, s in strength.items()}


def cmtf(blocks: Any, rank: int, **kwargs: Any) -> CMTFResult:
    """Fit the joint factorization of ``blocks`` at ``rank``: ``CMTF(rank, ...).fit(blocks).result_``.

    The keyword arguments are :class:`CMTF`'s (``help(cmtf)`` and the docs list them with
    their defaults); ``blocks`` is what :meth:`CMTF.fit` takes.
    """
    return CMTF(rank, **kwargs).fit(blocks).result_


def _cmtf_signature() -> inspect.Signature:
    """``cmtf``'s signature as ``help()`` and the docs show it: blocks, then CMTF's parameters."""
    params = list(inspect.signature(CMTF.__init__).parameters.values())[1:]  # without self
    blocks = inspect.Parameter("blocks", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Any)
    return inspect.Signature([blocks, *params], return_annotation="CMTFResult")


cmtf.__signature__ = _cmtf_signature()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ helpers
def _same(a: Any, b: Any) -> bool:
    """Whether two parameter values are the same (arrays by identity: a warm start)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    return bool(a == b)


def _absent_directions(
    block: Block, A: np.ndarray, Fb: list[np.ndarray], f0: np.ndarray, absent: np.ndarray
) -> np.ndarray:
    """Unit-norm first-mode columns for the components with no strength in ``block``.

    Their direction is undefined by the fit; it is set to the least-squares direction the
    component would take if it were present (``Ỹᵀ a_r``, contracted with the other modes of a
    CP block), or the first basis vector when even that is zero, so every column of
    ``factors`` keeps unit norm.
    """
    f0 = f0.copy()
    idx = np.flatnonzero(absent)
    T = block.right(A[:, idx])  # (P_b, m)
    if len(Fb) > 1:
        T = linalg.mttkrp(T.reshape(*block.shape[1:], -1), [f[:, idx] for f in Fb], 0)
    for j, r in enumerate(idx):
        n = float(np.linalg.norm(T[:, j]))
        if n > linalg.TINY:
            f0[:, r] = T[:, j] / n
        else:
            f0[:, r] = 0.0
            f0[0, r] = 1.0
    return f0


def _as_named_arrays(blocks: Any) -> tuple[list[str], list[Any]]:
    if hasattr(blocks, "names") and hasattr(blocks, "block"):
        names = list(blocks.names)
        return names, [blocks.block(n) for n in names]
    if isinstance(blocks, Mapping):
        for name, array in blocks.items():
            _check_block(name, array)
        return list(blocks.keys()), list(blocks.values())
    raise FactorlensError(
        "blocks must be a mapping name → array (input first) or an activation store, "
        f"got {type(blocks).__name__}"
    )


def _check_block(name: Any, array: Any) -> None:
    """Refuse a block the engine cannot fit: a name not a string, or not an array of reals."""
    if not isinstance(name, str) or not name:
        raise FactorlensError(
            f"block names must be non-empty strings, got {name!r}; name each block (e.g. "
            "'input', 'conv1')"
        )
    if isinstance(array, ReducedBlock):
        return
    shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
    if shape is None or dtype is None:
        raise FactorlensError(
            f"block {name!r} is a {type(array).__name__}, not an array; give an array (N, …), "
            "e.g. numpy.asarray(values, dtype=numpy.float32)"
        )
    if len(shape) < 2:
        raise FactorlensError(
            f"block {name!r} has shape {tuple(shape)}; a block needs a sample axis and at least "
            "one feature axis (N, …)"
        )
    if not holds_reals(dtype):
        raise FactorlensError(f"block {name!r} holds {dtype} values; give real numbers")


def _chunk_rows(array: Any) -> int | None:
    chunks = getattr(array, "chunks", None)
    if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], int):
        return int(chunks[0])
    return None
