"""Training quality without labels: a score per checkpoint, with the joint rank beside it.

**Score (fixed recipe, higher = better trained)**::

    score = agreement × sqrt(prediction_rank / K)

* ``agreement`` — do the network's answers respect the structure of its own inputs? The input
  block is embedded in its leading principal components (the truncated SVD of the centred
  inputs that keeps 90 % of their energy) and every input's 10 nearest neighbours there are
  found. ``agreement`` is Cohen's κ between each input's predicted class and its neighbours'
  predicted classes: the observed share of agreeing pairs, corrected by the share expected by
  chance from the predicted class frequencies, ``(p_agree − p_chance) / (1 − p_chance)``. It
  is 0 for answers that ignore the inputs' neighbourhoods (or never vary) and 1 when
  neighbours always get the same answer. A net that learnt from too few or wrong labels cuts
  through the inputs' natural clusters and agrees less.
* ``prediction_rank`` — the effective rank (Roy & Vetterli 2007) of the ``N×K`` predicted
  class probabilities (the softmax of the model's output, or the output itself when it already
  is probabilities), in ``[1, K]``: ≈ 1 when every input gets the same answer, ≈ K when the
  inputs are sorted into K confident, distinct answers. It keeps a coarse but consistent answer
  (two classes for ten digits) from scoring high.

The score reads no label and no training data; it lies in ``[-1, 1]`` (0 when every input
gets the same answer). In the benchmark, untrained checkpoints score 0–0.13 and the fully
trained ones with test accuracy ≥ 0.96 score 0.81–0.88: compare checkpoints scored on the same
inputs, not scores across data sets. Neighbourhoods get denser, and the score resolves close
checkpoints better, with more inputs: use a few thousand (see the README for measurements).

**Spread**: ``score_sd`` is the bootstrap standard deviation of the score over resamples of the
inputs (:func:`score_spread`); checkpoints whose scores differ by less are not told apart.

**Rank**: the rank of the joint factorization of the input and the chosen layers, chosen by
:func:`factorlens.rank.estimate_rank` (split-half stability and bi-cross-validation), reported
beside the score as the factorization's own evidence. On the zoos (benchmarks/bench_quality.py)
the joint rank, the joint CMTF's per-block fits and strength spectra do *not* track accuracy
across training steps, label noise and training-set size; the score does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factorlens.baselines import effective_rank
from factorlens.errors import FactorlensError

#: neighbours per input for the agreement
N_NEIGHBOURS = 10
#: share of the centred inputs' energy kept by the principal-component embedding
INPUT_ENERGY = 0.9
#: at most this many principal components (found by randomized SVD above it)
MAX_COMPONENTS = 128
#: bootstrap resamples of the inputs for the score's spread
N_BOOTSTRAP = 200
#: the name under which assess() captures the model's own output
OUTPUT_BLOCK = "model output"


#: the scoring modes: one checkpoint on its own, or several checkpoints together
MODES = ("single", "consensus")
#: fewest checkpoints the consensus mode takes (with two, neither can outvote the other)
MIN_CONSENSUS = 3


@dataclass
class QualityReport:
    """One checkpoint's label-free assessment.

    ``score`` and ``score_sd`` are those of ``mode``: ``"single"`` (``single_score``, from this
    checkpoint alone) or ``"consensus"`` (``estimated_accuracy``, from its agreement with the
    other checkpoints scored on the same inputs, :func:`score_together`).
    """

    score: float
    rank: int
    prediction_rank: float
    agreement: float
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

    def to_dict(self) -> dict[str, Any]:
        out = {
            "checkpoint": self.checkpoint,
            "rank": int(self.rank),
            "mode": self.mode,
            "score": float(self.score),
            "score_sd": float(self.score_sd),
            "single_score": float(self.score if self.single_score is None else self.single_score),
            "single_score_sd": float(
                self.score_sd if self.single_score_sd is None else self.single_score_sd
            ),
            "agreement": float(self.agreement),
            "prediction_rank": float(self.prediction_rank),
            "n_outputs": int(self.n_outputs),
            "n_inputs": int(self.n_inputs),
            "degenerate_blocks": self.degenerate,
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
    """``(N, K)`` class probabilities from a model's outputs: the outputs themselves when every
    row already is a probability vector (a model ending in softmax), else their softmax (logits
    or log-probabilities)."""
    out = np.asarray(_check_outputs(outputs), dtype=np.float64)
    if out.min() >= 0.0 and np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        return out
    return softmax(out)


def prediction_rank(outputs: np.ndarray) -> float:
    """Effective rank of the model's class probabilities ``(N, K)``, in ``[1, K]``."""
    return effective_rank(class_probabilities(outputs))


