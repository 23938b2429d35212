"""Capture of wide networks without storing their activations: two passes and a sketch.

A ResNet-50 at 224 px makes 84 MB of activations per input over 105 layers: 2,000 inputs are
170 GB, and reading them on every ALS iteration would take hours. An unconstrained matrix
block enters the joint fit only through its row space (:mod:`factorlens.factorize.reduced`),
so a wide layer ``Y`` (``N×P``, ``P ≫ N``) is kept as its coordinates in a feature basis
``Q`` (``P×k``), computed while the batches stream past and then dropped:

1. **sketch** (forward pass 1): ``W = Σ_batches Y_bᵀ T_b`` (``P×k``), where the test matrix
   ``T = Y_S`` is ``k`` of the layer's own columns, chosen at random: ``W = Yᵀ Y Ω`` for a
   column-selecting ``Ω``, the randomized range finder with one power iteration (Halko,
   Martinsson & Tropp 2011), in one pass, because ``Y_S`` is known batch by batch. (With
   ``N ≤ k`` the test matrix is Gaussian, ``N×k``, so that ``span(W)`` is the whole row space
   even where sampled units are dead.) Also each input's squared norm, a random sample of the
   layer's columns (for the noise floor of ``l1_penalty="auto"``) and, for centring, the
   column sums. Narrow layers, the input and the model's output are kept whole, as rows.
2. ``Q = orth(W)``, per layer (a QR in float64, one layer at a time).

On random-weight ResNet-18 activations (224 px, 256 inputs) the one-pass power iteration
captured 0.87 of a layer's energy at ``k = 40`` where the optimal 40 directions capture 0.89,
and a plain Gaussian range finder 0.82.
3. **project** (forward pass 2): ``C = Y Q`` (``N×k``), every input's exact coordinates.
   Each batch's forward pass stops once its last sketched layer has run (the layers after it
   were kept whole in pass 1): the widest layers come first in a CNN, so on a ResNet-18 at
   224 px, whose sketched layers end in ``layer2``, pass 2 skips 13 of its 20 convolutions
   (about a third of the pass's time: the early, wide ones cost the most on a CPU).
   Each input's squared norm is measured again: a model that answers differently in the two
   passes (dropout left on) is refused, not fitted.

Memory is ``k`` floats per feature of every sketched layer (plus ``k + m`` per input), never
``N`` per feature; time is two forward passes plus two ``N×P×k`` products. With ``N ≤ k``
(the layer's rows fit) ``span(W)`` is the whole row space and the fit is exact; otherwise the
captured share of each layer's energy, ``‖C‖² / ‖Y‖²``, is recorded and reported.

Which layers are sketched: nothing, when every block held whole fits ``memory_budget`` (one
pass, as :func:`factorlens.capture` does); otherwise the widest layers, until what is held
fits, with ``k`` directions each (``sketch="auto"`` picks ``k`` from the rank and the budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from factorlens.capture import (
    EnoughOfThisBatch,
    ForwardPass,
    _check_capture_args,
    _input_rows,
    _to_rows,
    capture,
    note_unused,
    output_record,
)
from factorlens.errors import FactorlensError, FactorlensRuntimeError
from factorlens.factorize.penalty import MAX_SIDE
from factorlens.factorize.reduced import ReducedBlock
from factorlens.modelio import resolve_device
from factorlens.options import DEFAULT_RANK, DEFAULT_SEED, CaptureOptions, capture_settings
from factorlens.pages import small_pages
from factorlens.rows import Levels
from factorlens.store import ActivationStore, MemoryStore, _Spec
from factorlens.writer import check_finite

_C = CaptureOptions()

#: sampled columns kept of each sketched layer (its noise floor's spectrum)
SAMPLED_COLUMNS = 128
#: sketch directions beyond the rank that ``sketch="auto"`` aims for, and the fewest it takes
OVERSAMPLE = 30
MIN_OVERSAMPLE = 10
#: ``sketch="auto"`` keeps at most this many directions (time grows with them)
MAX_AUTO = 64
#: a sketched capture's batches hold at most this many bytes of the widest layer's output
BATCH_BYTES = 128 * 1024**2
#: inputs the probe runs to learn the blocks (its errors name a batch of this many)
PROBE_INPUTS = 16
#: the largest relative change of a layer's energy between the two passes that is round-off
DETERMINISM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SketchPlan:
    """Which blocks are sketched, with how many directions, and what is held in memory.

    ``sketched`` lists block names (empty: one pass, every block whole); ``size`` is ``k``;
    ``held`` the bytes held (whole blocks, bases, coordinates, sampled columns).
    """

    sketched: tuple[str, ...]
    size: int
    held: int


def plan_sketch(
    widths: Mapping[str, int],
    n_samples: int,
    rank: int,
    sketch: int | str = _C.sketch,
    memory_budget: int = _C.memory_budget,
) -> SketchPlan:
    """Choose the sketched layers and ``k`` for layers of ``widths`` (features per input).

    ``sketch``: ``"auto"`` (sketch only when the whole blocks exceed ``memory_budget``; then
    ``k = rank + OVERSAMPLE``, fewer when the bases would not fit, at least
    ``rank + MIN_OVERSAMPLE``, at most :data:`MAX_AUTO`), ``0`` (nothing: every block whole)
    or a number ``k`` (every layer wider than ``k`` features with more than ``k`` inputs).
    A layer is sketched only where that holds less than the layer itself (``N > k``).
    """
    n = int(n_samples)
    whole = {name: n * int(p) * 4 for name, p in widths.items()}
    if sketch == 0 or (sketch == "auto" and sum(whole.values()) <= memory_budget):
        return SketchPlan((), 0, sum(whole.values()))
    if sketch == "auto":
        low = rank + MIN_OVERSAMPLE
        size = min(max(rank + OVERSAMPLE, low), max(MAX_AUTO, low))
        if size >= n:  # the rows fit: holding the blocks whole is exact and no larger
            return SketchPlan((), 0, sum(whole.values()))
    else:
        size = int(sketch)  # as asked (exact when size >= N, holding about as much)

    def cost(name: str, k: int) -> int:  # a sketched layer: basis, coordinates, columns
        p = int(widths[name])
        return 4 * (p * k + n * (k + min(p, SAMPLED_COLUMNS)))

    order = sorted(widths, key=lambda nm: -whole[nm])  # the widest first
    candidates = [
        nm for nm in order if widths[nm] > size and (sketch != "auto" or cost(nm, size) < whole[nm])
    ]
    sketched: list[str] = []
    held = sum(whole.values())
    for name in candidates:
        if sketch == "auto" and held <= memory_budget:
            break
        sketched.append(name)
        held += cost(name, size) - whole[name]
    if sketch == "auto" and held > memory_budget and sketched:
        # fewer directions where even the bases exceed the budget (never below rank + 10)
        fixed = held - sum(cost(nm, size) for nm in sketched)
        per_k = sum(4 * (int(widths[nm]) + n) for nm in sketched)
        size = max(rank + MIN_OVERSAMPLE, min(size, (memory_budget - fixed) // max(per_k, 1)))
        held = fixed + sum(cost(nm, size) for nm in sketched)
    return SketchPlan(tuple(sketched), int(size), int(held))


class SketchedStore(MemoryStore):
    """A complete, read-only in-memory store whose wide layers are :class:`ReducedBlock` s.

    ``block(name)`` returns the array of a block held whole (the input as given, not copied)
    and the :class:`ReducedBlock` of a sketched one; :class:`factorlens.CMTF` fits both, and
    :meth:`captured` gives each sketched layer's captured share of its energy.
    """

    def __init__(
        self,
        blocks: Sequence[tuple[str, str, str, Any]],
        labels: np.ndarray | None,
        meta: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self._reduced: dict[str, ReducedBlock] = {}
        for i, (name, kind, module, arr) in enumerate(blocks):
            n = int(arr.shape[0])
            spec = _Spec(name, tuple(int(s) for s in arr.shape[1:]), kind, module, n, n)
            spec.key = f"b{i:03d}"
            self._specs[name] = spec
            if isinstance(arr, ReducedBlock):
                self._reduced[name] = arr
            else:
                self._arrays[name] = arr
        if labels is not None:
            self.set_labels(labels)
        self.set_meta(meta)
        self._closed = True
        self._readonly = True

    @property
    def sketched(self) -> list[str]:
        """The names of the sketched blocks, in store order."""
        return [n for n in self.names if n in self._reduced]

    def captured(self) -> dict[str, float]:
        """Each sketched block's share of its energy inside its basis (1 = exact)."""
        return {n: self._reduced[n].captured for n in self.sketched}

    def block(self, name: str) -> Any:
        """Return block ``name``: an array, or the :class:`ReducedBlock` of a sketched layer."""
        self._spec(name)
        if name in self._reduced:
            return self._reduced[name]
        return super().block(name)

    def iter_rows(self, name: str, chunk_rows: int | None = None):
        """Yield a whole block's rows (a sketched layer has none: a one-line error)."""
        if name in self._reduced:
            raise FactorlensError(
                f"layer {name!r} was sketched (kept as coordinates in a basis of its leading "
                "directions), so its rows are not held; capture it whole with `sketch=0`"
            )
        return super().iter_rows(name, chunk_rows)

    def _create(self, spec: _Spec) -> None:
        raise FactorlensError("a sketched store is read-only")


