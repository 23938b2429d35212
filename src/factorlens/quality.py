"""Training quality without labels: a score per checkpoint, with the joint rank beside it.

Two modes (:func:`score_together` picks one; ``auto`` = consensus from 5 checkpoints on):

**consensus** — several checkpoints scored on the same inputs (the usual question, "which of
my checkpoints is best?"). Their predicted classes are pooled in a one-coin Dawid–Skene model
(:mod:`factorlens.consensus`) and each checkpoint's score is its **estimated accuracy**: how
often it gives the class that the reliability-weighted consensus believes. Near-identical
checkpoints vote once, and a consensus that may follow shared mistakes carries warnings
(:func:`score_together`).

**single** — one checkpoint on its own (fixed recipe, higher = better trained)::

    score = stability × sqrt(prediction_rank / K)

* ``stability`` — do the answers survive changes of the input that should not change them?
  Every input is perturbed twice (:func:`perturbations`): moved by about 1/14 of the image side
  (1 px on 8×8, 2 px on 28×28 and 32×32; edges replicated) in a random direction, and with
  Gaussian noise of sd 0.05 added (clipped to [0, 1]); non-image inputs get the noise only.
  ``stability`` is the mean over the perturbations of Cohen's κ between the predicted classes of
  the clean and the perturbed inputs: the share of unchanged answers corrected by the share
  expected by chance from the two class frequencies. A network that learnt the task keeps its
  answers; one that fits too few or wrong labels, or has barely started, has brittle answers.
* ``prediction_rank`` — the effective rank (Roy & Vetterli 2007) of the ``N×K`` predicted
  class probabilities (the softmax of the model's output, or the output itself when it already
  is probabilities), in ``[1, K]``: ≈ 1 when every input gets the same answer, ≈ K when the
  inputs are sorted into K confident, distinct answers. It keeps a network that answers one
  class whatever the input (perfectly stable) from scoring high.

Neither mode reads a label or training data, and neither comes from the joint factorization
(the earlier score, agreement between input-space neighbours, failed on every domain where
pixel similarity is not class similarity: see benchmarks/RESULTS.md). The single score lies in
``[-1, 1]``; compare checkpoints scored on the same inputs, not scores across data sets.

**Spread**: ``score_sd`` is the bootstrap standard deviation of the score over resamples of the
inputs; checkpoints whose scores differ by less are not told apart.

**Rank**: the rank of the joint factorization of the input and the chosen layers, chosen by
:func:`factorlens.rank.estimate_rank`, reported beside the score as the factorization's own
evidence. On the zoos (benchmarks/bench_quality.py) it does *not* track accuracy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.options import (
    COUNT,
    DEFAULT_SEED,
    SEED,
    CaptureOptions,
    QualityOptions,
    RankOptions,
    capture_settings,
    check,
    check_fields,
)
from factorlens.pages import small_pages
from factorlens.rows import in_memory, row_chunks
from factorlens.spectra import effective_rank

if TYPE_CHECKING:
    import torch

    from factorlens.store import ActivationStore

#: the capture and scoring defaults (one place: the options dataclasses)
_Q = QualityOptions()
_R = RankOptions()
#: shift of the moved copy, as a fraction of the image side (at least 1 pixel)
SHIFT_FRACTION = 1 / 14
#: standard deviation of the noise added to the noisy copy (pixels in [0, 1])
NOISE_SD = 0.05
#: bootstrap resamples of the inputs for the score's spread
N_BOOTSTRAP = 200
#: the start of the temporary folders in ``--scratch`` (then ``<pid>.<start time>-``)
SCRATCH_PREFIX = ".factorlens-scratch-"
#: the name under which assess() captures the model's own output
OUTPUT_BLOCK = "model output"


#: fewest checkpoints the consensus mode takes (with two, neither can outvote the other)
MIN_CONSENSUS = 3
#: a consensus whose median estimated accuracy (one value per voter) is below this is flagged:
#: most of its checkpoints look poor, and their shared mistakes may be what it believes
POOR_MEDIAN = 0.5
#: single scores this many combined sds apart tell two checkpoints apart
CLEAR_SDS = 2.0
#: a single-score gap below this is no conflict with the consensus: on full zoos the single
#: score's and the consensus's first checkpoints differ by about 0.02 (both near the top)
MATERIAL_SINGLE = 0.05
#: fewest checkpoints for which ``auto`` picks the consensus: with 3 of which 2 are poor and
#: disagree, the consensus is not identifiable (seen: a 0.18-accuracy checkpoint estimated
#: above a 0.81 one); the single score is safer there
AUTO_CONSENSUS = 5


@dataclass
class QualityReport:
    """One checkpoint's label-free assessment.

    ``score`` and ``score_sd`` are those of ``mode``: ``"single"`` (``single_score``, from this
    checkpoint alone) or ``"consensus"`` (``estimated_accuracy``, from its agreement with the
    other checkpoints scored on the same inputs, :func:`score_together`).

    Attributes
    ----------
    score : float
        The score of ``mode``.
    rank : int
        The joint factorization's chosen rank (0 when no rank was scanned).
    prediction_rank : float
        Effective rank of the predicted class probabilities, in ``[1, K]``.
    stability : float
        Mean Cohen's κ between the answers on the inputs and on each perturbed copy.
    score_sd : float
        Bootstrap standard deviation of ``score`` over resamples of the inputs.
    n_outputs : int
        K, the number of class scores the model gives.
    n_inputs : int
        N, the number of inputs scored.
    checkpoint : str or None
        The checkpoint's name.
    accuracy : float or None
        Accuracy on the labels, when the data has them (for reference only).
    degenerate : list of str
        Blocks that are constant over the inputs (left out of the rank scan).
    rank_scan : dict or None
        The rank scan's evidence (:meth:`factorlens.rank.RankScan.to_dict`).
    mode : str
        ``"single"`` or ``"consensus"``.
    single_score : float or None
        The single-checkpoint score, whatever the mode.
    single_score_sd : float or None
        Its bootstrap standard deviation.
    estimated_accuracy : float or None
        The consensus' estimated accuracy (consensus mode only).
    warnings : list of str
        Why the set's scores are in doubt (the same for every checkpoint of the set; one line
        each): see :func:`score_together`.
    copies : list of list of str
        Groups of near-identical checkpoints (:func:`factorlens.consensus.copy_groups`), each
        counted as one voter.
    """

    score: float
    rank: int
    prediction_rank: float
    stability: float
    score_sd: float
    n_outputs: int
    n_inputs: int
    checkpoint: str | None = None
    accuracy: float | None = None
    degenerate: list[str] = field(default_factory=list)
    rank_scan: dict[str, Any] | None = None
    mode: str = "single"
    single_score: float | None = None
    single_score_sd: float | None = None
    estimated_accuracy: float | None = None
    warnings: list[str] = field(default_factory=list)
    copies: list[list[str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-able dict (the ``--json`` fields)."""
        out: dict[str, Any] = {
            "checkpoint": self.checkpoint,
            "rank": int(self.rank),
            "mode": self.mode,
            "score": float(self.score),
            "score_sd": float(self.score_sd),
            "single_score": float(self.score if self.single_score is None else self.single_score),
            "single_score_sd": float(
                self.score_sd if self.single_score_sd is None else self.single_score_sd
            ),
            "stability": float(self.stability),
            "prediction_rank": float(self.prediction_rank),
            "n_outputs": int(self.n_outputs),
            "n_inputs": int(self.n_inputs),
            "degenerate_blocks": self.degenerate,
            "warnings": list(self.warnings),
            "copies": [list(g) for g in self.copies],
        }
        if self.estimated_accuracy is not None:
            out["estimated_accuracy"] = float(self.estimated_accuracy)
        if self.accuracy is not None:
            out["accuracy"] = float(self.accuracy)
        if self.rank_scan is not None:
            out["rank_scan"] = self.rank_scan
        return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, K)`` scores, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _check_outputs(outputs: Any) -> np.ndarray:
    out = np.asarray(outputs)
    if out.ndim != 2 or out.shape[1] < 2:
        raise FactorlensError(
            f"the model's output has shape {out.shape}; the quality score needs class "
            "scores (N, K) with K >= 2 — choose a classifier whose output gives them"
        )
    if not np.isfinite(out).all():
        raise FactorlensError("the model's output holds NaN or Inf; the checkpoint is broken")
    return out