def input_embedding(inputs: Any, energy: float = INPUT_ENERGY) -> np.ndarray:
    """``(N, r)`` principal-component scores of the centred inputs ``(N, ...)``, with ``r`` the
    fewest components that keep ``energy`` of their squared norm (at most MAX_COMPONENTS)."""
    x = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    if x.shape[0] < 2:
        raise FactorlensError("the quality score needs at least 2 inputs; give more samples")
    x = x - x.mean(axis=0)
    total = float(np.einsum("ij,ij->", x, x))
    if total == 0.0:
        raise FactorlensError(
            "every input is identical, so they have no neighbourhoods to agree with; give "
            "varied inputs"
        )
    if min(x.shape) <= MAX_COMPONENTS:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
    else:
        from sklearn.utils.extmath import randomized_svd

        u, s, _ = randomized_svd(x, MAX_COMPONENTS, random_state=0)
    kept = np.cumsum(s**2) / total
    r = min(int(np.searchsorted(kept, energy)) + 1, s.size)
    return u[:, :r] * s[:r]


def input_neighbours(inputs: Any, k: int = N_NEIGHBOURS) -> np.ndarray:
    """``(N, k')`` indices of each input's nearest neighbours (itself excluded) in its
    principal-component embedding; ``k' = min(k, N − 1)``."""
    from sklearn.neighbors import NearestNeighbors

    emb = input_embedding(inputs)
    k = min(int(k), emb.shape[0] - 1)
    found = NearestNeighbors(n_neighbors=k + 1).fit(emb).kneighbors(emb, return_distance=False)
    is_self = found == np.arange(emb.shape[0])[:, None]
    # an input with exact duplicates may not be listed first, or at all: then drop the farthest
    is_self[~is_self.any(axis=1), -1] = True
    return found[~is_self].reshape(emb.shape[0], k)


def neighbour_agreement(predicted: np.ndarray, neighbours: np.ndarray, n_classes: int) -> float:
    """Cohen's κ between each input's predicted class ``(N,)`` and its ``neighbours``' ``(N, k)``
    predicted classes, chance taken from the predicted class frequencies. 0 when every input
    gets the same class."""
    pred = np.asarray(predicted)
    return _kappa(float(np.mean(pred[neighbours] == pred[:, None])), pred, n_classes)


def _kappa(observed: float, predicted: np.ndarray, n_classes: int) -> float:
    """κ of an observed agreement share, chance from the classes ``predicted`` ``(N,)``."""
    freq = np.bincount(predicted, minlength=n_classes) / predicted.size
    chance = float(freq @ freq)
    if chance >= 1.0:
        return 0.0
    return (observed - chance) / (1.0 - chance)


def quality_score(outputs: np.ndarray, neighbours: np.ndarray) -> tuple[float, float, float]:
    """``(score, agreement, prediction_rank)`` from the model's outputs ``(N, K)`` and the
    inputs' neighbour indices ``(N, k)`` (:func:`input_neighbours`)."""
    out = _check_outputs(outputs)
    if neighbours.shape[0] != out.shape[0]:
        raise FactorlensError(
            f"neighbours are given for {neighbours.shape[0]} inputs but the model answered "
            f"{out.shape[0]}; compute them from the same inputs"
        )
    k = out.shape[1]
    er = prediction_rank(out)
    agreement = neighbour_agreement(out.argmax(axis=1), neighbours, k)
    return agreement * float(np.sqrt(er / k)), agreement, er