# --------------------------------------------------------------------------------- passes
class _Probe(ForwardPass):
    """One small batch: each block's name, module type and features per input, in call order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.returned: dict[str, tuple[int, ...]] = {}

    def on_block(self, block: str, module: str, out: torch.Tensor) -> None:
        self.shapes[block] = tuple(int(s) for s in out.shape[1:])

    def on_batch(self, start, stop, batch, returned) -> None:
        self.returned = {k: tuple(v.shape[1:]) for k, v in returned.items()}


class _SketchPass(ForwardPass):
    """Pass 1: whole blocks' rows kept; every sketched layer's range sketch and statistics."""

    desc = "pass 1/2: sketch"

    def __init__(
        self,
        model: nn.Module,
        chosen: list[str],
        *,
        n: int,
        shapes: Mapping[str, tuple[int, ...]],
        sketched: Sequence[str],
        size: int,
        seed: int,
        nonfinite: str,
        center: bool,
        **options: Any,
    ) -> None:
        super().__init__(model, chosen, **options)
        self.n, self.size, self.nonfinite = n, size, nonfinite
        self.counts: dict[str, int] = {}
        self.kept: dict[str, np.ndarray] = {}
        self.sketch: dict[str, torch.Tensor] = {}
        self.sumsq: dict[str, np.ndarray] = {}
        self.col_index: dict[str, np.ndarray] = {}
        self.columns: dict[str, np.ndarray] = {}
        self.col_sums: dict[str, torch.Tensor] = {}
        rng = np.random.default_rng(seed)
        dev = self.device
        self.gaussian = size >= n  # the rows fit: a Gaussian test matrix spans them all
        self.test_cols: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            p = int(np.prod(shape))
            if name in sketched:
                self.sketch[name] = torch.zeros((p, size), dtype=torch.float32, device=dev)
                self.sumsq[name] = np.zeros(n)
                # as many columns as the noise floor of a whole block reads when the sketch is
                # exact (so the floor is the same where it reads them all), else a sample
                m = min(p, MAX_SIDE if self.gaussian else SAMPLED_COLUMNS)
                self.col_index[name] = np.sort(rng.choice(p, m, replace=False))
                self.columns[name] = np.empty((n, m), dtype=np.float32)
                if not self.gaussian:  # the test matrix: k random columns of the layer
                    cols = np.sort(rng.choice(p, min(size, p), replace=False))
                    self.test_cols[name] = torch.as_tensor(cols, device=dev)
                if center:
                    self.col_sums[name] = torch.zeros(p, dtype=torch.float64, device=dev)
            else:
                self.kept[name] = np.empty((n, *shape), dtype=np.float32)
        self.output_sumsq = np.zeros(n)  # what the model returns, checked in pass 2
        self._gen = torch.Generator(device="cpu").manual_seed(int(seed))
        self._psi = torch.empty(0)
        self._psi_at = -1  # the batch (first row) whose Ψ rows are drawn

    def _test_matrix(self) -> torch.Tensor:
        """Return this batch's rows of the Gaussian test matrix ``Ψ`` (drawn once per batch)."""
        if self._psi_at != self.start:
            self._psi = torch.randn((self.batch_n, self.size), generator=self._gen).to(self.device)
            self._psi_at = self.start
        return self._psi

    def on_block(self, block: str, module: str, out: torch.Tensor) -> None:
        rows = slice(self.start, self.start + self.batch_n)
        if block in self.kept:
            arr = _to_rows(out)
            self.kept[block][rows] = check_finite(
                block, arr, self.nonfinite, self.start, self.counts
            )
            return
        if block not in self.sketch:
            return
        y = out.reshape(self.batch_n, -1)
        norms = torch.linalg.vector_norm(y, dim=1).double()
        if not bool(torch.isfinite(norms).all()):  # NaN/Inf: refused, or zeroed in a copy
            y = torch.from_numpy(
                check_finite(block, _to_rows(y), self.nonfinite, self.start, self.counts)
            ).to(self.device)
            norms = torch.linalg.vector_norm(y, dim=1).double()
        self.sumsq[block][rows] = (norms**2).cpu().numpy()
        test = self._test_matrix() if self.gaussian else y.index_select(1, self.test_cols[block])
        self.sketch[block].addmm_(y.T, test)
        idx = torch.as_tensor(self.col_index[block], device=y.device)
        self.columns[block][rows] = y.index_select(1, idx).cpu().numpy()
        if block in self.col_sums:
            self.col_sums[block] += y.sum(dim=0, dtype=torch.float64)

    def on_batch(self, start, stop, batch, returned) -> None:
        rows = _input_rows(batch)
        check_finite("input", rows, self.nonfinite, start, self.counts)
        for name, arr in returned.items():
            self.kept[name][start:stop] = check_finite(
                name, arr, self.nonfinite, start, self.counts
            )
        _record_output(self.output_sumsq, self.model_output, start, stop)