def class_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Return ``(N, K)`` class probabilities from a model's outputs.

    The outputs themselves when every row already is a probability vector (a model ending in
    softmax), else their softmax (logits or log-probabilities).
    """
    out = np.asarray(_check_outputs(outputs), dtype=np.float64)
    if out.min() >= 0.0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        return out
    return softmax(out)


def prediction_rank(outputs: np.ndarray) -> float:
    """Effective rank of the model's class probabilities ``(N, K)``, in ``[1, K]``."""
    return effective_rank(class_probabilities(outputs))


def perturbations(inputs: Any, random_state: int = DEFAULT_SEED) -> list[np.ndarray]:
    """Return the perturbed copies of ``inputs`` that the stability compares against.

    Images ``(N, C, H, W)`` give ``[moved, noisy]``, any other shape ``[noisy]``; float32 in
    [0, 1].

    ``moved``: every image translated by ``max(1, round(SHIFT_FRACTION × side))`` pixels
    up, down, left or right (drawn per image), the edge pixels replicated into the gap.
    ``noisy``: Gaussian noise of sd NOISE_SD added, clipped to [0, 1]. Seeded: the same
    ``random_state`` gives the same copies.
    """
    x = np.asarray(inputs, dtype=np.float32)
    if x.shape[0] < 2:
        raise FactorlensError("the quality score needs at least 2 inputs; give more samples")
    rng = np.random.default_rng(random_state)
    noisy = np.clip(x + rng.normal(0.0, NOISE_SD, size=x.shape).astype(np.float32), 0.0, 1.0)
    if x.ndim != 4:
        return [noisy]
    h, w = x.shape[2:]
    step = max(1, round(SHIFT_FRACTION * min(h, w)))
    padded = np.pad(x, ((0, 0), (0, 0), (step, step), (step, step)), mode="edge")
    direction = rng.integers(0, 4, size=x.shape[0])
    moved = np.empty_like(x)
    for d, (dy, dx) in enumerate(((step, 0), (-step, 0), (0, step), (0, -step))):
        rows = direction == d
        moved[rows] = padded[rows, :, step - dy : step - dy + h, step - dx : step - dx + w]
    return [moved, noisy]