def score_spread(
    outputs: np.ndarray, neighbours: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0
) -> float:
    """Bootstrap standard deviation of the score over ``n_boot`` resamples of the inputs (each
    keeps its neighbour list): how far the score moves on another draw of similar inputs.
    Scores of two checkpoints on the same inputs that differ by less are not told apart."""
    out = _check_outputs(outputs)
    probs = class_probabilities(out)
    k = out.shape[1]
    pred = out.argmax(axis=1)
    same = np.mean(pred[neighbours] == pred[:, None], axis=1)  # (N,) agreeing share per input
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(int(n_boot)):
        rows = rng.integers(0, pred.size, pred.size)
        kappa = _kappa(float(same[rows].mean()), pred[rows], k)
        scores.append(kappa * float(np.sqrt(effective_rank(probs[rows]) / k)))
    return float(np.std(scores, ddof=1))


def capture_for_score(
    model: Any, data: Any, *, layers: list[str] | str | None = None, scan: bool = True, **options
) -> Any:
    """One forward pass that records the input, the model's output (block ``OUTPUT_BLOCK``)
    and, when ``scan`` (the joint rank is scanned), ``layers`` (default: every representation
    layer); ``options`` go to :func:`factorlens.capture.capture`."""
    from factorlens.capture import capture, select_layers

    chosen = select_layers(model, layers) if scan else []  # the score needs no layer
    return capture(model, data, chosen, progress=False, output=OUTPUT_BLOCK, **options)


def assess(
    model: Any,
    data: Any,
    *,
    layers: list[str] | str | None = None,
    max_rank: int = 10,
    preprocess: Any = None,
    batch_size: int = 256,
    device: str = "cpu",
    seed: int = 0,
    checkpoint: str | None = None,
    scan: bool = True,
    neighbours: np.ndarray | None = None,
) -> QualityReport:
    """Capture ``model`` on ``data`` (``ImageData`` or array), score it and scan its joint rank.

    One forward pass over the inputs records the input, ``layers`` (default: every
    representation layer) and the model's own output; then :func:`assess_store`.
    """
    store = capture_for_score(
        model,
        data,
        layers=layers,
        scan=scan,
        batch_size=batch_size,
        device=device,
        preprocess=preprocess,
    )
    return assess_store(
        store,
        max_rank=max_rank,
        seed=seed,
        checkpoint=checkpoint,
        scan=scan,
        neighbours=neighbours,
    )


def assess_store(
    store: Any,
    *,
    max_rank: int = 10,
    seed: int = 0,
    checkpoint: str | None = None,
    scan: bool = True,
    neighbours: np.ndarray | None = None,
    progress: bool = False,
) -> QualityReport:
    """Score a store captured with ``output=OUTPUT_BLOCK`` and scan the joint rank of its
    input and layers (the output block left out).

    The output and the input give the score. ``neighbours`` — :func:`input_neighbours` of the
    same inputs — saves recomputing them when several checkpoints share the inputs. Accuracy
    (for reference) comes from the store's labels, when it has them.
    """
    from factorlens.rank import estimate_rank

    if OUTPUT_BLOCK not in store.names:
        raise FactorlensError(
            f"the store has no {OUTPUT_BLOCK!r} block; capture it with output={OUTPUT_BLOCK!r}"
        )
    outputs = np.asarray(store.block(OUTPUT_BLOCK)[:])
    outputs = outputs.reshape(outputs.shape[0], -1)
    inputs = np.asarray(store.block("input")[:], dtype=np.float32)
    if neighbours is None:
        neighbours = input_neighbours(inputs)
    score, agreement, er = quality_score(outputs, neighbours)
    spread = score_spread(outputs, neighbours, seed=seed)
    degenerate = [OUTPUT_BLOCK] if float(np.ptp(outputs)) == 0.0 else []
    labels = store.labels
    accuracy = float(np.mean(outputs.argmax(axis=1) == labels)) if labels is not None else None
    blocks = {}
    for name in store.names:
        if name == OUTPUT_BLOCK:
            continue
        arr = inputs if name == "input" else np.asarray(store.block(name)[:], dtype=np.float32)
        if float(np.ptp(arr)) == 0.0:
            degenerate.append(name)
        else:
            blocks[name] = arr
    rank, evidence = 0, None
    if scan and "input" in blocks:
        result = estimate_rank(blocks, max_rank, random_state=seed, progress=progress)
        rank, evidence = result.chosen, result.to_dict()
    return QualityReport(
        score=score,
        rank=rank,
        prediction_rank=er,
        agreement=agreement,
        score_sd=spread,
        n_outputs=int(outputs.shape[1]),
        n_inputs=int(outputs.shape[0]),
        checkpoint=checkpoint,
        accuracy=accuracy,
        degenerate=degenerate,
        rank_scan=evidence,
    )