class _ProjectPass(ForwardPass):
    """Pass 2: every sketched layer's coordinates ``C = Y Q`` and its energy, measured again."""

    desc = "pass 2/2: project"

    def __init__(
        self,
        model: nn.Module,
        chosen: list[str],
        *,
        bases: Mapping[str, torch.Tensor],
        n: int,
        nonfinite: str,
        **options: Any,
    ) -> None:
        super().__init__(model, chosen, **options)
        self.bases = bases
        self.nonfinite = nonfinite
        self.coords = {nm: np.empty((n, q.shape[1]), dtype=np.float32) for nm, q in bases.items()}
        self.sumsq = {nm: np.zeros(n) for nm in bases}
        self.output_sumsq = np.zeros(n)
        self.stopped_early = False  # the forward passes stopped after the last sketched block
        self._seen: set[str] = set()  # the current batch's blocks projected

    def on_batch(self, start, stop, batch, returned) -> None:
        self._seen.clear()
        if self.model_output is None:
            self.stopped_early = True
        else:
            _record_output(self.output_sumsq, self.model_output, start, stop)

    def on_block(self, block: str, module: str, out: torch.Tensor) -> None:
        if block not in self.bases:
            return
        self._project(block, out)
        self._seen.add(block)
        if len(self._seen) == len(self.bases):  # the later layers were captured in pass 1
            raise EnoughOfThisBatch

    def _project(self, block: str, out: torch.Tensor) -> None:
        """Record the batch's coordinates of ``block`` in its basis and its rows' energies."""
        rows = slice(self.start, self.start + self.batch_n)
        y = out.reshape(self.batch_n, -1)
        norms = torch.linalg.vector_norm(y, dim=1).double()
        if not bool(torch.isfinite(norms).all()):
            y = torch.from_numpy(check_finite(block, _to_rows(y), self.nonfinite, self.start, {}))
            y = y.to(self.device)
            norms = torch.linalg.vector_norm(y, dim=1).double()
        self.sumsq[block][rows] = (norms**2).cpu().numpy()
        self.coords[block][rows] = (y @ self.bases[block]).cpu().numpy()


