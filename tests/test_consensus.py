"""The several-checkpoint mode: a one-coin Dawid–Skene consensus of the checkpoints' answers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factorlens.consensus import consensus_accuracy
from factorlens.errors import FactorlensError
from factorlens.quality import QualityReport, resolve_mode, score_together


def _annotators(accuracies, n=3000, k=10, seed=0):
    """Predictions of checkpoints with the given accuracies, errors independent and uniform."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    preds = []
    for a in accuracies:
        wrong = rng.random(n) >= a
        other = (truth + rng.integers(1, k, n)) % k
        preds.append(np.where(wrong, other, truth))
    return np.stack(preds), truth


def test_recovers_planted_accuracies_without_labels() -> None:
    planted = [0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1]
    preds, _ = _annotators(planted)
    fit = consensus_accuracy(preds, 10)
    assert fit.converged
    assert np.allclose(fit.accuracy, planted, atol=0.025)
    assert np.all(np.diff(fit.accuracy) < 0)
    sd = fit.spread(n_boot=50)
    assert sd.shape == (7,) and (sd > 0).all() and (sd < 0.02).all()


def test_a_constant_answer_gets_the_share_of_its_class() -> None:
    preds, truth = _annotators([0.9, 0.85, 0.8])
    constant = np.full((1, preds.shape[1]), 4)
    fit = consensus_accuracy(np.vstack([preds, constant]), 10)
    assert fit.accuracy[3] == pytest.approx(np.mean(truth == 4), abs=0.02)


def test_bad_predictions_are_refused() -> None:
    with pytest.raises(FactorlensError, match="at least 2 checkpoints"):
        consensus_accuracy(np.zeros((1, 5), dtype=int), 3)
    with pytest.raises(FactorlensError, match=r"outside 0\.\.2"):
        consensus_accuracy(np.array([[0, 3], [1, 2]]), 3)
    with pytest.raises(FactorlensError, match="integer class indices"):
        consensus_accuracy(np.zeros((2, 5)), 3)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 6),
    n=st.integers(1, 40),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_estimates_are_probabilities(m: int, n: int, k: int, seed: int) -> None:
    preds = np.random.default_rng(seed).integers(0, k, (m, n))
    fit = consensus_accuracy(preds, k)
    assert ((fit.accuracy >= 0) & (fit.accuracy <= 1)).all()
    assert np.allclose(fit.posterior.sum(axis=1), 1.0)


def _report(score: float) -> QualityReport:
    return QualityReport(
        score=score,
        rank=0,
        prediction_rank=1.0,
        stability=0.0,
        score_sd=0.01,
        n_outputs=10,
        n_inputs=3000,
    )


def test_score_together_switches_mode_by_the_number_of_checkpoints() -> None:
    preds, _ = _annotators([0.95, 0.7, 0.3, 0.6, 0.5])
    outputs = [np.eye(10)[p] for p in preds]
    reports = [_report(s) for s in (0.1, 0.2, 0.3, 0.4, 0.5)]
    together = score_together(reports, outputs)
    assert [r.mode for r in together] == ["consensus"] * 5
    assert [r.single_score for r in together] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert together[0].score > together[1].score > together[3].score > together[2].score
    assert together[0].to_dict()["estimated_accuracy"] == together[0].score
    alone = score_together(reports, outputs, mode="single")
    assert [r.score for r in alone] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert resolve_mode("auto", 4) == "single" and resolve_mode("auto", 5) == "consensus"
    with pytest.raises(FactorlensError, match="needs at least 3, got 2"):
        resolve_mode("consensus", 2)


def _shared_mistakes(truth: np.ndarray, accuracies, k: int = 10, seed: int = 1) -> np.ndarray:
    """Poor checkpoints that, where wrong, mostly give the same wrong class (truth + 1)."""
    rng = np.random.default_rng(seed)
    preds = []
    for a in accuracies:
        wrong = rng.random(truth.size) >= a
        same = rng.random(truth.size) < 0.8
        other = np.where(same, (truth + 1) % k, (truth + rng.integers(1, k, truth.size)) % k)
        preds.append(np.where(wrong, other, truth))
    return np.stack(preds)


def test_copies_are_grouped_and_independent_checkpoints_are_not() -> None:
    from factorlens.consensus import copy_groups

    preds, _ = _annotators([0.9, 0.9, 0.6])
    copied = np.vstack([preds, preds[2], preds[2]])
    assert copy_groups(copied).tolist() == [0, 1, 2, 2, 2]
    near = copied.copy()
    near[4, :20] = (near[4, :20] + 1) % 10  # 20 of 3000 answers changed: still near-identical
    assert copy_groups(near).tolist() == [0, 1, 2, 2, 2]


def test_copies_of_a_poor_checkpoint_do_not_outvote_a_good_one() -> None:
    preds, _ = _annotators([0.95, 0.6])
    copies = np.vstack([preds[0], *[preds[1]] * 4])  # good + the same poor file 4 times
    plain = consensus_accuracy(copies, 10)  # the failure this guards against
    assert plain.accuracy[0] < plain.accuracy[1] and plain.accuracy[1] > 0.95
    outputs = [np.eye(10)[p] for p in copies]
    reports = [_report(s) for s in (0.9, 0.5, 0.5, 0.5, 0.5)]
    scored = score_together(reports, outputs)
    assert [r.mode for r in scored] == ["single"] * 5  # 2 independent voters: on their own
    assert scored[0].score == max(r.score for r in scored)
    (warning,) = scored[0].warnings
    assert "5 checkpoints give near-identical answers and count as 1" not in warning
    assert "4 checkpoints give near-identical answers and count as 1;" in warning
    assert "2 independent voters are too few" in warning
    assert scored[0].to_dict()["warnings"] == [warning]


def test_with_enough_voters_copies_vote_once() -> None:
    planted = [0.95, 0.9, 0.85, 0.8, 0.6]
    preds, _ = _annotators(planted)
    copied = np.vstack([preds, preds[4], preds[4], preds[4]])  # the poorest, 3 more times
    outputs = [np.eye(10)[p] for p in copied]
    names = ["a", "b", "c", "d", "e", "e2", "e3", "e4"]
    reports = [
        QualityReport(**{**vars(_report(s)), "checkpoint": n})
        for s, n in zip([0.9, 0.85, 0.8, 0.75, 0.5, 0.5, 0.5, 0.5], names, strict=True)
    ]
    scored = score_together(reports, outputs)
    assert [r.mode for r in scored] == ["consensus"] * 8
    assert scored[0].copies == [["e", "e2", "e3", "e4"]]
    est = np.array([r.score for r in scored])
    assert np.allclose(est[:5], planted, atol=0.03)  # the copies do not inflate themselves
    assert scored[0].warnings == []  # a healthy set: nothing in doubt


def test_a_set_of_mostly_poor_checkpoints_that_share_mistakes_is_flagged() -> None:
    preds, truth = _annotators([0.97])
    poor = _shared_mistakes(truth, [0.3, 0.25, 0.2, 0.35, 0.3])
    both = np.vstack([preds, poor])
    outputs = [np.eye(10)[p] for p in both]
    reports = [
        QualityReport(**{**vars(_report(s)), "checkpoint": f"ck{i}"})
        for i, s in enumerate([0.9, 0.3, 0.2, 0.2, 0.3, 0.3])
    ]
    scored = score_together(reports, outputs)
    assert scored[0].mode == "consensus"
    text = " ".join(scored[0].warnings)
    assert "but ck0 has the clearly better single score (0.900 against 0.300)" in text
