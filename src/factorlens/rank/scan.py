"""Scan R = 1..R_max and pick the rank of the joint factorization by a stated rule.

For every R the scan records the joint and per-block fit, the core consistency of the CP (input)
part, the bi-cross-validation error of the weighted concatenation, and split-half stability:
the factor match score between the component signatures (all non-sample factors, weighted by
their strengths) of fits on two random halves of the samples.

Work is reused across R: the blocks are prepared once (one pass for their statistics), every
fit at R starts from the fit at R − 1 plus one new direction (warm start), and bi-cross-
validation scores every R from one SVD per held-out quarter.

**Rule** (fixed, documented): the largest R at which (a) split-half stability is at least
``stability_threshold`` (0.8: the components reappear on other inputs) and (b) the R-th
component still lowers the bi-cross-validation error (it predicts held-out data rather than
fitting noise); 1 when no R > 1 qualifies.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from factorlens.errors import FactorlensError
from factorlens.factorize import CMTF, CMTFResult, factor_match_score
from factorlens.factorize.engine import _as_named_arrays, progress_bar
from factorlens.rank.criteria import bi_cross_validation, core_consistency, joint_signature

RULE = (
    "largest R with split-half stability >= {threshold} whose R-th component lowers the "
    "bi-cross-validation error"
)


@dataclass
class RankScan:
    """Evidence for every R and the chosen rank.

    ``criteria`` maps a name to one value per R in ``ranks``: ``fit`` (joint, weighted),
    ``corcondia`` (percent, nan without a CP block), ``bicv`` (relative error), ``stability``
    (split-half FMS in [0, 1]); ``block_fit`` maps block name to per-R fit.
    """

    ranks: list[int]
    criteria: dict[str, list[float]]
    block_fit: dict[str, list[float]]
    chosen: int
    rule: str
    notes: list[str] = field(default_factory=list)
    results: dict[int, CMTFResult] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the report's ``rank_scan``)."""
        return {
            "ranks": self.ranks,
            "criteria": {k: [_num(v) for v in vals] for k, vals in self.criteria.items()},
            "block_fit": {k: [_num(v) for v in vals] for k, vals in self.block_fit.items()},
            "chosen": self.chosen,
            "rule": self.rule,
            "notes": self.notes,
        }

    def table(self) -> str:
        """The evidence as a fixed-width text table, the chosen rank marked with ``*``."""
        names = list(self.criteria)
        head = "   R  " + "  ".join(f"{n:>10}" for n in names)
        lines = [head]
        for i, r in enumerate(self.ranks):
            mark = "*" if r == self.chosen else " "
            vals = "  ".join(f"{self.criteria[n][i]:>10.4f}" for n in names)
            lines.append(f"{mark}{r:>3}  {vals}")
        return "\n".join(lines)


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def estimate_rank(
    blocks: Any,
    max_rank: int = 10,
    *,
    stability_threshold: float = 0.8,
    random_state: int = 0,
    max_iter: int = 100,
    tol: float = 1e-5,
    keep_results: bool = False,
    progress: bool = False,
    n_jobs: int | None = None,
    **engine: Any,
) -> RankScan:
    """Scan R = 1..``max_rank`` on ``blocks`` (mapping or activation store) and choose a rank.

    ``engine`` options (``nonneg``, ``l1``, ``weighting``, ``center``, ``tensor_blocks``) go
    to :class:`~factorlens.factorize.CMTF`; the scan itself uses one warm-started start per R.
    ``max_rank`` larger than the data allows (half the samples, for the split halves, or the
    total feature count) is clipped, and the clipping is recorded in ``notes``. The three
    warm-start chains (all inputs and each half) run in ``n_jobs`` threads (default: up to 3,
    one per core), each with one BLAS thread.
    """
    if not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise FactorlensError(f"max_rank must be a positive integer, got {max_rank!r}")
    names, arrays = _as_named_arrays(blocks)
    if not names:
        raise FactorlensError("no blocks to scan; give the input and at least one layer")
    n = int(arrays[0].shape[0])
    total = sum(int(np.prod(a.shape[1:])) for a in arrays)
    notes: list[str] = []
    limit = max(1, min(n // 2, total))
    if max_rank > limit:
        notes.append(
            f"max rank {max_rank} clipped to {limit} (split halves of {n} samples, "
            f"{total} features)"
        )
        max_rank = limit
    opts = {"l1": 0.0, **engine, "n_init": 1, "max_iter": max_iter, "tol": tol}
    if opts.get("tensor_blocks") is None:
        opts.pop("tensor_blocks", None)
    opts["random_state"] = random_state
    full = CMTF(1, **opts).prepare(blocks)
    rng = np.random.default_rng(random_state)
    order = rng.permutation(n)
    halves = []
    for part in (np.sort(order[: n // 2]), np.sort(order[n // 2 :])):
        sub = {nm: np.asarray(a[:] if not isinstance(a, np.ndarray) else a)[part]
               for nm, a in zip(names, arrays, strict=True)}  # fmt: skip
        halves.append(CMTF(1, **opts).prepare(sub))

    bicv = bi_cross_validation(full, max_rank, seed=random_state)
    criteria: dict[str, list[float]] = {"fit": [], "corcondia": [], "bicv": [], "stability": []}
    block_fit: dict[str, list[float]] = {nm: [] for nm in names}
    results: dict[int, CMTFResult] = {}
    bar = progress_bar(3 * max_rank, "rank scan") if progress else None
    seeds = np.random.SeedSequence(random_state).spawn(3)
    jobs = [(data, seeds[k]) for k, data in enumerate((full, *halves))]
    n_jobs = min(3, _usable_cpus()) if n_jobs is None else max(1, int(n_jobs))

    def chain(job) -> list[CMTFResult]:
        return _fit_chain(job[0], max_rank, opts, np.random.default_rng(job[1]), bar)

    if n_jobs > 1:
        # the three chains (all inputs, each half) are independent: run them side by side,
        # one BLAS thread each, instead of one chain at a time on every core
        with ThreadPoolExecutor(n_jobs) as pool, threadpool_limits(limits=1):
            chains = list(pool.map(chain, jobs))
    else:
        chains = [chain(job) for job in jobs]
    if bar is not None:
        bar.close()
    for R in range(1, max_rank + 1):
        fitted = [c[R - 1] for c in chains]
        res = fitted[0]
        total_sq = sum(b.norm_sq for b in full)
        loss = sum((1.0 - res.fit[b.name]) * b.norm_sq for b in full)
        criteria["fit"].append(1.0 - loss / total_sq if total_sq > 0 else 0.0)
        cp_blocks = [b for b, m in zip(full, res.block_models, strict=True) if m == "cp"]
        criteria["corcondia"].append(
            core_consistency(res, cp_blocks[0]) if cp_blocks else float("nan")
        )
        criteria["bicv"].append(float(bicv[R - 1]))
        criteria["stability"].append(
            float(factor_match_score([joint_signature(fitted[1])], [joint_signature(fitted[2])]))
        )
        for nm in names:
            block_fit[nm].append(res.fit[nm])
        if keep_results:
            results[R] = res
    chosen = choose_rank(criteria["stability"], criteria["bicv"], stability_threshold)
    return RankScan(
        ranks=list(range(1, max_rank + 1)),
        criteria=criteria,
        block_fit=block_fit,
        chosen=chosen,
        rule=RULE.format(threshold=stability_threshold),
        notes=notes,
        results=results,
    )


def choose_rank(stability: list[float], bicv: list[float], threshold: float) -> int:
    """The module's rule: the largest R with stability ≥ threshold whose R-th component lowers
    the bi-cross-validation error (1 when none)."""
    chosen = 1
    for i in range(1, len(stability)):
        if stability[i] >= threshold and bicv[i] < bicv[i - 1]:
            chosen = i + 1
    return chosen


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _fit_chain(
    data: list, max_rank: int, opts: dict[str, Any], rng: np.random.Generator, bar: Any
) -> list[CMTFResult]:
    """Fits at R = 1..max_rank on prepared blocks, each warm-started from the one before."""
    fitted: list[CMTFResult] = []
    previous = None
    for R in range(1, max_rank + 1):
        init = _warm_start(previous, data[0].n_rows, rng)
        previous = CMTF(R, **{**opts, "init": init}).fit_blocks(data).result_
        fitted.append(previous)
        if bar is not None:
            bar.update(1)
    return fitted


def _warm_start(prev: CMTFResult | None, n: int, rng: np.random.Generator):
    """The previous sample factor plus one random direction orthogonal to it, or ``"svd"``."""
    if prev is None:
        return "svd"
    A = prev.A
    new = rng.standard_normal(n)
    Q, _ = np.linalg.qr(A)
    new -= Q @ (Q.T @ new)
    new /= np.linalg.norm(new)
    return np.column_stack([A, new])