def _record_output(sumsq: np.ndarray, output: Any, start: int, stop: int) -> None:
    """Record each input's squared norm of what the model returned (a tensor; else nothing)."""
    if isinstance(output, torch.Tensor) and output.ndim and output.shape[0] == stop - start:
        flat = output.detach().reshape(stop - start, -1).double()
        sumsq[start:stop] = (flat * flat).sum(dim=1).cpu().numpy()


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's ``malloc_trim``), where there is one.

    A forward pass frees many mid-sized activations that glibc keeps for reuse; between the
    passes they would sit beside the sketches and count against the resident memory.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _orthonormal(sketch: torch.Tensor, rows: int = 1 << 16) -> torch.Tensor:
    """Return an orthonormal basis ``(P, k')`` of the sketch's columns, float32, ``k' ≤ k``.

    Twice ``W ← W V Λ^{-1/2}`` for ``WᵀW = V Λ Vᵀ`` (CholeskyQR2 through an eigendecomposition,
    dropping directions below 1e-12 of the largest, so a rank-deficient sketch loses columns
    instead of failing), the Gram matrices summed in float64 over ``rows`` rows at a time:
    the columns of ``Yᵀ Y_S`` all lean towards the layer's mean activation, and float32 would
    lose the minor directions. Two GEMMs of ``P×k×k`` a round, where Householder QR on such a
    tall, thin matrix ran at a tenth of the speed; each round overwrites the sketch ``rows``
    rows at a time, so no second ``P×k`` array is ever held.
    """
    w = sketch
    for _ in range(2):
        gram = torch.zeros((w.shape[1], w.shape[1]), dtype=torch.float64, device=w.device)
        for a in range(0, w.shape[0], rows):
            part = w[a : a + rows].double()
            gram += part.T @ part
        evals, evecs = torch.linalg.eigh(gram)
        keep = evals > evals.max().clamp(min=0) * 1e-12
        if not bool(keep.any()):  # an all-zero sketch: one arbitrary unit direction
            out = torch.zeros((w.shape[0], 1), dtype=torch.float32, device=w.device)
            out[0, 0] = 1.0
            return out
        step = torch.zeros((w.shape[1], w.shape[1]), dtype=torch.float32, device=w.device)
        kept = int(keep.sum())
        step[:, :kept] = (evecs[:, keep] / evals[keep].sqrt()).to(torch.float32)
        for a in range(0, w.shape[0], rows):  # in place: W ← W V Λ^{-1/2}, zero-padded
            w[a : a + rows] = w[a : a + rows] @ step
        if kept < w.shape[1]:
            w = w[:, :kept]
    return w.contiguous()


