"""Scan R = 1..R_max and pick the rank of the joint factorization by a stated rule.

For every R the scan records the joint and per-block fit, the core consistency (CORCONDIA,
Bro & Kiers) of the CP (input) part, the bi-cross-validation error of the weighted
concatenation, and split-half stability: for each of ``n_splits`` random splits of the samples
into two halves, the two halves are fitted separately and every component of one is matched to
one of the other by the congruence of their signatures (all non-sample factors, weighted by
their strengths); the split's stability is the match of the *worst* component (a mean would
let R good components hide one junk component), and the criterion is its median over splits.

Work is reused across R: the blocks are prepared once (one pass for their statistics), every
fit at R starts from the fit at R − 1 plus one new direction (warm start), and bi-cross-
validation scores every R from one SVD per held-out quarter.

**Rule** (fixed, documented): the largest R at which (a) split-half stability is at least
``stability_threshold`` (0.8: every component, the worst included, reappears on other inputs)
and (b) the R-th component lowers the bi-cross-validation error (it predicts held-out data
rather than fitting noise); 1 when no R > 1 qualifies. The same rule applied to each split on
its own gives the *plausible range* of ranks (lowest to highest), the scan's stated
uncertainty.

**Stop**: the scan fits no R past one where the rule has turned for good, as it reads the
criteria: R above the largest R whose bi-CV error still falls, and R after ``patience``
ranks in a row (default 3) that every split fails, above a rank > 1 that qualified.
Stability that failed on every split three times running after qualifying has not come
back on the data measured (MNIST benchmark: R = 8..10 score at most 0.78 on any split, and
R = 11..20, when fitted, at most 0.69); ``patience=0`` fits every R.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, CMTFResult, matched_congruences
from factorlens.factorize.als import progress_bar
from factorlens.factorize.blocks import RowSubset
from factorlens.factorize.compiled import one_blas_thread
from factorlens.factorize.compress import OVERSAMPLE, compressed, compressed_modes
from factorlens.factorize.engine import _as_named_arrays
from factorlens.factorize.linalg import khatri_rao
from factorlens.factorize.penalty import block_spectrum
from factorlens.factorize.reduced import ReducedBlock, expand_result
from factorlens.factorize.rowspace import coordinates, eligible
from factorlens.factorize.sketch import compress_samples
from factorlens.interrupt import CANCEL, check
from factorlens.options import DEFAULT_SEED, EngineOptions, RankOptions
from factorlens.pages import small_pages
from factorlens.rank.criteria import (
    GRAM_MAX_ROWS,
    bi_cross_validation,
    core_consistency,
    joint_signature,
)
from factorlens.rows import Levels

RULE = (
    "largest R whose every component is stable across split halves (worst-component match "
    ">= {threshold}, median of {splits} splits) and whose R-th component lowers the "
    "bi-cross-validation error"
)


@dataclass
class RankScan:
    """Evidence for every R and the chosen rank.

    ``criteria`` maps a name to one value per R in ``ranks``: ``fit`` (joint, weighted),
    ``corcondia`` (percent, Bro & Kiers, unbounded below; nan without a CP block), ``bicv``
    (relative error), ``stability`` (worst component's split-half match in [0, 1], median
    over splits); ``split_stability`` holds the per-split curves ``(n_splits, len(ranks))``;
    ``block_fit`` maps block name to per-R fit; ``plausible`` is the lowest and highest rank
    that the rule picks on the splits one at a time (``chosen`` lies within).
    """

    ranks: list[int]
    criteria: dict[str, list[float]]
    block_fit: dict[str, list[float]]
    chosen: int
    rule: str
    plausible: tuple[int, int] = (1, 1)
    split_stability: list[list[float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: dict[int, CMTFResult] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the report's ``rank_scan``)."""
        return {
            "ranks": self.ranks,
            "criteria": {k: [_num(v) for v in vals] for k, vals in self.criteria.items()},
            "block_fit": {k: [_num(v) for v in vals] for k, vals in self.block_fit.items()},
            "chosen": self.chosen,
            "plausible": list(self.plausible),
            "split_stability": [[_num(v) for v in row] for row in self.split_stability],
            "rule": self.rule,
            "notes": self.notes,
        }

    def table(self) -> str:
        """Return the evidence as a fixed-width text table, the chosen rank marked with ``*``."""
        names = list(self.criteria)
        head = "   R  " + "  ".join(f"{n:>10}" for n in names)
        lines = [head]
        for i, r in enumerate(self.ranks):
            mark = "*" if r == self.chosen else " "
            vals = "  ".join(f"{self.criteria[n][i]:>10.4g}" for n in names)
            lines.append(f"{mark}{r:>3}  {vals}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: the chosen rank, the plausible range and the rule."""
        low, high = self.plausible
        span = f"{low}" if low == high else f"{low}-{high}"
        return f"chosen rank: {self.chosen} (plausible {span} over the splits; {self.rule})"


#: the fewest inputs a scan takes: split halves of two, so that R = 2 can be set against R = 1
MIN_SCAN_SAMPLES = 4

#: the scan's defaults (one place: the options dataclasses)
_R = RankOptions()
_BUDGET = EngineOptions.memory_budget


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@small_pages()
def estimate_rank(
    blocks: Any,
    max_rank: int = _R.max_rank,
    *,
    stability_threshold: float = _R.stability_threshold,
    n_splits: int = _R.n_splits,
    patience: int = _R.patience,
    random_state: int = DEFAULT_SEED,
    n_iter_max: int = _R.n_iter_max,
    tol: float = _R.tol,
    keep_results: bool = False,
    verbose: bool = False,
    n_jobs: int | None = _R.n_jobs,
    compress: bool = _R.compress,
    model: EngineOptions | None = None,
    **engine: Any,
) -> RankScan:
    """Scan R = 1..``max_rank`` on ``blocks`` (mapping or activation store) and choose a rank.

    The scan fits the model an analysis would: ``model`` (an
    :class:`~factorlens.options.EngineOptions`) gives its ``nonneg``, ``l1_penalty``,
    ``weighting``, ``center`` and ``tensor_blocks`` (its iteration settings are the scan's
    own), and ``engine`` keywords, which win, go to :class:`~factorlens.factorize.CMTF`
    as they are, with its defaults; the scan itself uses one
    warm-started start per R. ``max_rank`` larger than the data allows (half the samples, for
    the split halves, or the total feature count) is clipped, and the clipping is recorded in
    ``notes``. The ``1 + 2·n_splits`` warm-start chains (all inputs and both halves of each
    split) advance one R at a time, in ``n_jobs`` threads, each with one BLAS thread
    (default: one per core, at most 3; the compressed chains' fits run as compiled loops
    that release the GIL, :mod:`factorlens.factorize.compiled`). They stop one R after the
    largest R whose bi-cross-validation error (known for every R before any fit) falls below
    the one before: the rule can choose no R above it, on all inputs or on any split, so the
    ranks beyond the next are not fitted (a note says so). They also stop after ``patience``
    ranks in a row whose stability is below the threshold on every split, once a rank > 1
    qualified (a note says so; ``patience=0`` scans to ``max_rank``). ``n_iter_max``/``tol`` are
    tighter than a quick scan needs for the fit alone: with loosely converged fits the halves
    disagreed by chance, and the chosen rank of the README example moved with the seed (8 of
    10 seeds agreed at ``100``/``1e-5``, 9 or 10 of 10 here, with the sketches drawn in
    either order). With ``compress`` (default) every fit runs on the matrix blocks compressed
    to their leading ``max_rank + 10`` row-space directions
    (:mod:`factorlens.factorize.compress`); the evidence's fits are then those of loadings
    kept in that space, and ``keep_results`` keeps each R's fit on all inputs, its factors
    mapped back to the full blocks, except those of a sketched layer and (with at most
    1,024 samples) of a wide layer held whole, which stay in the coordinates every chain shares
    (:func:`factorlens.factorize.reduced.map_back` maps them).
    """
    RankOptions(  # the scan's settings, checked by their rules (as the CLI's flags are)
        max_rank=max_rank,
        stability_threshold=stability_threshold,
        n_splits=n_splits,
        patience=patience,
        n_iter_max=n_iter_max,
        tol=tol,
        compress=compress,
        n_jobs=n_jobs,
    )
    names, arrays = _as_named_arrays(blocks)
    if not names:
        raise FactorlensError("no blocks to scan; give the input and at least one layer")
    if (n := int(arrays[0].shape[0])) < MIN_SCAN_SAMPLES:  # halves of 2 compare R = 1 and 2
        raise FactorlensError(
            f"the rank scan compares ranks fitted on split halves of the inputs and needs at "
            f"least {MIN_SCAN_SAMPLES} inputs, got {n}; use more inputs (two per rank scanned "
            "or more)"
        )
    notes: list[str] = []
    max_rank = _clipped(max_rank, arrays, notes)
    if model is not None and not isinstance(model, EngineOptions):
        raise FactorlensError(
            f"`model` must be a factorlens.options.EngineOptions (the fit's settings), got "
            f"{type(model).__name__}"
        )
    if unknown := sorted(set(engine) - {f.name for f in fields(EngineOptions)}):
        raise FactorlensError(
            f"unknown option(s) {', '.join(map(repr, unknown))} of the scan's fits; they are "
            "the fields of factorlens.options.EngineOptions (the parameters of CMTF)"
        )
    if model is not None:
        engine = {**{k: getattr(model, k) for k in MODEL_FIELDS}, **engine}
    opts = _scan_options(engine, n_iter_max, tol, random_state)
    full = CMTF(1, **opts).prepare(blocks)
    rng = np.random.default_rng(random_state)
    chain_data = partial(
        _chain_data, full, names, arrays, n_splits, max_rank, opts, rng, compress=compress
    )
    (chains_data, sample_bases), bicv = _beside_spectra_and_bicv(
        chain_data, full, max_rank, opts, rng, random_state
    )
    if n_jobs is None:
        n_jobs = min(3, _usable_cpus())
    stop = _last_choosable(bicv, notes)
    evidence = _Evidence(full, n_splits)
    chains = _Chains(chains_data, opts, random_state, max(1, int(n_jobs)))
    bar = progress_bar(stop, "rank scan") if verbose else None
    try:
        for R in range(1, stop + 1):
            # loadings back in each block's full space: the halves' compressed bases differ
            # (a sketched layer's, or a wide block's held whole, to the coordinates every
            # chain shares), on copies: each chain's next R starts from its compressed fit
            fits = chains.next_rank()
            fitted = [
                expand_result(_copy(fit), used, sample_bases.get(k), to_sketch=True)
                for k, (fit, used) in enumerate(zip(fits, chains_data, strict=True))
            ]
            evidence.add(fitted, float(bicv[R - 1]), keep=keep_results)
            if bar is not None:
                bar.update(1)
            if R < stop and evidence.turned(stability_threshold, patience):
                notes.append(
                    f"stability was below {stability_threshold} on every split for R = "
                    f"{R - patience + 1}..{R}, after R = {evidence.qualified(stability_threshold)} "
                    f"qualified: R = {R + 1}..{stop} were not fitted (patience={patience}; "
                    "0 fits every R)"
                )
                break
    finally:
        chains.close()
        if bar is not None:
            bar.close()  # before any message, which would otherwise share its line
    return evidence.scan(stability_threshold, notes)


def _beside_spectra_and_bicv(
    prepare: Callable[[], Any],
    full: list,
    max_rank: int,
    opts: dict[str, Any],
    rng: np.random.Generator,
    random_state: int,
) -> tuple[Any, np.ndarray]:
    """Return what ``prepare()`` returns (the chains' blocks) and the bi-CV errors.

    Two threads beside the main one, one BLAS thread each, compute the noise-floor spectra
    of the blocks ``full`` first (one eigendecomposition of a sampled Gram matrix each, with
    its own draws: 5.7 s of a `quality` scan of MnistCNN's 10 blocks one after another),
    then bi-cross-validation while the main thread runs ``prepare``. These are LAPACK calls
    on a few hundred to 2,000 rows, which gain little from a second BLAS thread each.
    Interrupted, the threads stop at their next check before the error goes on.
    """
    side = ThreadPoolExecutor(2)
    try:
        with one_blas_thread:
            draws = rng.spawn(len(full))
            spectra = [side.submit(_spectrum, b, r) for b, r in zip(full, draws, strict=True)]
            pending = side.submit(
                bi_cross_validation,
                full,
                max_rank,
                random_state=random_state,
                memory_budget=opts.get("memory_budget", _BUDGET),
            )
            for done in spectra:
                done.result()
            prepared = prepare()
            bicv = pending.result()
    except BaseException:
        CANCEL.set()  # the threads' loops stop at their next check
        side.shutdown(wait=True, cancel_futures=True)
        CANCEL.clear()
        raise
    side.shutdown()
    return prepared, bicv


def _spectrum(block: Any, rng: np.random.Generator) -> None:
    """Compute ``block``'s noise-floor spectrum (cached on it) unless the scan was cancelled."""
    check()
    block_spectrum(block, rng)


#: the fields of an EngineOptions that say which model is fitted (not how it is iterated)
MODEL_FIELDS = ("nonneg", "l1_penalty", "weighting", "center", "tensor_blocks")


def _clipped(max_rank: int, arrays: list[Any], notes: list[str]) -> int:
    """Return ``max_rank`` within what the data allow (noted when clipped).

    At most half the samples (each split half fits every R) and the total feature count.
    """
    n = int(arrays[0].shape[0])
    total = sum(int(np.prod(a.shape[1:])) for a in arrays)
    limit = max(1, min(n // 2, total))
    if max_rank > limit:
        notes.append(
            f"max rank {max_rank} clipped to {limit} (split halves of {n} samples, "
            f"{total} features)"
        )
    return min(max_rank, limit)


def _scan_options(
    engine: dict[str, Any], n_iter_max: int, tol: float, random_state: int
) -> dict[str, Any]:
    """Return the CMTF settings of every fit of the scan (one warm-started start per R)."""
    # the scan fits the same model as the analysis, the refit of l1="auto" included and kept
    # even where it turns degenerate (a sign of too many components that the split halves
    # then show): without the refit the shrunk strengths of weak components made the halves
    # disagree, and undoing degenerate refits did too (the README example chose one rank for
    # 4 and 5 of 10 seeds that way, 10 of 10 with the refit kept)
    if engine.get("compress_rows"):
        raise FactorlensError(
            "the rank scan fits every R from the previous one on all rows, so it takes no "
            "`compress_rows`; fit the chosen rank with CMTF(compress_rows=...) afterwards"
        )
    opts = {**engine, "n_init": 1, "n_iter_max": n_iter_max, "tol": tol, "check_fewer": False}
    if opts.get("l1_penalty", "auto") == "auto":
        opts.setdefault("refit", "always")
    if opts.get("tensor_blocks") is None:
        opts.pop("tensor_blocks", None)
    opts["random_state"] = random_state
    return opts


def _last_choosable(bicv: np.ndarray, notes: list[str]) -> int:
    """Return the last R to fit: one past the largest R that the rule can choose.

    The rule can choose only an R whose bi-CV error is below R − 1's; the R after the
    largest such one shows the criteria past it. The ranks beyond are noted as not fitted.
    """
    max_rank = len(bicv)
    last = max([1, *(r for r in range(2, max_rank + 1) if bicv[r - 1] < bicv[r - 2])])
    stop = min(max_rank, last + 1)
    if stop < max_rank:
        notes.append(
            f"the bi-cross-validation error falls no more after R = {last}, so the rule cannot "
            f"choose a larger R: R = {stop + 1}..{max_rank} were not fitted"
        )
    return stop


class _Evidence:
    """The scan's criteria, gathered one R at a time from the chains' fits."""

    def __init__(self, full: list, n_splits: int) -> None:
        self.full = full
        self.total_sq = sum(b.norm_sq for b in full)
        self.criteria: dict[str, list[float]] = {
            "fit": [],
            "corcondia": [],
            "bicv": [],
            "stability": [],
        }
        self.block_fit: dict[str, list[float]] = {b.name: [] for b in full}
        self.split_stability: list[list[float]] = [[] for _ in range(n_splits)]
        self.results: dict[int, CMTFResult] = {}

    def add(self, fitted: list[CMTFResult], bicv: float, *, keep: bool) -> None:
        """Record the next R from its fits (all inputs first, then each split's two halves)."""
        res, full = fitted[0], self.full
        for k, row in enumerate(self.split_stability):
            a, b = fitted[1 + 2 * k], fitted[2 + 2 * k]
            worst = matched_congruences([joint_signature(a)], [joint_signature(b)])[0]
            row.append(float(worst.min()))
        loss = sum((1.0 - res.block_fit[b.name]) * b.norm_sq for b in full)
        total_sq = self.total_sq
        self.criteria["fit"].append(1.0 - loss / total_sq if total_sq > 0 else 0.0)
        cp_blocks = [b for b, m in zip(full, res.block_models, strict=True) if m == "cp"]
        self.criteria["corcondia"].append(
            core_consistency(res, cp_blocks[0]) if cp_blocks else float("nan")
        )
        self.criteria["bicv"].append(bicv)
        stability = float(np.median([row[-1] for row in self.split_stability]))
        self.criteria["stability"].append(stability)
        for name, values in self.block_fit.items():
            values.append(res.block_fit[name])
        if keep:
            self.results[len(self.criteria["fit"])] = res

    def qualified(self, threshold: float) -> int:
        """Return the largest R so far that the rule chooses (1 when none)."""
        return choose_rank(self.criteria["stability"], self.criteria["bicv"], threshold)

    def turned(self, threshold: float, patience: int) -> bool:
        """Whether the last ``patience`` ranks failed on every split after an R > 1 qualified.

        The qualifying R lies below them: a model with too few components is unstable too, so
        failures before any R > 1 qualified do not stop the scan.
        """
        done = len(self.criteria["stability"])
        if patience <= 0 or done <= patience:
            return False
        failed = all(v < threshold for row in self.split_stability for v in row[-patience:])
        return failed and self.qualified(threshold) > 1

    def scan(self, threshold: float, notes: list[str]) -> RankScan:
        """Return the :class:`RankScan`: the rule applied to all inputs and to each split."""
        stability, bicv = self.criteria["stability"], self.criteria["bicv"]
        chosen = choose_rank(stability, bicv, threshold)
        per_split = [choose_rank(row, bicv, threshold) for row in self.split_stability]
        return RankScan(
            ranks=list(range(1, len(stability) + 1)),
            criteria=self.criteria,
            block_fit=self.block_fit,
            chosen=chosen,
            rule=RULE.format(threshold=threshold, splits=len(self.split_stability)),
            plausible=(min([*per_split, chosen]), max([*per_split, chosen])),
            split_stability=self.split_stability,
            notes=notes,
            results=self.results,
        )


def _copy(result: CMTFResult) -> CMTFResult:
    """Return a copy of ``result`` that :func:`expand_result` may change in place."""
    return replace(
        result,
        factors=dict(result.factors),
        means=dict(result.means),
        block_shapes=list(result.block_shapes),
    )


def _chain_data(
    full: list,
    names: list[str],
    arrays: list[Any],
    n_splits: int,
    max_rank: int,
    opts: dict[str, Any],
    rng: np.random.Generator,
    *,
    compress: bool,
) -> tuple[list[list[Any]], dict[int, np.ndarray]]:
    """Return each chain's prepared blocks (all inputs, then both halves of every split).

    With ``compress`` (and not ``nonneg``) every chain's matrix blocks are compressed to
    their leading row space and its samples to a few directions; the second value maps a
    chain to the basis ``Q`` (N×k) of its compressed samples.
    """
    n = full[0].n_rows
    parts = []  # the rows of each half: split k's are parts[2k] and parts[2k + 1]
    for _ in range(n_splits):
        order = rng.permutation(n)
        parts += [np.sort(order[: n // 2]), np.sort(order[n // 2 :])]
    # an array on disk is read through its rows (RowSubset); a half is held in memory only
    # when its whole block is (half the budget for half the rows): 2·n_splits halves each
    # under the full budget would hold n_splits copies of blocks that do not fit
    half_opts = {**opts, "memory_budget": opts.get("memory_budget", _BUDGET) // 2}

    def half(part: np.ndarray, exact: dict[int, Any] | None = None) -> list:
        exact = exact or {}
        sources = [exact[i]._data if i in exact else a for i, a in enumerate(arrays)]
        sub = {
            nm: a[part] if isinstance(a, np.ndarray | ReducedBlock | Levels) else RowSubset(a, part)
            for nm, a in zip(names, sources, strict=True)
        }
        blocks = CMTF(1, **half_opts).prepare(sub)
        for i, whole in exact.items():
            _in_row_space(blocks[i], whole)
        # a half's noise floor from the whole block's singular values (the noise per entry
        # does not depend on how many rows there are) and the half's own rows: one
        # spectrum per block instead of seven (they were 15 % of a `quality` scan). The
        # width is the full block's: a sketched layer's half holds its k coordinates, and
        # with k for P its floor was some 50 times too low on a ResNet-18 layer
        for hb, fb in zip(blocks, full, strict=True):
            values, sample, (_, width) = block_spectrum(fb, rng)
            hb.spectrum = (values, sample, (hb.n_rows, width))
        return blocks

    sample_bases: dict[int, np.ndarray] = {}
    if not compress or opts.get("nonneg"):
        # not with nonneg: B̃ >= 0 does not make V B̃ >= 0
        return [full, *(half(p) for p in parts)], sample_bases
    # fits on the leading row spaces (compress.py), and the samples to a few directions
    # (sketch.py): every fit of the scan is then the fit restricted to them, at a cost that
    # no longer grows with N. One chain at a time, each half prepared only then: a half's
    # data (and its N×k feature-compressed blocks) are dropped once it is compressed,
    # keeping what the loadings need of it
    models = CMTF(1, **opts)._block_models(names, [b.shape for b in full])
    exact = _row_space_coordinates(full, models, max_rank)
    size = max_rank + SAMPLE_OVERSAMPLE
    chains_data: list[list[Any]] = []
    for k in range(1 + len(parts)):
        d = [exact.get(i, b) for i, b in enumerate(full)] if k == 0 else half(parts[k - 1], exact)
        small = [
            compressed(b, max_rank, rng) if m == "matrix" else compressed_modes(b, max_rank, rng)
            for b, m in zip(d, models, strict=True)
        ]
        if small[0].n_rows > 2 * size:
            sample_bases[k], small = compress_samples(small, size, rng)
        chains_data.append(small)
    return chains_data, sample_bases


def _row_space_coordinates(full: list, models: list[str], max_rank: int) -> dict[int, Any]:
    """Return the exact row-space coordinates of the wide blocks held whole, by position.

    With at most :data:`~factorlens.rank.criteria.GRAM_MAX_ROWS` samples, a matrix block held
    in memory and at least twice as wide as it has rows is replaced, for every chain, by its
    coordinates ``C`` (``N×r``, ``C Cᵀ = Y Yᵀ``; :func:`~factorlens.factorize.rowspace.
    coordinates`, one ``N×N`` Gram matrix), and each half by ``C``'s rows: a half's rows then
    lie in the same basis, their centring and norms are the half's own, and the chains'
    range finders span the same directions (up to signs, so the later random draws fall on
    other, equally distributed coordinates). On a ResNet-18 at 500 inputs this replaced
    copying each half's rows of about a million features held whole and 280 range finders
    over them (the scan 32-36 s -> 21-22 s). The chains' loadings of such a block stay in its
    coordinates, which they share (as a sketched layer's do), so their matches are those of
    the full loadings.
    """
    n = full[0].n_rows if full else 0
    if n > GRAM_MAX_ROWS:
        return {}
    exact = {}
    for i, (b, m) in enumerate(zip(full, models, strict=True)):
        if b.in_memory and eligible(b, m, nonneg=False):
            check()
            cb = coordinates(b)
            if cb.width > max_rank + OVERSAMPLE:  # else the chains would fit it uncompressed
                exact[i] = cb
    return exact


def _in_row_space(half: Any, whole: Any) -> None:
    """Mark ``half`` (a block of rows of ``whole``'s coordinates) as lying in its basis."""
    half.basis = list(whole.basis)
    half.data_basis = half.exact_basis = True
    half.full_shape = (half.n_rows, *whole.full_shape[1:])


class _Chains:
    """The scan's warm-start chains, advanced one rank at a time (in threads with ``n_jobs``)."""

    def __init__(
        self, data: list[list[Any]], opts: dict[str, Any], random_state: int, n_jobs: int
    ) -> None:
        self.data, self.opts = data, opts
        seeds = np.random.SeedSequence(random_state).spawn(len(data))
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.last: list[CMTFResult | None] = [None] * len(data)
        self.rank = 0
        # the chains (all inputs, each half) are independent: side by side, one BLAS thread
        # each, instead of one chain at a time on every core
        self.pool = ThreadPoolExecutor(n_jobs) if n_jobs > 1 else None
        self.limits = threadpool_limits(limits=1) if self.pool is not None else None
        CANCEL.clear()

    def _fit(self, k: int) -> CMTFResult:
        init = _warm_start(self.last[k], self.data[k], self.rngs[k])
        opts = {**self.opts, "init": init}
        return CMTF(self.rank, **opts).fit_blocks(self.data[k]).result_

    def next_rank(self) -> list[CMTFResult]:
        """Fit every chain at the next R, each warm-started from its fit at R − 1."""
        self.rank += 1
        chains = range(len(self.data))
        if self.pool is None:
            fits = [self._fit(k) for k in chains]
        else:
            futures = [self.pool.submit(self._fit, k) for k in chains]
            try:
                fits = [f.result() for f in futures]
            except BaseException:  # Ctrl-C in the main thread: stop the chains at once
                CANCEL.set()
                for f in futures:
                    f.cancel()
                raise
        self.last = list(fits)
        return fits

    def close(self) -> None:
        """Stop the threads (waiting for running fits) and let later fits run."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.limits is not None:
            self.limits.restore_original_limits()
        CANCEL.clear()


def choose_rank(stability: list[float], bicv: list[float], threshold: float) -> int:
    """Return the rank that the module's rule picks.

    The rule: the largest R with stability ≥ threshold whose R-th component lowers the
    bi-cross-validation error (1 when none). Not "the last R before the first failure": a
    model with too *few* components is not unique either (its components mix the true ones
    differently on each half), so stability can fail below the true rank and recover at it.

    Parameters
    ----------
    stability : list of float
        The split-half stability for R = 1, 2, ….
    bicv : list of float
        The bi-cross-validation error for the same ranks.
    threshold : float
        The least stability a chosen R needs.

    Returns
    -------
    int
        The chosen rank.
    """
    chosen = 1
    for i in range(1, len(stability)):
        if stability[i] >= threshold and bicv[i] < bicv[i - 1]:
            chosen = i + 1
    return chosen


#: sample directions beyond the largest R that the scan's fits keep (sketch.py)
SAMPLE_OVERSAMPLE = 30


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _warm_start(
    prev: CMTFResult | None, data: list, rng: np.random.Generator, power: int = 6
) -> str | np.ndarray:
    """Return the start for the fit at the next R, one component more than ``prev``.

    ``"svd"`` at R = 1; after that the previous sample factor plus the leading left singular
    direction of the joint residual ``[Ỹ_1 − A Σ_1 K_1ᵀ | Ỹ_2 − … ]`` (a few power iterations
    from a random start, through the blocks' products), orthogonalised against it.

    The residual's direction is what the next component should explain first; a random
    direction instead leaves the fit at R to find it, and where it lands (a local optimum or
    not) moved the chosen rank with the seed.
    """
    if prev is None:
        return "svd"
    A = prev.A
    n_rows: int = A.shape[0]  # an int, for numpy's overloads to see that u is an array
    parts = []
    for b in data:
        K = khatri_rao(prev.factors[b.name]) * (prev.weights[b.name] * np.sqrt(b.norm_sq))
        parts.append((b, K))
    u = rng.standard_normal(n_rows)
    Q, _ = np.linalg.qr(A)
    for _ in range(power):
        u -= Q @ (Q.T @ u)
        u /= max(float(np.linalg.norm(u)), 1e-300)
        nxt = np.zeros_like(u)
        for b, K in parts:
            v = b.right(u[:, None])[:, 0] - K @ (A.T @ u)  # R_bᵀ u
            nxt += b.left(v[:, None])[:, 0] - A @ (K.T @ v)  # R_b R_bᵀ u
        u = nxt
    u -= Q @ (Q.T @ u)
    norm = float(np.linalg.norm(u))
    if norm <= 1e-300:  # the residual is (numerically) zero: any direction will do
        u = rng.standard_normal(n_rows)
        u -= Q @ (Q.T @ u)
        norm = float(np.linalg.norm(u))
    return np.column_stack([A, u / norm])
