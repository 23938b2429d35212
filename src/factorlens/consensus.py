"""Label-free accuracy of several checkpoints scored on the same inputs, from their agreement.

The checkpoints' predicted classes ``(M, N)`` are treated as M annotators labelling the same N
inputs, and a Dawid–Skene model (Dawid & Skene 1979) in its one-coin form is fitted by EM:
every checkpoint ``m`` gives the true class with probability ``p_m`` and otherwise one of the
``K − 1`` others uniformly; the true classes are hidden. EM alternates

* E-step: the posterior of each input's class, ``q[n, k] ∝ Π_m (p_m if pred_m[n] = k
  else (1 − p_m) / (K − 1))`` (a uniform prior over the K classes);
* M-step: ``p_m = mean_n q[n, pred_m[n]]`` (how often checkpoint m says what the weighted
  consensus believes), at most ``Σ_k min(f_mk, 1/K)`` with ``f_mk`` the share of inputs it
  puts in class k (with balanced classes no checkpoint can be right more often),

starting from the plain majority vote. ``p_m`` is the **estimated accuracy** of checkpoint m:
a checkpoint that agrees with the reliable majority gains weight in the consensus, one that
answers at random or always the same class loses it (its ``p_m`` falls towards ``1 / K`` or
the share of its one class). No label is read.

Why the class prior is held uniform and each ``p_m`` has a ceiling: with few checkpoints that
mostly disagree, the plain model has a degenerate fixed point in which the checkpoint with
the least varied answers (an untrained one that says one or two classes) is "always right"
and the others always wrong (seen with 3 DigitsCNN checkpoints: the untrained one got 1.00,
the trained one 0.00). Balanced classes rule that out: a checkpoint that says two classes can
be right on at most 2/K of the inputs. The cost: a test set whose classes are far from
balanced is pulled towards balance, and its checkpoints' estimates are capped too low.

Assumptions, and where it fails: the checkpoints' errors are treated as independent given the
true class. Checkpoints that share systematic mistakes (one run at neighbouring steps, the same
hard inputs) pull the consensus towards those mistakes, and a set dominated by bad checkpoints
that agree with one another makes their answer the consensus. Class names count: a checkpoint
that renames the classes disagrees with the others.

**Copies** (:func:`copy_groups`): two checkpoints that give the same answer on at least
``COPY_AGREEMENT`` (99 %) of the inputs are near-identical — the same file under two names, or
snapshots that no longer change. Independent models of accuracy ``p`` agree on about
``p² + (1 − p)² / (K − 1)`` of the inputs, so 99 % agreement arises between independent models
only when both are above about 99.5 % accurate. Each group of near-identical checkpoints
votes as one (``weights`` of ``1 / group size``), so four copies of a poor checkpoint no longer
outvote one good one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from factorlens.errors import FactorlensError
from factorlens.options import DEFAULT_SEED

__all__ = ["COPY_AGREEMENT", "ConsensusFit", "consensus_accuracy", "copy_groups"]

#: share of inputs on which two checkpoints give the same answer from which they count as one
COPY_AGREEMENT = 0.99
#: EM iterations at most, and the change in every p_m below which it stops
N_ITER = 200
TOL = 1e-9
_EPS = 1e-6


@dataclass
class ConsensusFit:
    """A one-coin Dawid–Skene fit to ``M`` checkpoints' predictions on ``N`` inputs.

    Attributes
    ----------
    accuracy : (M,) estimated accuracy ``p_m`` of each checkpoint, in [0, 1].
    posterior : (N, K) posterior class probabilities of each input under the consensus.
    prior : (K,) the consensus' class frequencies (mean posterior).
    agreement : (M, N) ``posterior[n, pred_m[n]]``: the per-input terms whose mean is
        ``accuracy`` (for bootstrap spreads).
    n_iter : EM iterations run; ``converged`` whether the last change was below TOL.
    """

    accuracy: np.ndarray
    posterior: np.ndarray
    prior: np.ndarray
    agreement: np.ndarray
    n_iter: int
    converged: bool

    def spread(self, n_boot: int = 200, random_state: int = DEFAULT_SEED) -> np.ndarray:
        """Return the ``(M,)`` bootstrap standard deviation of each ``accuracy``.

        The inputs are resampled, the consensus kept fixed: estimates closer than a few of
        these are not told apart.
        """
        rng = np.random.default_rng(random_state)
        n = self.agreement.shape[1]
        draws = np.empty((int(n_boot), self.agreement.shape[0]))
        for b in range(int(n_boot)):
            draws[b] = self.agreement[:, rng.integers(0, n, n)].mean(axis=1)
        return draws.std(axis=0, ddof=1)


def _check_predictions(predictions: np.ndarray, n_classes: int) -> np.ndarray:
    pred = np.asarray(predictions)
    if pred.ndim != 2 or pred.shape[0] < 2 or pred.shape[1] < 1:
        raise FactorlensError(
            f"predictions have shape {pred.shape}; the consensus needs (M, N) predicted classes "
            "of at least 2 checkpoints on the same N >= 1 inputs"
        )
    if not np.issubdtype(pred.dtype, np.integer):
        raise FactorlensError("predictions must be integer class indices (the argmax of outputs)")
    if n_classes < 2:
        raise FactorlensError(f"the consensus needs K >= 2 classes, got {n_classes}")
    if pred.min() < 0 or pred.max() >= n_classes:
        raise FactorlensError(
            f"predicted classes lie in [{pred.min()}, {pred.max()}], outside 0..{n_classes - 1}"
        )
    return pred.astype(np.int64)


def copy_groups(predictions: np.ndarray, threshold: float = COPY_AGREEMENT) -> np.ndarray:
    """Return ``(M,)`` group numbers: checkpoints joined by agreeing on >= ``threshold``.

    ``predictions`` ``(M, N)`` predicted classes. Two checkpoints whose answers are the same on
    at least ``threshold`` of the inputs share a group, and so do chains of them (single
    linkage). Groups are numbered 0, 1, … in the order of their first checkpoint.
    """
    pred = np.asarray(predictions)
    m = pred.shape[0]
    group = np.arange(m)
    for i in range(m):
        for j in range(i + 1, m):
            if np.mean(pred[i] == pred[j]) >= threshold and group[j] != group[i]:
                group[group == group[j]] = group[i]
    _, first, numbered = np.unique(group, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber by first appearance
    return order[numbered]


def consensus_accuracy(
    predictions: np.ndarray,
    n_classes: int,
    *,
    weights: np.ndarray | None = None,
    n_iter: int = N_ITER,
    tol: float = TOL,
) -> ConsensusFit:
    """Fit the one-coin Dawid–Skene model to the checkpoints' predicted classes.

    See the module docstring. Deterministic (no random start).

    Parameters
    ----------
    predictions : numpy.ndarray
        Predicted classes ``(M, N)``: M checkpoints on the same N inputs.
    n_classes : int
        The number of classes K.
    weights : numpy.ndarray, optional
        ``(M,)`` each checkpoint's vote in the consensus (default 1 each); ``1 / size`` of its
        :func:`copy_groups` group makes near-identical checkpoints one voter.
    n_iter : int
        At most this many EM iterations.
    tol : float
        Stop once no estimated accuracy ``p_m`` changes by more than this.

    Returns
    -------
    ConsensusFit
        Each checkpoint's estimated accuracy, the posterior and the class frequencies.
    """
    pred = _check_predictions(predictions, int(n_classes))
    m, n = pred.shape
    k = int(n_classes)
    vote = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if vote.shape != (m,) or not np.all(np.isfinite(vote)) or np.any(vote <= 0):
        raise FactorlensError(f"weights must be {m} positive numbers, one per checkpoint")
    rows = np.arange(n)
    # with balanced classes a checkpoint is right at most on the share of inputs that its
    # answers can cover: sum_k min(its share of answers k, 1/K)
    share = np.stack([np.bincount(p, minlength=k) / n for p in pred])
    ceiling = np.clip(np.minimum(share, 1.0 / k).sum(axis=1), _EPS, 1.0 - _EPS)
    post = np.zeros((n, k))
    for mm in range(m):  # start: the plain majority vote, as soft labels
        np.add.at(post, (rows, pred[mm]), vote[mm])
    post /= post.sum(axis=1, keepdims=True)
    acc = np.full(m, np.nan)
    converged = False
    n_done = 0
    while n_done < int(n_iter):
        n_done += 1
        agree = post[rows[None, :], pred]  # (M, N)
        new_acc = np.clip(agree.mean(axis=1), _EPS, ceiling)
        # E-step in logs: every checkpoint adds log((1-p)/(K-1)) to every class (a constant,
        # left out) and the difference log(p) - log((1-p)/(K-1)) to the class it predicted
        log_post = np.zeros((n, k))
        gain = vote * (np.log(new_acc) - np.log((1.0 - new_acc) / (k - 1)))
        for mm in range(m):
            log_post[rows, pred[mm]] += gain[mm]
        log_post -= log_post.max(axis=1, keepdims=True)
        post = np.exp(log_post)
        post /= post.sum(axis=1, keepdims=True)
        change = np.inf if np.isnan(acc).any() else float(np.max(np.abs(new_acc - acc)))
        acc = new_acc
        if change < tol:
            converged = True
            break
    agree = post[rows[None, :], pred]
    return ConsensusFit(
        accuracy=agree.mean(axis=1),
        posterior=post,
        prior=post.mean(axis=0),
        agreement=agree,
        n_iter=n_done,
        converged=converged,
    )