# --------------------------------------------------------------------------------- capture
@small_pages()
def capture_sketched(
    model: nn.Module,
    data: Any,
    layers: Sequence[str] | str | None = None,
    *,
    options: CaptureOptions | None = None,
    rank: int = DEFAULT_RANK,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    labels: Any = None,
    select: Mapping[str, int | str] | None = None,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    output: str | None = None,
    center: bool = False,
    seed: int = DEFAULT_SEED,
    **settings: Any,
) -> ActivationStore:
    """Capture ``model`` on ``data`` in memory, sketching the layers too wide to hold.

    When every block fits ``memory_budget`` this is :func:`factorlens.capture` into memory
    (one pass, every block whole). Otherwise the widest layers are sketched (see the module
    docstring) and the result is a :class:`SketchedStore`: two forward passes, and memory
    bounded by the budget rather than by the activations.

    Parameters
    ----------
    model, data, layers, preprocess, labels, select, meta, output
        As for :func:`factorlens.capture`.
    options : CaptureOptions, optional
        The capture's settings; here ``sketch`` (``"auto"``, ``0``: every block whole, or
        ``k``; see :func:`plan_sketch`) and ``memory_budget`` (bytes of activations, or their
        sketches, held in memory) count too.
    **settings
        Those fields as keywords; they win over ``options``.
    rank : int
        The largest number of components that will be fitted (the rank, or the rank scan's
        largest R): ``sketch="auto"`` keeps ``rank + 30`` directions where the budget allows.
    progress : bool
        Show each pass's progress on stderr.
    center : bool
        Also record each sketched layer's column sums, so that it can be fitted centred.
    seed : int
        Seeds the test matrix and the sampled columns.

    Returns
    -------
    ActivationStore
        A closed store: a :class:`~factorlens.store.MemoryStore` when nothing was sketched,
        else a :class:`SketchedStore` whose ``meta["sketch"]`` records the plan and each
        sketched layer's captured energy.
    """
    opts = capture_settings(options, **settings)
    images, n, labels, chosen, select_map, data_meta = _check_capture_args(
        model, data, layers, labels, select, output
    )
    sketch, memory_budget, batch_size = opts.sketch, opts.memory_budget, int(opts.batch_size)
    _check_sketch(sketch, rank)
    dev = resolve_device(str(opts.device))
    passes = {"device": dev, "preprocess": preprocess, "select": select_map, "output": output}
    probe = _Probe(model, chosen, drop_unused=layers is None, **passes)  # blocks and widths
    size = min(n, int(batch_size), PROBE_INPUTS)
    probe.run(images[:size], batch_size=size, progress=False)
    chosen = probe.chosen  # default layers that never ran are left out
    note_unused(probe.dropped)
    widths = {b: int(np.prod(s)) for b, s in probe.shapes.items()}
    widths.update({b: int(np.prod(s)) for b, s in probe.returned.items()})
    widths["input"] = int(np.prod(images.shape[1:]))
    plan = plan_sketch(
        {b: w for b, w in widths.items() if b not in ("input", output)},
        n,
        rank,
        sketch,
        memory_budget - 4 * n * widths["input"],
    )
    if not plan.sketched:
        return capture(
            model,
            data,
            chosen,
            options=replace(opts, device=str(dev)),
            preprocess=preprocess,
            labels=labels,
            select=select_map,
            progress=progress,
            meta=meta,
            output=output,
            check_determinism=False,  # the probe ran a few inputs twice already
        )
    shapes = {**probe.shapes, **probe.returned}
    n_layers = len(probe.shapes)
    # batches no larger than the widest layer's BATCH_BYTES: the forward pass's own
    # activations, not the sketch, are then what a batch adds to memory
    widest = max([4 * w for w in widths.values()] + [1])
    batch_size = max(1, min(int(batch_size), BATCH_BYTES // widest))
    first = _SketchPass(
        model,
        chosen,
        n=n,
        shapes=shapes,
        sketched=plan.sketched,
        size=plan.size,
        seed=seed,
        nonfinite=opts.nonfinite,
        center=center,
        **passes,
    )
    first.checked_determinism = True  # the probe ran a few inputs twice already
    first.run(
        images,
        batch_size=batch_size,
        progress=progress,
        desc=f"pass 1/2: sketch {len(plan.sketched)} of {n_layers} layers (k = {plan.size})",
    )
    release_memory()
    bases = {}
    for name in plan.sketched:  # each sketch replaced by its orthonormal basis, one at a time
        bases[name] = _orthonormal(first.sketch.pop(name))
    wide = [m for m in chosen if any(first.blocks.get(b) == m for b in plan.sketched)]
    second = _ProjectPass(model, wide, bases=bases, n=n, nonfinite=opts.nonfinite, **passes)
    second.checked_determinism = True  # and the two passes' energies are compared below
    second.run(
        images,
        batch_size=batch_size,
        progress=progress,
        desc=f"pass 2/2: project {len(plan.sketched)} layers",
    )
    # the output is compared only where pass 2 ran to it; the probe checked the whole model
    returned = {} if second.stopped_early else {"the model's output": first.output_sumsq}
    _check_deterministic(
        {**first.sumsq, **returned},
        {**second.sumsq, "the model's output": second.output_sumsq},
    )
    exact = first.gaussian  # k >= N: every basis spans its layer's row space
    reduced = {
        name: ReducedBlock(
            shape=(n, *shapes[name]),
            coords=second.coords[name],
            # a truncated sketch's basis in float16: half the memory, an error (1e-3 of a
            # loading) far below the truncation's; an exact one stays float32
            basis=(bases.pop(name) if exact else bases.pop(name).half()).cpu().numpy(),
            row_sumsq=first.sumsq[name],
            columns=first.columns[name],
            column_index=first.col_index[name],
            column_sums=first.col_sums[name].cpu().numpy() if name in first.col_sums else None,
            exact=exact,
        )
        for name in plan.sketched
    }
    inputs: Any
    if isinstance(images, Levels):  # 8-bit levels stay levels: the input block reads them by rows
        inputs = images.squeeze_channel()
    else:
        inputs = images if isinstance(images, np.ndarray) else images.detach().cpu().numpy()
        inputs = np.asarray(inputs, dtype=np.float32)
        if inputs.ndim == 4 and inputs.shape[1] == 1:
            inputs = inputs[:, 0]
    blocks: list[tuple[str, str, str, Any]] = [("input", "input", "input", inputs)]
    for name in probe.shapes:
        module = type(first.modules[first.blocks[name]]).__name__
        blocks.append((name, "layer", module, reduced.get(name, first.kept.get(name))))
    for name in probe.returned:
        blocks.append((name, "output", type(model).__name__, first.kept[name]))
    release_memory()  # the float32 bases just freed (float16 copies kept) go back to the OS
    captured = {nm: r.captured for nm, r in reduced.items()}
    full_meta = {
        "model": type(model).__name__,
        **data_meta,
        **dict(meta or {}),
        **output_record(probe),  # where the model's predictions are
        "layers": list(probe.shapes),
        "modules": {b: m for b, _, m, _ in blocks[1:] if b in probe.shapes},
        "shapes": {b: [n, *shapes.get(b, inputs.shape[1:])] for b, *_ in blocks},
        "batch_size": batch_size,
        "n_samples": n,
        "device": str(dev),
        "select": select_map,
        "nonfinite_policy": opts.nonfinite,
        "nonfinite": {b: int(first.counts.get(b, 0)) for b, *_ in blocks},
        "sketch": {
            "size": plan.size,
            "layers": list(plan.sketched),
            "captured_energy": captured,
            "held_bytes": plan.held,
            "memory_budget": int(memory_budget),
        },
    }
    return SketchedStore(blocks, labels, full_meta)


def _check_sketch(sketch: int | str, rank: int) -> None:
    """One-line error for a ``sketch`` size not above ``rank`` (its range: CaptureOptions)."""
    if isinstance(sketch, int | np.integer) and 0 < sketch <= rank:
        raise FactorlensError(
            f"`sketch` ({sketch}) must exceed the rank {rank}: give at least rank + 1 "
            "directions (rank + 10 or more keep the fit close to the whole layers'; rank + 30 "
            "is the default)"
        )


def _check_deterministic(first: Mapping[str, np.ndarray], second: Mapping[str, np.ndarray]) -> None:
    """Refuse a model whose layers changed between the two passes over the same inputs."""
    for name, before in first.items():
        after = second[name]
        total = float(before.sum())
        change = float(np.abs(after - before).sum()) / total if total > 0 else 0.0
        if not math.isfinite(change) or change > DETERMINISM_TOLERANCE:
            what = name if name.startswith("the model") else f"layer {name!r}"
            raise FactorlensRuntimeError(
                f"{what} gave other outputs for the same inputs in the second pass "
                f"(its energy changed by {100 * change:.3g}%): the model is not deterministic "
                "in eval mode (dropout called in forward(), or an eval() that does not turn it "
                "off); make it deterministic, or hold every layer whole (`sketch=0`, one pass)"
            )


__all__ = ["SketchPlan", "SketchedStore", "capture_sketched", "plan_sketch"]