def answer_agreement(predicted: np.ndarray, other: np.ndarray, n_classes: int) -> float:
    """Return Cohen's κ between two answers ``(N,)`` to the same inputs.

    κ is the share that agree, corrected by the share expected from the two class
    frequencies. 0 when either answer is always the same class.
    """
    a, b = np.asarray(predicted), np.asarray(other)
    fa = np.bincount(a, minlength=n_classes) / a.size
    fb = np.bincount(b, minlength=n_classes) / b.size
    chance = float(fa @ fb)
    if chance >= 1.0:
        return 0.0
    return (float(np.mean(a == b)) - chance) / (1.0 - chance)


def _check_perturbed(outputs: np.ndarray, perturbed: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not perturbed:
        raise FactorlensError("give the model's outputs on at least one perturbed copy")
    checked = [_check_outputs(p) for p in perturbed]
    for p in checked:
        if p.shape != outputs.shape:
            raise FactorlensError(
                f"the outputs on a perturbed copy have shape {p.shape} but those on the inputs "
                f"{outputs.shape}; run the model on perturbations() of the same inputs"
            )
    return checked


def quality_score(
    outputs: np.ndarray, perturbed: Sequence[np.ndarray]
) -> tuple[float, float, float]:
    """Return ``(score, stability, prediction_rank)`` of one checkpoint.

    From its outputs ``(N, K)`` on the inputs and on each of their :func:`perturbations`
    (same shape).
    """
    out = _check_outputs(outputs)
    others = _check_perturbed(out, perturbed)
    k = out.shape[1]
    pred = out.argmax(axis=1)
    stab = float(np.mean([answer_agreement(pred, p.argmax(axis=1), k) for p in others]))
    er = prediction_rank(out)
    return stab * float(np.sqrt(er / k)), stab, er


def score_spread(
    outputs: np.ndarray,
    perturbed: Sequence[np.ndarray],
    n_boot: int = N_BOOTSTRAP,
    random_state: int = DEFAULT_SEED,
) -> float:
    """Return the bootstrap standard deviation of the single-checkpoint score.

    Over ``n_boot`` resamples of the inputs: how far it moves on another draw of similar
    inputs.
    """
    out = _check_outputs(outputs)
    others = [p.argmax(axis=1) for p in _check_perturbed(out, perturbed)]
    probs = class_probabilities(out)
    k = out.shape[1]
    pred = out.argmax(axis=1)
    rng = np.random.default_rng(random_state)
    scores = []
    for _ in range(int(n_boot)):
        rows = rng.integers(0, pred.size, pred.size)
        stab = np.mean([answer_agreement(pred[rows], o[rows], k) for o in others])
        scores.append(stab * float(np.sqrt(effective_rank(probs[rows]) / k)))
    return float(np.std(scores, ddof=1))


@contextmanager
def scratch_store(scratch: str | os.PathLike[str] | None) -> Iterator[Path | None]:
    """Yield the path of a new store in a fresh folder under ``scratch``, removed on exit.

    ``None`` yields ``None`` (capture into memory). The folder is made with
    :func:`tempfile.mkdtemp`, so nothing already in ``scratch`` is touched, and it is removed
    however the block is left (an interrupted scratch capture is not resumable).
    """
    if scratch is None:
        yield None
        return
    from factorlens.output import process_tag, remove_stale

    if not Path(scratch).is_dir():
        raise FactorlensError(f"scratch folder {scratch} does not exist; create it first")
    remove_stale(Path(scratch), SCRATCH_PREFIX)  # a killed run's capture, never removed
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{process_tag()}-", dir=scratch))
    try:
        yield folder / "store"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def capture_for_score(
    model: Any,
    data: Any,
    *,
    options: CaptureOptions | None = None,
    layers: list[str] | str | None = None,
    scan: bool = True,
    max_rank: int = _R.max_rank,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    store: str | os.PathLike[str] | None = None,
    select: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> ActivationStore:
    """Capture in one forward pass what the score (and the rank scan) needs.

    The pass records the input, the model's output (block ``OUTPUT_BLOCK``) and, when
    ``scan`` (the joint rank is scanned), ``layers`` (default: every representation layer),
    with the capture's settings ``options``. ``store=PATH`` captures to disk (e.g. a path from
    :func:`scratch_store`); in memory, layers too wide for the options' ``memory_budget`` are
    sketched for up to ``max_rank`` components (:func:`factorlens.sketched.capture_sketched`:
    two passes).
    """
    from factorlens.capture import capture
    from factorlens.sketched import capture_sketched

    where: dict[str, Any] = {
        "options": options,
        "preprocess": preprocess,
        "select": select,
        "meta": meta,
    }
    if not scan:  # the score needs no layer
        return capture(model, data, [], store=store, progress=False, output=OUTPUT_BLOCK, **where)
    if store is None:  # in memory: layers too wide to hold are sketched
        return capture_sketched(
            model, data, layers, rank=max_rank, progress=False, output=OUTPUT_BLOCK, **where
        )
    return capture(model, data, layers, store=store, progress=False, output=OUTPUT_BLOCK, **where)


def perturbed_outputs(
    model: Any,
    copies: Sequence[np.ndarray],
    options: CaptureOptions | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    select: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Return the model's outputs ``(N, K)`` on each perturbed copy of the inputs.

    The copies come from :func:`perturbations`; ``options`` (the capture's settings),
    ``preprocess`` and the element of a tuple or dict output that ``select`` names for
    :data:`OUTPUT_BLOCK` go to :func:`factorlens.capture.capture`.
    """
    from factorlens.capture import capture

    chosen = {k: v for k, v in (select or {}).items() if k == OUTPUT_BLOCK}
    return [
        model_outputs(
            capture(
                model,
                c,
                [],
                options=options,
                preprocess=preprocess,
                select=chosen,
                progress=False,
                output=OUTPUT_BLOCK,
                check_determinism=False,  # the checkpoint's own capture checks it, once
            )
        )
        for c in copies
    ]


def assess(
    model: Any,
    data: Any,
    *,
    layers: list[str] | str | None = None,
    max_rank: int = _R.max_rank,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    random_state: int = DEFAULT_SEED,
    checkpoint: str | None = None,
    scan: bool = True,
    scratch: str | os.PathLike[str] | None = _Q.scratch,
    capture_options: CaptureOptions | None = None,
    **settings: Any,
) -> QualityReport:
    """Capture ``model`` on ``data``, score it on its own and scan its joint rank.

    One forward pass over the inputs records the input, ``layers`` (default: every
    representation layer) and the model's own output, one more per perturbed copy records
    the output; then :func:`assess_store`.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier (its output gives K >= 2 class scores).
    data : ImageData or array-like
        The unlabelled (or labelled: for the reference accuracy only) inputs.
    layers : list of str or str, optional
        Layers for the rank scan (see :func:`factorlens.capture.select_layers`).
    max_rank : int
        The rank scan tries every R from 1 to ``max_rank``.
    preprocess : callable, optional
        Applied to each batch before the model.
    random_state : int
        Draws the perturbations and the scan.
    checkpoint : str, optional
        The checkpoint's name in the report.
    scan : bool
        Scan the joint rank (else ``rank`` is 0 and no layer is captured).
    scratch : str or os.PathLike, optional
        Capture into a temporary zarr store in this folder (removed before returning)
        instead of memory, so that the rank scan reads layers above the engine's memory
        budget from disk chunk by chunk.
    capture_options : CaptureOptions, optional
        The capture's settings (``batch_size``, ``device``, ...;
        :class:`~factorlens.options.CaptureOptions`).
    **settings
        Those fields as keywords (``batch_size=64``), which win over ``capture_options``.

    Returns
    -------
    QualityReport
        The single-checkpoint assessment.
    """
    options = capture_settings(capture_options, **settings)
    images = np.asarray(getattr(data, "images", data), dtype=np.float32)
    perturbed = perturbed_outputs(model, perturbations(images, random_state), options, preprocess)
    with scratch_store(scratch) as where:
        store = capture_for_score(
            model,
            data,
            options=options,
            layers=layers,
            scan=scan,
            max_rank=max_rank,
            preprocess=preprocess,
            store=where,
        )
        return assess_store(
            store,
            perturbed,
            max_rank=max_rank,
            random_state=random_state,
            checkpoint=checkpoint,
            scan=scan,
        )


def assess_store(
    store: ActivationStore,
    perturbed: Sequence[np.ndarray],
    *,
    max_rank: int = _R.max_rank,
    random_state: int = DEFAULT_SEED,
    checkpoint: str | None = None,
    scan: bool = True,
    progress: bool = False,
) -> QualityReport:
    """Score a store captured with ``output=OUTPUT_BLOCK`` and scan its joint rank.

    The rank scan covers its input and layers (the output block left out).

    ``perturbed`` — the model's outputs on each of :func:`perturbations` of the store's
    inputs (:func:`perturbed_outputs`) — and the output give the single-checkpoint score.
    Accuracy (for reference) comes from the store's labels, when it has them.
    """
    from factorlens.rank import estimate_rank

    outputs = model_outputs(store)
    score, stability, er = quality_score(outputs, perturbed)
    spread = score_spread(outputs, perturbed, random_state=random_state)
    degenerate = [OUTPUT_BLOCK] if float(np.ptp(outputs)) == 0.0 else []
    labels = store.labels
    accuracy = float(np.mean(outputs.argmax(axis=1) == labels)) if labels is not None else None
    blocks = {}
    if scan:  # the blocks as stored: the scan reads a store on disk chunk by chunk
        for name in store.names:
            if name == OUTPUT_BLOCK:
                continue
            arr = store.block(name)
            if is_constant(arr):
                degenerate.append(name)
            else:
                blocks[name] = arr
    rank, evidence = 0, None
    if scan and "input" in blocks:
        result = estimate_rank(blocks, max_rank, random_state=random_state, verbose=progress)
        rank, evidence = result.chosen, result.to_dict()
    return QualityReport(
        score=score,
        rank=rank,
        prediction_rank=er,
        stability=stability,
        score_sd=spread,
        n_outputs=int(outputs.shape[1]),
        n_inputs=int(outputs.shape[0]),
        checkpoint=checkpoint,
        accuracy=accuracy,
        degenerate=degenerate,
        rank_scan=evidence,
    )


def is_constant(array: Any) -> bool:
    """Return whether every entry of ``array`` (``(N, ...)``, numpy or a store block) is equal.

    A block on disk is read one chunk of rows at a time (its ``chunks``), never whole; a
    sketched layer answers from what it kept (:meth:`ReducedBlock.is_constant`).
    """
    from factorlens.factorize.reduced import ReducedBlock

    if isinstance(array, ReducedBlock):
        return array.is_constant()
    if in_memory(array):
        return array.size == 0 or float(np.ptp(array)) == 0.0
    first = None
    for _, part in row_chunks(array):
        if part.size == 0:
            continue
        first = part.flat[0] if first is None else first
        if np.any(part != first):
            return False
    return True


@small_pages()
def score_checkpoints(
    models: Sequence[Any],
    data: Any,
    *,
    mode: str = _Q.mode,
    names: Sequence[str] | None = None,
    random_state: int = DEFAULT_SEED,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    capture_options: CaptureOptions | None = None,
    **settings: Any,
) -> list[QualityReport]:
    """Score several checkpoints (built models) on the same ``data``; no rank scan.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        The checkpoints, built and loaded, all classifiers of the same task.
    data : ImageData or array-like
        The inputs every checkpoint is scored on.
    mode : str
        ``"auto"`` (the consensus from AUTO_CONSENSUS checkpoints on, else each on its own),
        ``"single"`` or ``"consensus"``.
    names : sequence of str, optional
        The checkpoints' names in the reports.
    random_state : int
        Draws the perturbations and the bootstrap.
    preprocess : callable, optional
        Applied to each batch before the model.
    capture_options : CaptureOptions, optional
        The capture's settings (``batch_size``, ``device``, ...).
    **settings
        Those fields as keywords, which win over ``capture_options``.

    Returns
    -------
    list of QualityReport
        One report per checkpoint, in the order given.
    """
    chosen = resolve_mode(mode, len(models))
    check("random_state", random_state, SEED)
    if names is not None and len(names) != len(models):
        raise FactorlensError(
            f"{len(models)} models but {len(names)} `names`; give one name per model"
        )
    reports, outputs = assess_checkpoints(
        models,
        data,
        names=names,
        random_state=random_state,
        preprocess=preprocess,
        options=capture_settings(capture_options, **settings),
    )
    return score_together(reports, outputs, chosen)


def assess_checkpoints(
    models: Sequence[Any],
    data: Any,
    *,
    names: Sequence[str] | None = None,
    random_state: int = DEFAULT_SEED,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    options: CaptureOptions | None = None,
) -> tuple[list[QualityReport], list[np.ndarray]]:
    """Score each checkpoint on its own and keep its ``(N, K)`` outputs; no rank scan.

    The two lists feed :func:`score_together`, once or for several subsets of the
    checkpoints; the parameters are :func:`score_checkpoints`' (``options`` the capture's
    settings).
    """
    images = np.asarray(getattr(data, "images", data), dtype=np.float32)
    copies = perturbations(images, random_state)
    reports, outputs = [], []
    for i, model in enumerate(models):
        store = capture_for_score(model, data, options=options, scan=False, preprocess=preprocess)
        perturbed = perturbed_outputs(model, copies, options, preprocess)
        name = None if names is None else names[i]
        reports.append(
            assess_store(store, perturbed, random_state=random_state, checkpoint=name, scan=False)
        )
        outputs.append(model_outputs(store))
    return reports, outputs


@small_pages()
def score_model(
    model: Any,
    data: Any,
    *,
    layers: list[str] | str | None = None,
    n_samples: int | None = None,
    random_state: int = DEFAULT_SEED,
    **kwargs: Any,
) -> QualityReport:
    """Run :func:`assess` on a random subset of ``n_samples`` inputs (all when None).

    Parameters
    ----------
    model : torch.nn.Module
        A classifier.
    data : ImageData or array-like
        The inputs; an ``ImageData`` is sub-sampled with ``random_state``.
    layers : list of str or str, optional
        Layers for the rank scan.
    n_samples : int, optional
        Score this many inputs drawn at random (all when None).
    random_state : int
        Draws the subset, the perturbations and the scan.
    **kwargs
        Further options of :func:`assess`.

    Returns
    -------
    QualityReport
        The single-checkpoint assessment.
    """
    check("random_state", random_state, SEED)
    if n_samples is not None:
        check("n_samples", n_samples, COUNT)
    if n_samples is not None and hasattr(data, "subset"):
        data = data.subset(n_samples, random_state=random_state)
    return assess(model, data, layers=layers, random_state=random_state, **kwargs)


def model_outputs(store: ActivationStore) -> np.ndarray:
    """Return the ``(N, K)`` model outputs of a store captured with ``output=OUTPUT_BLOCK``."""
    if OUTPUT_BLOCK not in store.names:
        raise FactorlensError(
            f"the store has no {OUTPUT_BLOCK!r} block; capture it with output={OUTPUT_BLOCK!r}"
        )
    outputs = np.asarray(store.block(OUTPUT_BLOCK)[:])
    return outputs.reshape(outputs.shape[0], -1)


def resolve_mode(mode: str, n_checkpoints: int) -> str:
    """Resolve a scoring mode for ``n_checkpoints`` checkpoints.

    ``"auto"`` -> ``"consensus"`` for at least AUTO_CONSENSUS checkpoints, else ``"single"``;
    an explicit mode is checked against the number of checkpoints.
    """
    check_fields(QualityOptions, {"mode": mode})  # the rule the CLI's --mode is read by
    if mode == "auto":
        return "consensus" if n_checkpoints >= AUTO_CONSENSUS else "single"
    if mode == "consensus" and n_checkpoints < MIN_CONSENSUS:
        raise FactorlensError(
            f"the consensus mode scores checkpoints against each other and needs at least "
            f"{MIN_CONSENSUS}, got {n_checkpoints}; give more checkpoints or use mode single"
        )
    return mode


def score_together(
    reports: Sequence[QualityReport], outputs: Sequence[np.ndarray], mode: str = _Q.mode
) -> list[QualityReport]:
    """Score checkpoints that answered the same inputs in ``mode`` (auto, single, consensus).

    ``reports[i]`` (from :func:`assess_store`) and ``outputs[i]`` ``(N, K)`` belong to one
    checkpoint. In the consensus mode every report's ``score`` becomes its estimated accuracy
    under a one-coin Dawid–Skene model of all the checkpoints' predicted classes
    (:func:`factorlens.consensus.consensus_accuracy`), ``score_sd`` its bootstrap spread over
    the inputs; the single-checkpoint score stays in ``single_score``. Returns new reports.

    Near-identical checkpoints (:func:`factorlens.consensus.copy_groups`) vote as one; when
    that leaves fewer independent voters than the mode needs (``auto``: AUTO_CONSENSUS,
    ``consensus``: MIN_CONSENSUS), each checkpoint is scored on its own instead, with a
    warning. A consensus is also flagged when most checkpoints look poor (median estimated
    accuracy below POOR_MEDIAN), or when the checkpoint it puts first has a single score
    clearly below the best single score (by CLEAR_SDS combined sds and at least
    MATERIAL_SINGLE): both are what a set dominated by checkpoints that share their mistakes
    looks like.
    """
    from dataclasses import replace

    from factorlens.consensus import consensus_accuracy, copy_groups

    if len(reports) != len(outputs):
        raise FactorlensError(f"{len(reports)} reports but {len(outputs)} outputs; give one each")
    chosen = resolve_mode(mode, len(reports))
    singles = [
        replace(r, mode="single", single_score=r.score, single_score_sd=r.score_sd) for r in reports
    ]
    if len(reports) < 2:
        return singles
    checked = [_check_outputs(o) for o in outputs]
    shapes = {o.shape for o in checked}
    if len(shapes) != 1:
        if chosen == "single":  # on its own, each answers its own task
            return singles
        raise FactorlensError(
            f"the checkpoints' outputs have different shapes {sorted(shapes)}; score "
            "checkpoints of one task on the same inputs together"
        )
    pred = np.stack([o.argmax(axis=1) for o in checked])
    group = copy_groups(pred)
    names = [r.checkpoint or f"checkpoint {i + 1}" for i, r in enumerate(reports)]
    copies = [[names[i] for i in np.flatnonzero(group == g)] for g in range(group.max() + 1)]
    copies = [c for c in copies if len(c) > 1]
    voters = int(group.max()) + 1
    needed = AUTO_CONSENSUS if mode == "auto" else MIN_CONSENSUS
    if chosen == "consensus" and voters < needed:  # copies left too few voters
        n_copied = sum(len(c) for c in copies)
        warned = [
            f"{n_copied} checkpoints give near-identical answers and count as {len(copies)}; "
            f"{voters} independent voters are too few for the consensus (it needs {needed}): "
            "each checkpoint is scored on its own"
        ]
        return [replace(r, warnings=warned, copies=copies) for r in singles]
    if chosen == "single":
        return [replace(r, copies=copies) for r in singles]
    weights = 1.0 / np.bincount(group)[group]
    fit = consensus_accuracy(pred, checked[0].shape[1], weights=weights)
    sd = fit.spread()
    warned = _consensus_doubts(fit.accuracy, singles, names, group)
    return [
        replace(
            r,
            mode="consensus",
            score=float(a),
            score_sd=float(e),
            estimated_accuracy=float(a),
            warnings=list(warned),
            copies=copies,
        )
        for r, a, e in zip(singles, fit.accuracy, sd, strict=True)
    ]


def _consensus_doubts(
    estimated: np.ndarray, singles: Sequence[QualityReport], names: Sequence[str], group: np.ndarray
) -> list[str]:
    """Return the warnings of a consensus that may follow shared mistakes (one line each).

    ``estimated`` (M,) consensus accuracies, ``singles`` the M single-checkpoint reports,
    ``group`` (M,) copy groups (each group counts once in the median).
    """
    out = []
    per_voter = np.array([estimated[group == g].mean() for g in range(group.max() + 1)])
    median = float(np.median(per_voter))
    if median < POOR_MEDIAN:
        out.append(
            f"most checkpoints look poor (median estimated accuracy {median:.2f}): the "
            "consensus may follow their shared mistakes; compare the single scores"
        )
    score = np.array([r.score for r in singles])
    sd = np.array([r.score_sd for r in singles])
    alone, top = int(np.argmax(score)), int(np.argmax(estimated))
    margin = score[alone] - score[top]
    clear = margin > max(CLEAR_SDS * np.hypot(sd[alone], sd[top]), MATERIAL_SINGLE)
    if group[alone] != group[top] and clear:
        out.append(
            f"the consensus puts {names[top]} first, but {names[alone]} has the clearly "
            f"better single score ({score[alone]:.3f} against {score[top]:.3f}): checkpoints "
            "that share mistakes (snapshots of one run) may have outvoted it"
        )
    return out