def score_model(
    model: Any,
    data: Any,
    *,
    layers: list[str] | str | None = None,
    n_samples: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> QualityReport:
    """:func:`assess` on a random subset of ``n_samples`` inputs (all when None)."""
    if n_samples is not None and hasattr(data, "subset"):
        data = data.subset(n_samples, seed=seed)
    return assess(model, data, layers=layers, seed=seed, **kwargs)


def model_outputs(store: Any) -> np.ndarray:
    """The ``(N, K)`` model outputs of a store captured with ``output=OUTPUT_BLOCK``."""
    if OUTPUT_BLOCK not in store.names:
        raise FactorlensError(
            f"the store has no {OUTPUT_BLOCK!r} block; capture it with output={OUTPUT_BLOCK!r}"
        )
    outputs = np.asarray(store.block(OUTPUT_BLOCK)[:])
    return outputs.reshape(outputs.shape[0], -1)


def resolve_mode(mode: str, n_checkpoints: int) -> str:
    """``"auto"`` -> ``"consensus"`` for at least MIN_CONSENSUS checkpoints, else ``"single"``;
    an explicit mode is checked against the number of checkpoints."""
    if mode == "auto":
        return "consensus" if n_checkpoints >= MIN_CONSENSUS else "single"
    if mode not in MODES:
        raise FactorlensError(f"unknown quality mode {mode!r}; use auto, single or consensus")
    if mode == "consensus" and n_checkpoints < MIN_CONSENSUS:
        raise FactorlensError(
            f"the consensus mode scores checkpoints against each other and needs at least "
            f"{MIN_CONSENSUS}, got {n_checkpoints}; give more checkpoints or use mode single"
        )
    return mode


def score_together(
    reports: Sequence[QualityReport], outputs: Sequence[np.ndarray], mode: str = "auto"
) -> list[QualityReport]:
    """Score checkpoints that answered the same inputs in ``mode`` (auto, single, consensus).

    ``reports[i]`` (from :func:`assess_store`) and ``outputs[i]`` ``(N, K)`` belong to one
    checkpoint. In the consensus mode every report's ``score`` becomes its estimated accuracy
    under a one-coin Dawid–Skene model of all the checkpoints' predicted classes
    (:func:`factorlens.consensus.consensus_accuracy`), ``score_sd`` its bootstrap spread over
    the inputs; the single-checkpoint score stays in ``single_score``. Returns new reports.
    """
    from dataclasses import replace

    from factorlens.consensus import consensus_accuracy

    if len(reports) != len(outputs):
        raise FactorlensError(f"{len(reports)} reports but {len(outputs)} outputs; give one each")
    chosen = resolve_mode(mode, len(reports))
    singles = [
        replace(r, mode="single", single_score=r.score, single_score_sd=r.score_sd) for r in reports
    ]
    if chosen == "single":
        return singles
    checked = [_check_outputs(o) for o in outputs]
    shapes = {o.shape for o in checked}
    if len(shapes) != 1:
        raise FactorlensError(
            f"the checkpoints' outputs have different shapes {sorted(shapes)}; score "
            "checkpoints of one task on the same inputs together"
        )
    k = checked[0].shape[1]
    fit = consensus_accuracy(np.stack([o.argmax(axis=1) for o in checked]), k)
    sd = fit.spread()
    return [
        replace(
            r,
            mode="consensus",
            score=float(a),
            score_sd=float(e),
            estimated_accuracy=float(a),
        )
        for r, a, e in zip(singles, fit.accuracy, sd, strict=True)
    ]
